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


async def test_a_room_without_update_enabled_refuses_updates_unsupported(tmp_path: Path) -> None:
    """The composition root registers an ``update`` handler on every room; without ``[update]
    enabled`` it refuses a valid, logged, fleet+customer-signed update: acked, audited, nothing kept."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from agent.daemon.room import HANDLED
    from tests.firmware import FirmwareLog

    plane = Plane(transparency=ed25519.Ed25519PrivateKey.generate())
    root = tmp_path / "root.json"
    root.write_bytes(plane.root())
    config = device_config(tmp_path / "state", root, None)
    assert not config.update.enabled
    room = build_room(config, Runtime(config, tmp_path / "state"))
    assert "update" in HANDLED
    assert "update" in room.control.commands.names()
    assert room.updater is None
    assert plane.transparency is not None
    log = FirmwareLog(tmp_path / "log", plane.transparency)
    firmware = b"firmware v2 " * 100
    log.add(2, firmware)
    raw = plane.sign(
        "update", log.body(2, firmware, ["http://127.0.0.1:1/v2.raucb"]), [plane.fleet, plane.customer]
    )
    task = asyncio.create_task(room.control.run(Beat()))
    try:
        await asyncio.sleep(0.1)
        await room.control.handle("update", raw)
        for _ in range(100):
            if room.control.acks:
                break
            await asyncio.sleep(0.05)
        ack = room.control.acks[-1][0]
        assert (ack.doc_kind, ack.status, ack.reason) == ("update", "rejected", "unsupported")
        audit = (tmp_path / "state" / "audit" / "audit.jsonl").read_text()
        assert '"unsupported"' in audit
        assert not (tmp_path / "state" / "update").exists()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
