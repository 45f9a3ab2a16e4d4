"""The privacy guard inside the daemon: provider, identity in the state, log filter installed."""

from __future__ import annotations

import io
import json
from pathlib import Path

import structlog

from agent.config import parse_config
from agent.daemon import main
from agent.daemon.runtime import Runtime
from agent.logs import configure_logging
from agent.privacy.service import SystemApplyTarget, guard_of


def _runtime(tmp_path: Path) -> Runtime:
    return Runtime(parse_config({"state": {"dir": str(tmp_path)}, "device": {"id": "room-9"}}), tmp_path)


def test_providers_wire_the_guard_into_control_and_publish_identity_and_privacy_state(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path)
    services = main.build_services(runtime)
    assert "privacy" in [s.name for s in services]
    control = runtime.control  # type: ignore[attr-defined]
    assert isinstance(control.target, SystemApplyTarget)  # policies reach the guard
    for name in ("keys", "lock", "unlock", "deprovision", "snapshot"):
        assert control.commands.get(name) is not None
    assert control.lock_state() is False
    doc = control.state_document(True)
    assert set(doc["identity"]["hpke"]) == {"x25519", "mlkem768-x25519"}
    assert doc["privacy"]["locked"] is False
    state = runtime.state_snapshot()
    assert set(state["identity"]["hpke"]) == {"x25519", "mlkem768-x25519"}
    assert state["privacy"]["state"] == "active"
    assert state["e2ee"]["active"] is False
    assert guard_of(runtime) is guard_of(runtime)
    assert (tmp_path / "identity" / "hpke.json").stat().st_mode & 0o077 == 0


def test_logs_pass_the_allow_list_once_the_guard_exists(tmp_path: Path) -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    guard_of(_runtime(tmp_path))
    structlog.get_logger().info("probe", participant_email="a@b.example", camera="cam0", fps=30)
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert line["event"] == "probe"
    assert line["camera"] == "cam0"
    assert "participant_email" not in line
    assert "fps" not in line  # minimal level
