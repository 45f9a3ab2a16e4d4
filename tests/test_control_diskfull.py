"""A full disk while persisting: the document is refused with ``state_error``, nothing changes, the agent
lives on, and once space returns the next document applies (real tmpfs, real ENOSPC)."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.control.standalone import FileApplyTarget
from tests.broker import Broker
from tests.plane import Plane, device_config, start_device, stop_device

pytestmark = pytest.mark.broker


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()
    return filler


async def test_disk_full_refuses_and_recovers(small_disk: Path, mosquitto: Broker, tmp_path: Path) -> None:
    plane = Plane()
    root = tmp_path / "root.json"
    root.write_bytes(plane.root())
    state = small_disk / "state"
    config = device_config(state, root, mosquitto.url)
    dev = await start_device(config, FileApplyTarget(state / "running"), mosquitto.host, mosquitto.port)
    try:
        body = {"encoder": {"bitrate_kbps": 1500}}
        assert (await dev.plane.push("config", plane.sign("config", body)))["status"] == "applied"
        before = (state / "control" / "state.json").read_bytes()
        audit_seq = dev.service.audit.seq
        filler = fill(small_disk)

        ack = await dev.plane.push("config", plane.sign("config", {"encoder": {"bitrate_kbps": 900}}))
        assert (ack["status"], ack["reason"]) == ("rejected", "state_error")
        cmd = await dev.plane.push("command", plane.sign("command", {"name": "keyframe", "args": {}}))
        assert (cmd["status"], cmd["reason"]) == ("rejected", "state_error")
        assert dev.alive()
        assert (state / "control" / "state.json").read_bytes() == before
        assert json.loads((state / "running" / "config.json").read_text())["encoder"]["bitrate_kbps"] == 1500
        # Short audit lines may still fit in the log's last page: whatever was written, the chain is whole.
        assert dev.service.audit.seq >= audit_seq

        filler.unlink()
        ack = await dev.plane.push("config", plane.sign("config", {"encoder": {"bitrate_kbps": 1700}}))
        assert ack["status"] == "applied"
        lines = (state / "audit" / "audit.jsonl").read_bytes().splitlines()
        assert [json.loads(x)["seq"] for x in lines] == list(range(1, len(lines) + 1))
    finally:
        await stop_device(dev)
