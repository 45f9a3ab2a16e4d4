"""A key package refused stays refused, against a real Mosquitto and the real ``roomagent run``.

The story: the customer locks the room; a key package arrives while it is locked and is refused;
the customer unlocks; the broker (or anyone replaying it) delivers that same package again; a
package signed before the unlock arrives. Neither brings meeting keys back: only a package issued
after the unlock is taken.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from agent.privacy.hpke import HpkeIdentity
from agent.privacy.key_packages import seal_meeting
from tests.broker import Broker
from tests.plane import Plane, PlaneClient, now, ts
from tests.test_control_seams import DEVICE, audit_entries, plane_client, write_config
from tests.test_privacy_agent_process import agent_process

pytestmark = pytest.mark.broker


def package(hpke: dict[str, str], epoch: int) -> dict[str, Any]:
    rooms = {DEVICE: hpke, "room-x": HpkeIdentity.generate().public_keys()}
    body = seal_meeting(
        meeting="m-1",
        epoch=epoch,
        suite=4,
        kem="x25519",
        key_expires=ts(now() + dt.timedelta(hours=1)),
        rooms=rooms,
    )[DEVICE]
    return body.model_dump()


async def command(pc: PlaneClient, plane: Plane, name: str) -> dict[str, Any]:
    ack = await pc.push(
        "command", plane.sign("command", {"name": name, "args": {}}, [plane.customer]), wait_s=20
    )
    assert ack["status"] == "applied", ack
    return ack


async def test_a_refused_key_package_is_never_applied_after_the_unlock(
    mosquitto: Broker, tmp_path: Path, agent_env: dict[str, str]
) -> None:
    plane = Plane()
    config, state_dir = write_config(tmp_path, mosquitto, plane)
    async with agent_process(config, agent_env) as proc, plane_client(mosquitto) as pc:
        state = await pc.wait_for(lambda s: s.get("device") == DEVICE and s.get("online") is True, 30)
        hpke = state["identity"]["hpke"]
        ack = await pc.push(
            "policy", plane.sign("policy", plane.policy(), [plane.fleet, plane.customer]), wait_s=20
        )
        assert ack["status"] == "applied", ack

        await command(pc, plane, "lock")
        while_locked = plane.sign("keys", package(hpke, 1), [plane.customer])
        ack = await pc.push("keys", while_locked, wait_s=20)
        assert (ack["status"], ack["reason"]) == ("rejected", "locked"), ack

        # A package signed before the unlock (held back by whoever relays it).
        signed_before = plane.sign("keys", package(hpke, 2), [plane.customer], issued_at=now())
        await asyncio.sleep(1.1)  # the unlock happens in a later second than that signature
        await command(pc, plane, "unlock")

        # The broker redelivers the refused package: remembered as refused.
        ack = await pc.push("keys", while_locked, wait_s=20)
        assert (ack["status"], ack["reason"]) == ("rejected", "locked"), ack
        # The package signed before the unlock: refused too, nothing installed.
        ack = await pc.push("keys", signed_before, wait_s=20)
        assert (ack["status"], ack["reason"]) == ("rejected", "rollback"), ack
        assert "unlock" in ack["message"]

        # Only a package issued after the unlock is taken.
        after = now() + dt.timedelta(seconds=2)  # within the clock skew, in a later second than the unlock
        ack = await pc.push(
            "keys", plane.sign("keys", package(hpke, 3), [plane.customer], issued_at=after), wait_s=20
        )
        assert ack["status"] == "applied", ack
        assert "epoch 3" in ack["message"]
        assert proc.poll() is None

    keys_entries = [e for e in audit_entries(state_dir) if e["kind"] == "keys"]
    # Refused while locked (audited once; the redelivery is re-acked from the recorded outcome), the
    # stale package accepted by the verifier then refused by the room, the new one applied.
    assert [(e["event"], e["reason"], e["version"]) for e in keys_entries] == [
        ("rejected", "locked", 1),
        ("accepted", None, 2),
        ("rejected", "rollback", 2),
        ("accepted", None, 3),
        ("applied", None, 3),
    ], json.dumps(keys_entries, indent=1)
