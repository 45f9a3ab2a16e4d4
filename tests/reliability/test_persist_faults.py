"""Persisted state under process crashes and full disks (agent.persist, the layer every store uses).

Scenarios:
- a writer is SIGKILLed at a random instant while replacing state version N with N+1, 50 times: the
  file always loads, its checksum holds, and it is exactly N or N+1, never torn or empty;
- the disk fills up (a real 256 KiB tmpfs) while persisting: ``StateError`` is raised, the old state
  is intact and no temporary file is left behind to eat the space that remains.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.errors import StateError
from agent.persist import atomic_write_json, read_json
from tests.conftest import REPO
from tests.reliability.conftest import fill
from tests.reliability.crash_writer import state

pytestmark = pytest.mark.reliability

KILLS = int(os.environ.get("RELIABILITY_KILLS", "50"))
SIZE = 2 * 1024 * 1024  # big enough that write + fsync takes a few milliseconds: a window to hit


def _writer(path: Path, version: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.crash_writer", str(path), str(version), str(SIZE)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


def _check(path: Path) -> int:
    loaded = read_json(path)  # raises StateError on a torn file
    assert isinstance(loaded, dict)
    assert hashlib.sha256(loaded["blob"].encode()).hexdigest() == loaded["sha256"], "torn state"
    return int(loaded["version"])


def _write_duration(path: Path) -> float:
    """Calibrate: how long one complete write takes here (median of three)."""
    times = []
    for version in (1, 2, 3):
        proc = _writer(path, version)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "go"
        start = time.monotonic()
        assert proc.stdout.readline().strip() == "done"
        times.append(time.monotonic() - start)
        proc.wait(10)
    return sorted(times)[1]


def test_sigkill_at_random_instants_never_tears_state(tmp_path: Path) -> None:
    path = tmp_path / "state" / "applied.json"
    window = _write_duration(path)
    rng = random.Random(int(os.environ.get("RELIABILITY_SEED", "9")))
    outcomes = {"old": 0, "new": 0}
    version = _check(path)
    for _ in range(KILLS):
        proc = _writer(path, version + 1)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "go"
        time.sleep(rng.uniform(0.0, 1.5 * window))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
        found = _check(path)
        assert found in (version, version + 1), f"state went from {version} to {found}"
        outcomes["old" if found == version else "new"] += 1
        version = found
    print(f"{KILLS} SIGKILLs during persist (write window {window * 1000:.1f} ms): {outcomes}")
    # Both sides of the rename were hit, so the kills really landed inside the write.
    assert outcomes["old"] > 0
    assert outcomes["new"] > 0


def test_disk_full_keeps_the_old_state(small_tmpfs: Path) -> None:
    path = small_tmpfs / "applied.json"
    old = state(7, 1000)
    atomic_write_json(path, old)
    fill(small_tmpfs)

    with pytest.raises(StateError) as info:
        atomic_write_json(path, state(8, 64 * 1024))

    assert "write failed" in info.value.reason
    assert read_json(path) == old
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["applied.json", "filler"], "temp file left"

    # Space comes back (the operator cleans up): the next write goes through.
    (small_tmpfs / "filler").unlink()
    atomic_write_json(path, state(8, 64 * 1024))
    assert _check(path) == 8
