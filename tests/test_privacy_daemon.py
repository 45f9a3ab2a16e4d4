"""The privacy guard inside the room: wired by the composition root, identity in the state, log filter."""

from __future__ import annotations

import io
import json
from pathlib import Path

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


def test_logs_pass_the_allow_list_once_the_room_is_built(tmp_path: Path) -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    runtime = _runtime(tmp_path)
    build_room(runtime.config, runtime)
    structlog.get_logger().info("probe", participant_email="a@b.example", camera="cam0", fps=30)
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert line["event"] == "probe"
    assert line["camera"] == "cam0"
    assert "participant_email" not in line
    assert "fps" not in line  # minimal level
