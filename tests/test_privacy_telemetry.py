"""Telemetry: what the policy does not allow never leaves; secrets, frames and personal data never, not
even in local logs; operational fields stay in local logs."""

from __future__ import annotations

import io
import json
from typing import Any

import structlog

from agent.logs import configure_logging
from agent.privacy.telemetry import TelemetryFilter
from agent.schema.policy import DEFAULT_POLICY, PolicyBody

STATE: dict[str, Any] = {
    "device": "room-a",
    "online": True,
    "applied": {"root": 1, "policy": 3, "config": 2},
    "identity": {"ed25519": {"keytype": "ed25519"}, "hpke": {"x25519": "AAAA"}},
    "audit_head": {"seq": 9, "sha256": "ab"},
    "privacy": {"state": "active", "locked": False},
    "health": {"status": "ok", "fps": 29.9, "cpu_percent": 41.0},
    "inventory": {"cameras": [{"id": "cam0", "serial": "X123"}]},
    "media": {"sending": True, "peer_ip": "10.0.0.7", "bitrate_kbps": 2400},
    "e2ee": {"active": True, "epoch": 3, "base_key": b"\x01" * 32, "meeting": "m-1"},
}


def _policy(level: str, fields: list[str] | None = None) -> PolicyBody:
    data = DEFAULT_POLICY.model_dump()
    data["telemetry"] = {"level": level, "fields": fields or []}
    return PolicyBody.model_validate(data)


def test_minimal_state_keeps_protocol_and_minimal_fields_only() -> None:
    out = TelemetryFilter(_policy("minimal")).filter_state(STATE)
    assert out["applied"] == STATE["applied"]
    assert out["identity"] == STATE["identity"]
    assert out["health"] == STATE["health"]
    assert out["e2ee"] == {"active": True, "epoch": 3}
    assert out["media"] == {"sending": True}
    assert "inventory" not in out


def test_none_state_keeps_only_what_the_control_protocol_needs() -> None:
    out = TelemetryFilter(_policy("none")).filter_state(STATE)
    assert set(out) == {"device", "online", "applied", "identity", "audit_head", "privacy"}
    assert "health" not in out
    assert out["privacy"] == {"state": "active", "locked": False}


def test_standard_state_never_carries_key_bytes_or_personal_data() -> None:
    out = TelemetryFilter(_policy("standard")).filter_state(STATE)
    assert out["health"]["cpu_percent"] == 41.0
    assert out["inventory"] == STATE["inventory"]
    assert "base_key" not in out["e2ee"]
    assert out["media"] == {"sending": True, "bitrate_kbps": 2400}  # an IP address is personal data


def test_policy_fields_extend_the_list_but_cannot_open_secrets() -> None:
    f = TelemetryFilter(_policy("minimal", ["media.bitrate_kbps", "e2ee.base_key", "media.peer_ip"]))
    out = f.filter_state(STATE)
    assert out["media"] == {"sending": True, "bitrate_kbps": 2400}
    assert "base_key" not in out["e2ee"]
    assert "peer_ip" not in out["media"]


def test_local_logs_keep_operational_fields_at_every_level() -> None:
    """Testers see what happened: fault, encoder, reason and counts survive even at level ``none``."""
    stream = io.StringIO()
    f = TelemetryFilter(_policy("none"))
    configure_logging("debug", "json", extra_processors=[f.processor], stream=stream)
    log = structlog.get_logger()
    log.info("sim_fault", camera="cam0", fault="stall", ms=300)
    log.info("encoder_selected", encoder="libx264", after_fallbacks=2)
    log.warning("encoder_fallback", encoder="h264_vaapi", reason="not available in this FFmpeg build")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert (lines[0]["camera"], lines[0]["fault"], lines[0]["ms"]) == ("cam0", "stall", 300)
    assert (lines[1]["encoder"], lines[1]["after_fallbacks"]) == ("libx264", 2)
    assert lines[2]["reason"] == "not available in this FFmpeg build"


def test_local_logs_never_carry_secrets_frames_or_personal_data() -> None:
    stream = io.StringIO()
    f = TelemetryFilter(_policy("standard", ["base_key", "email"]))
    configure_logging("debug", "json", extra_processors=[f.processor], stream=stream)
    log = structlog.get_logger()
    log.info(
        "doc_applied",
        doc_kind="policy",
        version=4,
        base_key=b"\x00" * 16,
        email="a@b",
        sealed="QUFB",
        peer_ip="10.0.0.7",
        blob=b"\x01\x02",
        detail={"camera": "cam0", "passphrase": "hunter2", "frame": "...", "count": 3},
    )
    line = json.loads(stream.getvalue())
    assert line == {
        "event": "doc_applied",
        "doc_kind": "policy",
        "version": 4,
        "detail": {"camera": "cam0", "count": 3},
        "level": "info",
        "timestamp": line["timestamp"],
    }


def test_filter_installed_after_logging_is_configured_also_filters_cached_loggers() -> None:
    from agent.privacy.telemetry import install_log_filter

    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    log = structlog.get_logger()
    log.info("before", fps=30, peer_ip="10.1.1.1")
    f = TelemetryFilter(_policy("none"))
    install_log_filter(f)
    install_log_filter(f)  # idempotent
    log.info("after", fps=30, peer_ip="10.1.1.1", reason="x")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["peer_ip"] == "10.1.1.1"  # unfiltered before: what the filter is for
    assert set(lines[1]) == {"event", "level", "timestamp", "reason", "fps"}
    assert sum(1 for p in structlog.get_config()["processors"] if getattr(p, "__self__", None) is f) == 1
