"""CTR persistence (RFC 9605 §9.1, ADR 0001): restarts, crashes and storage faults never reuse a CTR."""

from __future__ import annotations

import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import agent.e2ee.counter as counter_module
from agent.e2ee.context import CounterStore, ReceiverContext, SenderContext
from agent.e2ee.header import decode_header
from agent.e2ee.sframe import CounterStoreError, InvalidParameterError
from agent.errors import StateError

KEY = bytes(range(32))

# A sender process: encrypts frames and prints each CTR once the frame exists. Fault modes:
#   kill_after_reserve  SIGKILL right after the next high-water mark is durable, before its CTR is used
#   kill_before_rename  SIGKILL while the next mark is only in the temp file (old file intact)
#   loop                encrypt until killed from outside
_SENDER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import structlog
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    import agent.e2ee.counter as counter
    import agent.persist as persist
    from agent.e2ee.context import CounterStore, SenderContext
    from agent.e2ee.header import decode_header

    path, frames, mode = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    sender = SenderContext(4, bytes(range(32)), 3, counter_store=CounterStore(path, block=4))
    def emit():
        print(decode_header(sender.encrypt(b"", b"frame"))[1], flush=True)
    for _ in range(frames):
        emit()
    if mode == "kill_after_reserve":
        real = counter.atomic_write_json
        def write_then_die(*args, **kwargs):
            real(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        counter.atomic_write_json = write_then_die
    elif mode == "kill_before_rename":
        def die(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)
        persist.os.replace = die
    while True:
        emit()
    """
)


def _run_sender(path: Path, frames: int, mode: str, env: dict[str, str]) -> list[int]:
    proc = subprocess.run(
        [sys.executable, "-c", _SENDER, str(path), str(frames), mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr
    return [int(line) for line in proc.stdout.split()]


def _first_ctr_after_restart(path: Path) -> int:
    sender = SenderContext(4, KEY, 3, counter_store=CounterStore(path, block=4))
    return decode_header(sender.encrypt(b"", b"frame"))[1]


def test_clean_restart_continues_above_every_used_ctr(tmp_path: Path) -> None:
    path = tmp_path / "ctr.json"
    first = SenderContext(4, KEY, 3, counter_store=CounterStore(path, block=4))
    used = [decode_header(first.encrypt(b"", b"f"))[1] for _ in range(6)]
    assert used == list(range(6))
    restarted = SenderContext(4, KEY, 3, counter_store=CounterStore(path, block=4))
    assert restarted.next_ctr == 8  # the reserved block 4..7 is skipped, never reused
    # The receiver (which saw frames 0-5) accepts the restarted sender's frames.
    receiver = ReceiverContext()
    receiver.add_key(3, KEY, 4)
    assert receiver.decrypt(b"", restarted.encrypt(b"", b"after restart")).ctr == 8


def test_crash_between_reserve_and_use(tmp_path: Path, agent_env: dict[str, str]) -> None:
    """Killed after the mark for CTR 8..11 is durable but before CTR 8 is used: restart at 12."""
    path = tmp_path / "ctr.json"
    used = _run_sender(path, 6, "kill_after_reserve", agent_env)
    assert used == list(range(8))  # 6 frames, then 6 and 7 from the block, then death at the reserve
    assert _first_ctr_after_restart(path) == 12


def test_crash_during_the_write_keeps_the_old_mark(tmp_path: Path, agent_env: dict[str, str]) -> None:
    """Killed before the rename: the old mark (8) stays, and CTR 8 was never used, so 8 is safe."""
    path = tmp_path / "ctr.json"
    used = _run_sender(path, 6, "kill_before_rename", agent_env)
    assert used == list(range(8))
    assert _first_ctr_after_restart(path) == 8


def test_kill_at_a_random_moment(tmp_path: Path, agent_env: dict[str, str]) -> None:
    path = tmp_path / "ctr.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SENDER, str(path), "0", "loop"],
        env=agent_env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    used = [int(proc.stdout.readline()) for _ in range(50)]
    proc.kill()
    proc.wait(timeout=10)
    proc.stdout.close()
    assert _first_ctr_after_restart(path) > max(used)


def test_failed_persist_refuses_to_encrypt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Disk full when the next block is reserved: no frame goes out with an unreserved CTR."""
    path = tmp_path / "ctr.json"
    sender = SenderContext(4, KEY, 3, counter_store=CounterStore(path, block=2))
    sender.encrypt(b"", b"a")
    sender.encrypt(b"", b"b")
    before = path.read_bytes()

    def disk_full(*args: object, **kwargs: object) -> None:
        raise StateError(str(path), "write failed: No space left on device")

    monkeypatch.setattr(counter_module, "atomic_write_json", disk_full)
    with pytest.raises(CounterStoreError, match="No space left"):
        sender.encrypt(b"", b"c")
    assert path.read_bytes() == before
    monkeypatch.undo()
    # CTR 2 was never used (skipping is always safe); the next frame gets a freshly reserved CTR.
    ctr = decode_header(sender.encrypt(b"", b"c"))[1]
    assert ctr >= 2
    assert CounterStore(path).high_water(counter_module.counter_key_id(4, KEY, 3)) > ctr


def test_disk_is_touched_once_per_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[object] = []
    real = counter_module.atomic_write_json

    def counting(*args: object, **kwargs: object) -> None:
        writes.append(args[1])
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(counter_module, "atomic_write_json", counting)
    sender = SenderContext(4, KEY, 3, counter_store=CounterStore(tmp_path / "ctr.json"))
    for _ in range(2000):
        sender.encrypt(b"", b"x")
    assert len(writes) == 1


def test_store_holds_no_key_material_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "ctr.json"
    SenderContext(4, KEY, 3, counter_store=CounterStore(path)).encrypt(b"", b"x")
    text = path.read_text()
    assert KEY.hex() not in text
    assert KEY[:16].hex() not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_two_keys_share_one_store(tmp_path: Path) -> None:
    store = CounterStore(tmp_path / "ctr.json", block=4)
    a = SenderContext(4, KEY, 1, counter_store=store)
    b = SenderContext(4, KEY[::-1], 1, counter_store=store)
    for _ in range(5):
        a.encrypt(b"", b"x")
    b.encrypt(b"", b"x")
    reopened = CounterStore(tmp_path / "ctr.json", block=4)
    assert SenderContext(4, KEY, 1, counter_store=reopened).next_ctr == 8
    assert SenderContext(4, KEY[::-1], 1, counter_store=reopened).next_ctr == 4


@pytest.mark.parametrize(
    "content",
    [b"not json", b"[]", b'{"format": 2, "high_water": {}}', b'{"format": 1, "high_water": {"k": -1}}'],
)
def test_corrupt_store_refuses_to_start(tmp_path: Path, content: bytes) -> None:
    """A store that cannot be read cannot prove which CTRs are free: fail closed."""
    path = tmp_path / "ctr.json"
    path.write_bytes(content)
    with pytest.raises(CounterStoreError):
        CounterStore(path)


def test_bad_block_size() -> None:
    with pytest.raises(InvalidParameterError):
        CounterStore(Path("/nonexistent/ctr.json"), block=0)


def test_threads_racing_across_block_boundaries(tmp_path: Path) -> None:
    """Four encoder threads share a sender; blocks of 8 force many racing reservations."""
    import threading

    path = tmp_path / "ctr.json"
    sender = SenderContext(4, KEY, 3, counter_store=CounterStore(path, block=8))
    used: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(100):
            ctr = decode_header(sender.encrypt(b"", b"x"))[1]
            with lock:
                used.append(ctr)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(used)) == 400
    assert CounterStore(path).high_water(counter_module.counter_key_id(4, KEY, 3)) > max(used)
