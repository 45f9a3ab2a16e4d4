"""Every command of the schema on real rooms: signed and pushed with roomctl, acked by ``roomagent run``.

Two rooms on one Mosquitto: ``room-a`` runs a media pipeline (local ``[media] sink``), ``room-b`` has
cameras but no sink. Every ack is checked for what happened (status, reason, message) and for the
device's signature (roomctl verifies it against the key the customer's roster holds for the room).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from agent.control.dsse import Envelope
from hal.presets import PresetStore
from hal.types import PtzPosition
from tests.acceptance.conftest import PREFIX, Fleet, Room, RoomFactory, collect, wait_retained

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture(scope="module")
def rooms(room_factory: RoomFactory) -> tuple[Room, Room]:
    a = room_factory("room-a", media=True)
    b = room_factory("room-b", media=False)
    PresetStore("cam0", a.presets).store("wide", PtzPosition(pan=-8 * 3600, tilt=2 * 3600, zoom=200))
    a.start()
    b.start()

    async def online() -> None:
        await asyncio.gather(a.wait_online(), b.wait_online())

    asyncio.run(online())
    return a, b


def _applied(ack: dict[str, Any]) -> str:
    assert ack["status"] == "applied", ack
    assert ack["verified"] is True, ack  # roomctl checked the signature against the roster key
    return str(ack["message"])


def _refused(ack: dict[str, Any], status: str, reason: str) -> str:
    assert (ack["status"], ack["reason"]) == (status, reason), ack
    assert ack["verified"] is True, ack
    assert ack["roomctl_exit"] != 0  # roomctl push reports the failure
    return str(ack["message"])


def test_camera_commands_on_a_room_with_media(fleet: Fleet, rooms: tuple[Room, Room]) -> None:
    a, _ = rooms
    assert "keyframe requested on 1 pipeline" in _applied(fleet.command("room-a", "keyframe"))
    assert _applied(fleet.command("room-a", "restart_pipeline")) == "restarted cam0"
    assert (
        _applied(fleet.command("room-a", "ptz", {"pan": 5, "tilt": -2.5}))
        == "cam0 at pan 5 deg, tilt -2.5 deg, zoom 1x"
    )
    message = _applied(fleet.command("room-a", "ptz_preset", {"preset": "wide"}))
    assert message == "cam0 at preset wide (pan -8 deg, tilt 2 deg, zoom 2x)"
    # Beyond what the camera can do (the sim pans +-10 degrees): the HAL's refusal is the ack's reason.
    message = _refused(fleet.command("room-a", "ptz", {"pan": 90}), "rolled_back", "apply_failed")
    assert "pan 324000 outside" in message
    message = _refused(
        fleet.command("room-a", "ptz_preset", {"preset": "nope"}), "rolled_back", "apply_failed"
    )
    assert "nope" in message
    # The restart really happened, and state.json shows it with the media counters.
    stats = a.state_json()["media"]["pipelines"][0]["stats"]
    assert stats["restarts"] == 1
    assert stats["captured"] > 0


def test_camera_commands_on_a_room_without_a_pipeline_say_so(fleet: Fleet, rooms: tuple[Room, Room]) -> None:
    message = _refused(fleet.command("room-b", "keyframe"), "rolled_back", "apply_failed")
    assert "no media pipeline" in message
    # PTZ needs a camera, not a pipeline: the room opens it through the HAL.
    assert _applied(fleet.command("room-b", "ptz", {"zoom": 3})) == "cam0 at pan 0 deg, tilt 0 deg, zoom 3x"


def test_only_the_customer_can_lock_stop_a_meeting_or_take_a_snapshot(
    fleet: Fleet, rooms: tuple[Room, Room], tmp_path: Path
) -> None:
    # The vendor alone cannot cut a customer's meeting (nor lock: see the deprovision test).
    _refused(fleet.command("room-a", "meeting_stop", {"meeting": None}), "rejected", "needs_customer")
    message = _applied(fleet.command("room-a", "meeting_stop", {"meeting": None}, ("customer",)))
    assert message == "no meeting keys installed: nothing to stop"
    # Lock: media-affecting commands are refused while locked; unlock restores them.
    assert "room locked" in _applied(fleet.command("room-a", "lock", {"reason": "test"}, ("customer",)))
    asyncio.run(wait_retained(fleet.broker, "room-a", lambda s: s.get("locked") is True))
    _refused(fleet.command("room-a", "keyframe"), "rejected", "locked")
    assert "room active" in _applied(fleet.command("room-a", "unlock", {}, ("customer",)))
    asyncio.run(wait_retained(fleet.broker, "room-a", lambda s: s.get("locked") is False))
    # Snapshot: sealed to the customer's HPKE key, published on the snapshot topic.
    hpke = tmp_path / "hpke.key"
    public = json.loads(fleet.roomctl("hpke-keygen", "--out", str(hpke)).stdout)
    recipient = {"kem": "x25519", "public_key": public["x25519"]}

    async def snapshot() -> tuple[dict[str, Any], list[bytes]]:
        listener = asyncio.create_task(
            collect(fleet.broker, f"{PREFIX}/devices/room-a/snapshot", lambda got: len(got) >= 1, 60)
        )
        await asyncio.sleep(0.5)
        args = {"camera": "cam0", "recipient": recipient}
        ack = await asyncio.to_thread(fleet.command, "room-a", "snapshot", args, ("customer",))
        return ack, await listener

    # The first-boot policy forbids remote snapshots; allowing them weakens privacy: fleet + customer.
    _refused(
        fleet.command("room-a", "snapshot", {"recipient": recipient}, ("customer",)),
        "rejected",
        "forbidden_by_policy",
    )
    policy = {
        "e2ee": {"required": True, "suites": [4, 5], "kem": "x25519"},
        # (an idle room's shutter is closed by the first-boot policy: no picture to take)
        "camera": {"shutter_when_idle": False, "remote_snapshot": True, "remote_ptz": False},
        "telemetry": {"level": "minimal", "fields": []},
        "jurisdiction": "DE",
    }
    _applied(fleet.push(fleet.sign("policy", policy, "room-a", ("fleet", "customer")), "room-a"))
    # The customer also switched remote PTZ off: the vendor can no longer move the camera.
    _refused(fleet.command("room-a", "ptz", {"pan": 1}), "rejected", "forbidden_by_policy")
    ack, sealed = asyncio.run(snapshot())
    assert _applied(ack).startswith("snapshot of cam0 sealed (x25519")
    assert len(sealed) == 1
    assert len(sealed[0]) > 100


def test_audit_fetch_exports_the_log_in_chunks_for_fleet_and_customer(
    fleet: Fleet, rooms: tuple[Room, Room]
) -> None:
    async def fetch(
        signers: tuple[str, ...], from_seq: int
    ) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
        envelope = fleet.sign(
            "command", {"name": "audit_fetch", "args": {"from_seq": from_seq}}, "room-b", signers
        )
        sha = hashlib.sha256(Envelope.parse(envelope.read_bytes()).payload).hexdigest()
        listener = asyncio.create_task(
            collect(
                fleet.broker,
                f"{PREFIX}/devices/room-b/audit_export",
                lambda got: any(json.loads(m)["last"] and json.loads(m)["request"] == sha for m in got),
                60,
            )
        )
        await asyncio.sleep(0.5)
        ack = await asyncio.to_thread(fleet.push, envelope, "room-b")
        chunks = [json.loads(m) for m in await listener]
        return ack, [c for c in chunks if c["request"] == sha], sha

    ack, chunks, _ = asyncio.run(fetch(("fleet",), 0))
    entries = [e for c in chunks for e in c["entries"]]
    assert _applied(ack) == f"{len(entries)} entries"
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    assert chunks[-1]["last"] is True
    assert chunks[-1]["head"]["payloadType"].endswith("audit-head+json")
    ack, chunks, _ = asyncio.run(fetch(("customer",), 3))
    entries = [e for c in chunks for e in c["entries"]]
    assert _applied(ack) == f"{len(entries)} entries"
    assert min(e["seq"] for e in entries) == 3
    _refused(
        fleet.command("room-b", "audit_fetch", {"from_seq": 0}, ("legal",)), "rejected", "needs_customer"
    )


def test_reboot_without_logind_is_rolled_back_naming_logind(fleet: Fleet, rooms: tuple[Room, Room]) -> None:
    # The rooms' DBUS_SYSTEM_BUS_ADDRESS points at a socket that does not exist (never the host's bus).
    message = _refused(fleet.command("room-b", "reboot"), "rolled_back", "apply_failed")
    assert "logind unreachable" in message
    _refused(fleet.command("room-b", "reboot", {}, ("customer",)), "rejected", "bad_signature")


_LOGIND = textwrap.dedent(
    """
    import asyncio, sys
    from dbus_fast.aio import MessageBus
    from dbus_fast.service import ServiceInterface, method

    class Manager(ServiceInterface):
        def __init__(self):
            super().__init__("org.freedesktop.login1.Manager")

        @method()
        def CanReboot(self) -> "s":
            return "yes"

        @method()
        def Reboot(self, interactive: "b") -> None:
            print(f"Reboot interactive={interactive}", flush=True)

    async def main():
        bus = await MessageBus(bus_address=sys.argv[1]).connect()
        bus.export("/org/freedesktop/login1", Manager())
        await bus.request_name("org.freedesktop.login1")
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path={path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


def test_reboot_and_restart_agent_ack_first_then_act(
    fleet: Fleet, room_factory: RoomFactory, tmp_path: Path
) -> None:
    """A private dbus-daemon with a logind-like object: the room calls Reboot(false) after acking."""
    socket = tmp_path / "bus"
    config = tmp_path / "bus.conf"
    config.write_text(_BUS_CONFIG.format(path=socket))
    address = f"unix:path={socket}"
    bus = subprocess.Popen(["dbus-daemon", "--nofork", f"--config-file={config}"])
    logind = None
    room = room_factory("room-c", media=False, extra_env={"DBUS_SYSTEM_BUS_ADDRESS": address})
    try:
        for _ in range(100):
            if socket.exists():
                break
            subprocess.run(["sleep", "0.05"], check=True)
        logind = subprocess.Popen(
            [sys.executable, "-c", _LOGIND, address], stdout=subprocess.PIPE, text=True, env=fleet.env
        )
        assert logind.stdout is not None
        assert logind.stdout.readline().strip() == "ready"
        room.start()
        asyncio.run(room.wait_online())
        assert _applied(fleet.command("room-c", "reboot")) == "rebooting through logind after this ack"
        assert logind.stdout.readline().strip() == "Reboot interactive=False"
        # restart_agent: acked, then the process exits with the code systemd restarts (75).
        message = _applied(fleet.command("room-c", "restart_agent"))
        assert "exit 75" in message
        assert asyncio.run(room.wait_exit()) == 75
        # As systemd would: start it again; it comes back with its identity and versions.
        room.start()
        state = asyncio.run(room.wait_online())
        assert state["online"] is True
    finally:
        if room.running:
            room.stop(signal.SIGTERM)
        for proc in (logind, bus):
            if proc is not None:
                proc.terminate()
                proc.wait(10)


def test_deprovision_darkens_the_room_for_good(fleet: Fleet, rooms: tuple[Room, Room]) -> None:
    _refused(fleet.command("room-b", "deprovision"), "rejected", "needs_customer")
    assert "deprovisioned" in _applied(
        fleet.command("room-b", "deprovision", {"reason": "end"}, ("customer",))
    )
    state = asyncio.run(wait_retained(fleet.broker, "room-b", lambda s: s.get("locked") is True))
    assert state["privacy"]["state"] == "deprovisioned"
    _refused(fleet.command("room-b", "ptz", {"pan": 1}), "rejected", "locked")
