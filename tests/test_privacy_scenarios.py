"""Privacy scenarios over a real Mosquitto with the real control plane and the privacy guard wired in.

Each test: the plane (vendor, customer or court) publishes a signed document; the device acks it and
the room's privacy follows (or does not change at all).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent.control.signing_keys import private_key_pem
from agent.privacy.guard import PrivacyGuard
from agent.privacy.telemetry import allowed_paths
from agent.schema.policy import PolicyBody
from tests.broker import Broker
from tests.plane import PREFIX, Plane
from tests.privacy_rooms import enroll, running_rooms

pytestmark = pytest.mark.broker


@pytest.fixture
def plane() -> Plane:
    return Plane()


async def test_weakening_needs_fleet_and_customer_tightening_needs_fleet(
    plane: Plane, mosquitto: Broker, tmp_path: Path
) -> None:
    async with running_rooms(plane, mosquitto, tmp_path, "room-101") as (room,):
        # Tightening by the fleet alone (jurisdiction set from the default: a change of jurisdiction is a
        # weakening, so set it with the customer; then tighten with fleet alone).
        base = plane.policy()
        ack = await room.plane.push("policy", plane.sign("policy", base, [plane.fleet, plane.customer]))
        assert ack["status"] == "applied", ack
        tighter = plane.policy(e2ee__suites=[5])
        ack = await room.plane.push("policy", plane.sign("policy", tighter, [plane.fleet]))
        assert ack["status"] == "applied", ack
        assert room.guard.policy.e2ee.suites == [5]
        # The vendor alone tries to switch E2EE off and turn telemetry up: refused, nothing changes.
        weaker = plane.policy(e2ee__required=False, telemetry__level="standard")
        ack = await room.plane.push("policy", plane.sign("policy", weaker, [plane.fleet]))
        assert ack["status"] == "rejected"
        assert ack["reason"] == "needs_customer"
        assert room.guard.policy.e2ee.required is True
        assert room.guard.telemetry.level == "minimal"
        # With the customer's co-signature the same change applies.
        ack = await room.plane.push("policy", plane.sign("policy", weaker, [plane.fleet, plane.customer]))
        assert ack["status"] == "applied", ack
        assert room.guard.policy.e2ee.required is False
        assert room.guard.telemetry.level == "standard"


async def test_legal_lock_needs_the_rooms_jurisdiction_then_locks_audits_and_stops_media(
    plane: Plane, mosquitto: Broker, tmp_path: Path
) -> None:
    async with running_rooms(plane, mosquitto, tmp_path, "room-101") as (room,):
        ack = await room.plane.push(
            "policy", plane.sign("policy", plane.policy(), [plane.fleet, plane.customer])
        )
        assert ack["status"] == "applied"
        assert room.guard.policy.jurisdiction == "DE"
        foreign = {
            "name": "lock",
            "args": {"lawful_order": {"issuer": "SDNY", "id": "26-1", "jurisdiction": "US"}},
        }
        ack = await room.plane.push("command", plane.sign("command", foreign, [plane.legal]))
        assert ack["status"] == "rejected"
        assert ack["reason"] == "lawful_order_mismatch"
        assert room.guard.interventions.media_allowed
        # A meeting is running when the valid order arrives.
        room.guard.keys.install(_package(plane, room.guard, "room-101"))
        assert room.guard.key_source.current()[0] is not None
        order = {
            "name": "lock",
            "args": {"lawful_order": {"issuer": "AG Berlin", "id": "7 Js 1/26", "jurisdiction": "DE"}},
        }
        ack = await room.plane.push("command", plane.sign("command", order, [plane.legal]))
        assert ack["status"] == "applied", ack
        assert room.guard.key_source.current()[0] is None  # media stopped: no sender key
        assert room.guard.shutter_should_close()
        state = await room.plane.wait_for(lambda s: s.get("device") == "room-101" and s.get("locked") is True)
        assert state["privacy"]["state"] == "locked"
        audit = [json.loads(line) for line in (room.service.audit.path).read_text().splitlines()]
        assert any(e["event"] == "intervention" and "7 Js 1/26" in e["message"] for e in audit)
        # Locked: a key package from the customer is refused too.
        ack = await room.plane.push(
            "keys", plane.sign("keys", _package(plane, room.guard, "room-101").model_dump(), [plane.customer])
        )
        assert ack["status"] == "rejected"
        assert ack["reason"] == "locked"


def _package(plane: Plane, guard: PrivacyGuard, device: str):  # type: ignore[no-untyped-def]
    import datetime as dt

    from agent.privacy.hpke import HpkeIdentity
    from agent.privacy.key_packages import seal_meeting
    from tests.plane import now, ts

    rooms = {device: guard.identity.public_keys(), "room-x": HpkeIdentity.generate().public_keys()}
    return seal_meeting(
        meeting="m-1",
        epoch=len(plane.versions) + 1,
        suite=4,
        kem="x25519",
        key_expires=ts(now() + dt.timedelta(hours=1)),
        rooms=rooms,
    )[device]


async def test_key_packages_fleet_rejected_customer_meeting_decrypts_a_to_b(
    plane: Plane, mosquitto: Broker, tmp_path: Path, agent_env: dict[str, str]
) -> None:
    async with running_rooms(plane, mosquitto, tmp_path, "room-a", "room-b") as (a, b):
        # The vendor tries to hand out keys (a ghost participant): refused.
        ghost = plane.sign(
            "keys", _package(plane, a.guard, "room-a").model_dump(), [plane.fleet], devices=["room-a"]
        )
        ack = await a.plane.push("keys", ghost)
        assert ack["status"] == "rejected"
        assert ack["reason"] == "needs_customer"
        assert a.guard.keys.keys.idle
        # The customer starts the meeting with roomctl (HPKE keys from its roster of enrolled rooms).
        key = tmp_path / "customer.pem"
        key.write_bytes(private_key_pem(plane.customer))
        result = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "agent.fleet",
                "meeting",
                "start",
                "--rooms",
                "room-a,room-b",
                "--broker",
                mosquitto.url,
                "--customer-key",
                str(key),
                "--wait-acks",
                "--json",
                *enroll(plane, tmp_path, [a, b]),
            ],
            env=agent_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads(result.stdout)
        assert {r["ack"] for r in report["rooms"].values()} == {"applied"}
        sealer, _, _ = a.guard.key_source.current()
        assert sealer is not None
        frame = b"\x00\x00\x00\x01" + bytes(range(256)) * 8
        ciphertext = sealer.seal(b"hdr", frame)
        assert frame not in ciphertext
        assert b.guard.sframe.opener.open(b"hdr", ciphertext) == frame
        state = await b.plane.wait_for(
            lambda s: s.get("device") == "room-b" and (s.get("e2ee") or {}).get("active")
        )
        assert state["e2ee"]["epoch"] == 1


async def test_telemetry_minimal_fields_outside_the_allow_list_never_reach_the_broker(
    plane: Plane, mosquitto: Broker, tmp_path: Path
) -> None:
    seen: list[dict[str, Any]] = []

    async def sniff() -> None:
        async with aiomqtt.Client(
            mosquitto.host, mosquitto.port, identifier="sniffer", protocol=aiomqtt.ProtocolVersion.V5
        ) as client:
            await client.subscribe(f"{PREFIX}/devices/+/state", qos=1)
            async for message in client.messages:
                if message.payload:
                    seen.append(json.loads(message.payload))  # type: ignore[arg-type]

    sniffer = asyncio.create_task(sniff(), name="sniffer")
    await asyncio.sleep(0.1)
    try:
        async with running_rooms(plane, mosquitto, tmp_path, "room-101") as (room,):
            # Other subsystems add fields the minimal level does not allow.
            room.service.state_providers["inventory"] = lambda: [{"id": "cam0", "serial": "SN-1234"}]
            room.service.state_providers["media"] = lambda: {
                "sending": False,
                "peer_ip": "10.0.0.9",
                "fps": 30,
            }
            ack = await room.plane.push(
                "policy", plane.sign("policy", plane.policy(), [plane.fleet, plane.customer])
            )
            assert ack["status"] == "applied"
            await room.plane.wait_for(lambda s: s.get("applied", {}).get("policy") == 1)
            await asyncio.sleep(0.2)
    finally:
        sniffer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sniffer
    assert seen
    allowed = allowed_paths(PolicyBody.model_validate(plane.policy()))
    for state in seen:
        assert "inventory" not in state
        assert "SN-1234" not in json.dumps(state)
        assert "10.0.0.9" not in json.dumps(state)
        for key, value in state.items():
            assert key in allowed or any(p.startswith(key + ".") for p in allowed), key
            if key == "media":
                assert value == {"sending": False}


async def test_customer_key_package_outside_the_policy_changes_nothing(
    plane: Plane, mosquitto: Broker, tmp_path: Path
) -> None:
    async with running_rooms(plane, mosquitto, tmp_path, "room-101") as (room,):
        strict = plane.policy(e2ee__suites=[5], e2ee__kem="mlkem768-x25519")
        ack = await room.plane.push("policy", plane.sign("policy", strict, [plane.fleet, plane.customer]))
        assert ack["status"] == "applied", ack
        # Suite 4 and the X25519 KEM are below what this room's policy allows.
        package = _package(plane, room.guard, "room-101").model_dump()
        ack = await room.plane.push("keys", plane.sign("keys", package, [plane.customer]))
        assert (ack["status"], ack["reason"]) == ("rejected", "suite_forbidden"), ack
        assert room.guard.keys.keys.idle
        assert room.guard.key_source.current()[0] is None
