"""The control service as the room builds it: it runs under the supervisor's Runtime."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from agent.control.dsse import Envelope
from agent.control.service import ControlService
from agent.control.signing_keys import parse_public_key
from agent.daemon.room import build_room
from agent.daemon.runtime import Runtime
from tests.plane import Beat, Plane, device_config


async def test_services_hook_publishes_identity_into_runtime_state(tmp_path: Path) -> None:
    plane = Plane()
    root = tmp_path / "root.json"
    root.write_bytes(plane.root())
    config = device_config(tmp_path / "state", root, None)  # offline: runs on last-known-good
    runtime = Runtime(config, tmp_path / "state")
    service = build_room(config, runtime).control
    assert isinstance(service, ControlService)
    task = asyncio.create_task(service.run(Beat()))
    await asyncio.sleep(0.1)
    snapshot = runtime.state_snapshot()
    assert snapshot["applied"]["root"] == 1
    assert snapshot["identity"]["ed25519"]["keytype"] == "ed25519"
    assert snapshot["audit_head"]["seq"] == 0
    head = Envelope.parse(json.dumps(snapshot["audit_head"]["signed"]).encode())
    key = parse_public_key(snapshot["identity"]["ed25519"])
    assert key.verify(head.signatures[0].sig, head.pae())
    assert service.link is None
    key = (tmp_path / "state" / "identity" / "ed25519.pem").stat()
    assert key.st_mode & 0o777 == 0o600
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
