"""Typed refusals from command and key-package handlers, over a real Mosquitto.

A handler that declines a verified document in the room's current state raises ``Refused``: the
device acks ``rejected`` with the handler's reason, audits a rejection and changes nothing. A handler
that really fails while acting stays ``rolled_back``/``apply_failed``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.privacy.guard import PrivacyGuard
from agent.privacy.hpke import HpkeIdentity
from agent.privacy.key_packages import seal_meeting
from hal.sim.camera import SimCamera
from tests.broker import Broker
from tests.plane import Plane, now, ts
from tests.privacy_rooms import running_rooms

pytestmark = pytest.mark.broker


@pytest.fixture
def plane() -> Plane:
    return Plane()


def _audit(room: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in room.service.audit.path.read_text().splitlines()]


def _package(guard: PrivacyGuard, device: str, *, suite: int, kem: str = "x25519") -> dict[str, Any]:
    import datetime as dt

    rooms = {device: guard.identity.public_keys(), "room-x": HpkeIdentity.generate().public_keys()}
    body = seal_meeting(
        meeting="m-1",
        epoch=1,
        suite=suite,
        kem=kem,
        key_expires=ts(now() + dt.timedelta(hours=1)),
        rooms=rooms,
    )[device]
    return body.model_dump()


async def test_key_package_refused_by_the_key_manager_is_rejected_with_its_reason(
    plane: Plane, mosquitto: Broker, tmp_path: Path
) -> None:
    async with running_rooms(plane, mosquitto, tmp_path, "room-101") as (room,):
        strict = plane.policy(e2ee__kem="mlkem768-x25519")
        ack = await room.plane.push("policy", plane.sign("policy", strict, [plane.fleet, plane.customer]))
        assert ack["status"] == "applied", ack
        # The customer's tool seals to X25519 only, below the room's KEM floor: refused, nothing installed.
        ack = await room.plane.push(
            "keys", plane.sign("keys", _package(room.guard, "room-101", suite=4), [plane.customer])
        )
        assert (ack["status"], ack["reason"]) == ("rejected", "kem_too_weak"), ack
        assert room.guard.keys.keys.idle
        last = _audit(room)[-1]
        assert (last["event"], last["outcome"], last["reason"]) == ("rejected", "rejected", "kem_too_weak")


async def test_intervention_refused_after_deprovisioning_is_rejected_not_rolled_back(
    plane: Plane, mosquitto: Broker, tmp_path: Path
) -> None:
    async with running_rooms(plane, mosquitto, tmp_path, "room-101") as (room,):
        ack = await room.plane.push(
            "command", plane.sign("command", {"name": "deprovision", "args": {}}, [plane.customer])
        )
        assert ack["status"] == "applied", ack
        # Nothing brings a deprovisioned room back remotely, not even its customer.
        ack = await room.plane.push(
            "command", plane.sign("command", {"name": "unlock", "args": {}}, [plane.customer])
        )
        assert (ack["status"], ack["reason"]) == ("rejected", "deprovisioned"), ack
        assert room.guard.interventions.state.value == "deprovisioned"
        assert _audit(room)[-1]["outcome"] == "rejected"


async def test_a_handler_that_fails_while_acting_is_still_rolled_back(
    plane: Plane, mosquitto: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_rooms(plane, mosquitto, tmp_path, "room-101") as (room,):

        async def broken(self: object, **move: Any) -> None:
            raise OSError("motor driver gone")

        monkeypatch.setattr(SimCamera, "set_ptz", broken)  # the real handler meets a failing HAL
        ack = await room.plane.push("command", plane.sign("command", {"name": "ptz", "args": {"pan": 1}}))
        assert (ack["status"], ack["reason"]) == ("rolled_back", "apply_failed"), ack
        assert _audit(room)[-1]["outcome"] == "rolled_back"
