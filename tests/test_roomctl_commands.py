"""roomctl verbs handled by the room's command handlers:
``keyframe``, ``restart-pipeline``, ``ptz``, ``meeting stop``, ``audit fetch``, ``restart-agent``.

Each runs a real ``roomagent run`` (sim camera, live media) and the real ``roomctl`` against a real
Mosquitto, following the shared wire contract (command names and args, ``audit_export`` chunks).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from hal import open_inventory
from hal.types import CameraSpec
from tests.broker import Broker
from tests.fleet_trust import Fleet, running

pytestmark = pytest.mark.broker

_MEDIA = (
    '[media]\nsink = "rtp://127.0.0.1:9"\n'
    '[hal.encoder]\ncodecs = ["libx264"]\nbitrate_kbps = 300\n'
    '[[hal.cameras]]\nid = "cam0"\nwidth = 320\nheight = 240\nfps = 15\n'
)


@pytest.fixture
def fleet(tmp_path: Path, agent_env: dict[str, str]) -> Fleet:
    return Fleet(tmp_path, agent_env)


async def _with_media(fleet: Fleet, device: str) -> None:
    """Media on, and a preset ``wide`` stored through the HAL in the room's state dir."""
    config = fleet.rooms[device]
    config.write_text(config.read_text() + _MEDIA)
    spec = CameraSpec(id="cam0", width=320, height=240, fps=15)
    async with open_inventory([spec], backend="sim", presets_dir=fleet.tmp / device / "presets").open_camera(
        "cam0"
    ) as camera:
        await camera.set_ptz(pan=0, tilt=0, zoom=100)
        await camera.store_preset("wide")


def _ok(result: object) -> None:
    out = f"{getattr(result, 'stdout', '')}{getattr(result, 'stderr', '')}"
    assert getattr(result, "returncode", None) == 0, out


async def test_routine_verbs_on_a_room_with_media(fleet: Fleet, mosquitto: Broker) -> None:
    fleet.enroll("room-a", mosquitto)
    await _with_media(fleet, "room-a")
    fleet_key = ["--fleet-key", str(fleet.keys["fleet"])]
    async with running(fleet, mosquitto, "room-a"):
        for argv in (
            ("keyframe", "room-a"),
            ("restart-pipeline", "room-a"),
            ("ptz", "room-a", "--preset", "wide"),
            ("ptz", "room-a", "--pan", "10", "--tilt", "-5", "--zoom", "2"),
        ):
            result = await fleet.aroomctl(*argv, *fleet.broker_args(mosquitto), *fleet_key, "--json")
            _ok(result)
            assert json.loads(result.stdout)["rooms"]["room-a"]["verified"] is True


async def test_meeting_stop_is_customer_only_and_ends_the_meeting(fleet: Fleet, mosquitto: Broker) -> None:
    fleet.enroll("room-a", mosquitto)
    fleet.enroll("room-b", mosquitto)
    async with running(fleet, mosquitto, "room-a", "room-b"):
        customer = ["--customer-key", str(fleet.keys["customer"])]
        start = await fleet.aroomctl(
            "meeting",
            "start",
            "--rooms",
            "room-a,room-b",
            "--meeting",
            "m-9",
            "--wait-acks",
            *fleet.broker_args(mosquitto),
            *customer,
        )
        _ok(start)
        by_fleet = await fleet.aroomctl(
            "meeting",
            "stop",
            "--rooms",
            "room-a",
            "--meeting",
            "m-9",
            "--json",
            *fleet.broker_args(mosquitto),
            "--customer-key",
            str(fleet.keys["fleet"]),
        )
        assert by_fleet.returncode == 1
        assert json.loads(by_fleet.stdout)["rooms"]["room-a"]["reason"] == "needs_customer"
        stop = await fleet.aroomctl(
            "meeting",
            "stop",
            "--group",
            "hq",
            "--meeting",
            "m-9",
            "--json",
            *fleet.broker_args(mosquitto),
            *customer,
        )
        _ok(stop)
        status = json.loads((await fleet.aroomctl("status", *fleet.broker_args(mosquitto), "--json")).stdout)
        for room in ("room-a", "room-b"):
            assert status[room]["trust"] == "verified"
            assert status[room]["state"]["e2ee"]["active"] is False


async def test_audit_fetch_writes_a_log_that_verifies_against_the_roster(
    fleet: Fleet, mosquitto: Broker
) -> None:
    fleet.enroll("room-a", mosquitto)
    out = fleet.tmp / "fetched" / "audit.jsonl"
    out.parent.mkdir()
    async with running(fleet, mosquitto, "room-a"):
        lock = await fleet.aroomctl(
            "lock", "room-a", *fleet.broker_args(mosquitto), "--customer-key", str(fleet.keys["customer"])
        )
        _ok(lock)
        fetch = await fleet.aroomctl(
            "audit",
            "fetch",
            "room-a",
            "--out",
            str(out),
            "--fleet-key",
            str(fleet.keys["fleet"]),
            *fleet.broker_args(mosquitto),
        )
        _ok(fetch)
        report = json.loads(fetch.stdout.strip().splitlines()[-1])
        assert report["ok"] is True
        assert report["entries"] >= 2
    device_log = (fleet.tmp / "room-a" / "audit" / "audit.jsonl").read_bytes()
    assert device_log.startswith(out.read_bytes())
    entries = [json.loads(line) for line in out.read_text().splitlines()]
    assert any(e["event"] == "lock" or e.get("kind") == "command" for e in entries)
    verify = await fleet.aroomctl("audit", "verify", str(out), "--device", "room-a", *fleet.trust)
    _ok(verify)


async def test_restart_agent_acks_then_the_agent_exits(fleet: Fleet, mosquitto: Broker) -> None:
    fleet.enroll("room-a", mosquitto)
    async with running(fleet, mosquitto, "room-a"):
        result = await fleet.aroomctl(
            "restart-agent", "room-a", *fleet.broker_args(mosquitto), "--fleet-key", str(fleet.keys["fleet"])
        )
        _ok(result)
        # Without systemd nobody restarts it: the room goes offline (its last will / clean offline state).
        async with asyncio.timeout(20):
            while True:
                status = json.loads(
                    (await fleet.aroomctl("status", *fleet.broker_args(mosquitto), "--json")).stdout
                )
                if status["room-a"]["state"]["online"] is False:
                    break
                await asyncio.sleep(0.5)
