"""The privacy guard inside the room: wired by the composition root, identity in the state, log filter."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import structlog

from agent.config import parse_config
from agent.daemon.room import RoomApplyTarget, build_room
from agent.daemon.runtime import Runtime
from agent.logs import configure_logging


def _runtime(tmp_path: Path) -> Runtime:
    return Runtime(parse_config({"state": {"dir": str(tmp_path)}, "device": {"id": "room-9"}}), tmp_path)


def test_the_room_wires_the_guard_into_control_and_publishes_identity_and_privacy_state(
    tmp_path: Path,
) -> None:
    runtime = _runtime(tmp_path)
    room = build_room(runtime.config, runtime)
    assert "privacy" in [s.name for s in room.services]
    control = room.control
    assert isinstance(control.target, RoomApplyTarget)  # policies reach the guard
    for name in ("keys", "lock", "unlock", "deprovision", "snapshot", "meeting_stop"):
        assert control.commands.get(name) is not None
    assert control.lock_state() is False
    doc = control.state_document(True)
    assert set(doc["identity"]["hpke"]) == {"x25519", "mlkem768-x25519"}
    assert doc["privacy"]["locked"] is False
    state = runtime.state_snapshot()
    assert set(state["identity"]["hpke"]) == {"x25519", "mlkem768-x25519"}
    assert state["privacy"]["state"] == "active"
    assert state["e2ee"]["active"] is False
    assert (tmp_path / "identity" / "hpke.json").stat().st_mode & 0o077 == 0


def test_logs_are_scrubbed_once_the_room_is_built_and_keep_operational_fields(tmp_path: Path) -> None:
    """Local logs are diagnostics: the room's guard scrubs them of secrets, frame bytes and personal
    data (at any depth), and keeps what an operator needs (camera, fps, reason), whatever the level."""
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)

    def probe() -> dict[str, Any]:
        structlog.get_logger().info(
            "probe",
            camera="cam0",
            fps=30,
            reason="apply_failed",
            participant_email="a@b.example",
            private_key="k",
            frame=b"\x00\x01",
            stats={"captured": 7, "token": "t", "display_name": "Ann"},
        )
        line: dict[str, Any] = json.loads(stream.getvalue().splitlines()[-1])
        assert line["event"] == "probe"
        return line

    # Before the room exists nothing scrubs: the filter below is the composition root's doing.
    assert probe()["participant_email"] == "a@b.example"
    runtime = _runtime(tmp_path)
    room = build_room(runtime.config, runtime)
    installed = [
        p
        for p in structlog.get_config()["processors"]
        if getattr(p, "__self__", None) is room.guard.telemetry
    ]
    assert len(installed) == 1
    line = probe()
    assert (line["camera"], line["fps"], line["reason"]) == ("cam0", 30, "apply_failed")
    assert line["stats"] == {"captured": 7}
    for gone in ("participant_email", "private_key", "frame"):
        assert gone not in line
    assert "a@b.example" not in stream.getvalue().splitlines()[-1]
