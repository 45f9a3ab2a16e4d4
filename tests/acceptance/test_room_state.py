"""Desired state is never lost and never faked; the retained state and state.json tell the truth.

Real ``roomagent run`` processes, configs signed and pushed with roomctl, the retained state read by a
fresh subscriber each time (what a fleet tool connecting later sees), ``state.json`` read from disk.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import pytest

from tests.acceptance.conftest import Fleet, Room, RoomFactory, retained_state, wait_retained

pytestmark = [pytest.mark.broker, pytest.mark.slow]

ENCODER = {"codecs": ["libx264", "libvpx"], "bitrate_kbps": 450, "keyframe_interval": 30, "low_latency": True}


def _ack(ack: dict[str, Any], status: str, reason: str | None = None) -> str:
    assert (ack["status"], ack.get("reason")) == (status, reason), ack
    assert ack["verified"] is True, ack
    return str(ack["message"])


def _settings(room: Room) -> dict[str, Any]:
    settings: dict[str, Any] = room.state_json()["media"]["pipelines"][0]["settings"]
    return settings


def _bitrate_becomes(room: Room, kbps: int, within_s: float = 5.0) -> None:
    """state.json follows within a report interval (1 s here; generous for a loaded machine)."""
    deadline = time.monotonic() + within_s
    while _settings(room)["bitrate_kbps"] != kbps:
        assert time.monotonic() < deadline, _settings(room)
        time.sleep(0.2)


async def _counters_move(room: Room) -> None:
    """state.json's media counters move within a report interval (1 s here)."""
    first = room.state_json()["media"]["pipelines"][0]["stats"]["captured"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        if room.state_json()["media"]["pipelines"][0]["stats"]["captured"] > first:
            return
    raise AssertionError("media counters in state.json did not move")


def test_pushed_config_survives_sigkill_restart_and_sigterm_with_truthful_state(
    fleet: Fleet, room_factory: RoomFactory
) -> None:
    room = room_factory("room-s", media=True)
    room.start()
    first = asyncio.run(room.wait_online())
    assert first["applied"].get("config") is None
    assert room.state_json()["online"] is True  # state.json follows the link, not a constant
    asyncio.run(_counters_move(room))

    envelope = fleet.sign("config", {"encoder": ENCODER}, "room-s")
    ack = fleet.push(envelope, "room-s")
    assert _ack(ack, "applied").startswith("config v")
    version = ack["doc_version"]
    state = asyncio.run(
        wait_retained(fleet.broker, "room-s", lambda s: s["applied"].get("config") == version)
    )
    assert state["online"] is True
    _bitrate_becomes(room, 450)

    # A crash right after the apply: the will names the version applied last, not the one at connect.
    room.stop(signal.SIGKILL)
    state = asyncio.run(wait_retained(fleet.broker, "room-s", lambda s: s.get("online") is False, 60))
    assert state["applied"]["config"] == version, state
    assert state["applied"]["root"] == 1

    # Restart: the pushed config takes effect again before READY; the local file says 300 kbps.
    room.start()
    state = asyncio.run(room.wait_online())
    assert state["applied"]["config"] == version
    _bitrate_becomes(room, 450)
    assert any(e.get("event") == "pushed_config_restored" for e in room.events())
    asyncio.run(_counters_move(room))

    # Clean stop (systemctl stop): online false is published before the disconnect, versions kept.
    assert room.stop(signal.SIGTERM) == 0
    state = asyncio.run(retained_state(fleet.broker, "room-s"))
    assert state["online"] is False, state
    assert state["applied"]["config"] == version
    assert room.state_json()["online"] is False
    assert room.state_json()["applied"]["config"] == version


def test_configs_that_cannot_take_effect_are_rolled_back_with_the_reason(
    fleet: Fleet, room_factory: RoomFactory
) -> None:
    media = room_factory("room-m", media=True)
    bare = room_factory("room-n", media=False)  # cameras, but no local [media] section
    media.start()
    bare.start()

    async def online() -> None:
        await asyncio.gather(media.wait_online(), bare.wait_online())

    asyncio.run(online())
    camera = {"id": "cam9", "width": 320, "height": 240, "fps": 15}
    message = _ack(
        fleet.push(fleet.sign("config", {"cameras": [camera]}, "room-m"), "room-m"),
        "rolled_back",
        "apply_failed",
    )
    assert "cam9" in message
    sink = {"sink": "rtp://no-such-host.invalid:5004", "mtu": 1200, "enabled": True}
    message = _ack(
        fleet.push(fleet.sign("config", {"media": sink}, "room-m"), "room-m"), "rolled_back", "apply_failed"
    )
    assert "media.sink" in message
    assert _settings(media)["bitrate_kbps"] == 300  # nothing changed

    # A room without a pipeline cannot send anywhere: never "applied and healthy".
    body = {"media": {"sink": "rtp://127.0.0.1:5004", "mtu": 1200, "enabled": True}, "encoder": ENCODER}
    message = _ack(fleet.push(fleet.sign("config", body, "room-n"), "room-n"), "rolled_back", "apply_failed")
    assert "no media pipeline runs on this room" in message
    for device in ("room-m", "room-n"):
        state = asyncio.run(retained_state(fleet.broker, device))
        assert state["applied"].get("config") is None, state
    # What the room can do is still applied (a log level: no media involved).
    body = {"log": {"level": "info", "format": "json"}}
    _ack(fleet.push(fleet.sign("config", body, "room-n"), "room-n"), "applied")
