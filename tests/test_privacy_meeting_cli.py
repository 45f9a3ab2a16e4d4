"""``roomctl meeting start`` against a real Mosquitto: reads rooms' HPKE keys, pushes customer-signed
key packages that each room verifies and opens; frames from room A then decrypt at room B."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.control.errors import Rejected
from agent.control.identity import DeviceIdentity
from agent.control.signing_keys import private_key_pem
from agent.control.verify import VerifyContext, verify_document, verify_initial_root
from agent.e2ee.context import ReceiverContext, SenderContext
from agent.privacy.hpke import HpkeIdentity
from agent.privacy.key_packages import KeyManager, KeySet
from agent.schema.key_package import KeysBody
from agent.schema.policy import DEFAULT_POLICY
from tests.broker import Broker
from tests.plane import PREFIX, Plane, now

pytestmark = pytest.mark.broker


class Recorder:
    def __init__(self) -> None:
        self.keys = KeySet()

    def apply_keys(self, keys: KeySet) -> None:
        self.keys = keys


def _state(room: str, hpke: HpkeIdentity, device_dir: Path) -> dict:
    """A room's retained state as its agent publishes it: Ed25519 identity, HPKE keys, attestation."""
    device = DeviceIdentity.load_or_create(device_dir / room)
    attestation = device.sign_envelope("hpke-identity", {"device": room, "hpke": hpke.public_keys()})
    identity = {
        "ed25519": device.public_dict,
        "hpke": hpke.public_keys(),
        "hpke_attestation": attestation.to_dict(),
    }
    return {"device": room, "online": True, "identity": identity}


async def _publish_states(broker: Broker, identities: dict[str, HpkeIdentity], device_dir: Path) -> None:
    async with aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        for room, identity in identities.items():
            state = _state(room, identity, device_dir)
            await client.publish(f"{PREFIX}/devices/{room}/state", json.dumps(state), qos=1, retain=True)


async def _publish_raw(broker: Broker, room: str, state: dict) -> None:
    async with aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.publish(f"{PREFIX}/devices/{room}/state", json.dumps(state), qos=1, retain=True)


async def _collect_keys(broker: Broker, rooms: list[str], ready: asyncio.Event) -> dict[str, bytes]:
    got: dict[str, bytes] = {}
    async with aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        for room in rooms:
            await client.subscribe(f"{PREFIX}/devices/{room}/keys", qos=1)
        ready.set()
        async with asyncio.timeout(20):
            async for message in client.messages:
                got[str(message.topic).split("/")[-2]] = bytes(message.payload)  # type: ignore[arg-type]
                if len(got) == len(rooms):
                    return got
    return got


def _roomctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.fleet", *args], env=env, capture_output=True, text=True, timeout=60
    )


async def test_meeting_start_pushes_customer_signed_packages_that_rooms_open(
    mosquitto: Broker, agent_env: dict[str, str], tmp_path: Path
) -> None:
    plane = Plane()
    customer_pem = tmp_path / "customer.pem"
    customer_pem.write_bytes(private_key_pem(plane.customer))
    rooms = ["room-a", "room-b"]
    identities = {room: HpkeIdentity.generate() for room in rooms}
    await _publish_states(mosquitto, identities, tmp_path / "devices")
    ready = asyncio.Event()
    collector = asyncio.create_task(_collect_keys(mosquitto, rooms, ready))
    await ready.wait()
    result = await asyncio.to_thread(
        _roomctl,
        agent_env,
        "meeting",
        "start",
        "--rooms",
        ",".join(rooms),
        "--broker",
        mosquitto.url,
        "--customer-key",
        str(customer_pem),
        "--meeting",
        "m-lab",
        "--epoch",
        "3",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["kem"] == "mlkem768-x25519"
    raw = await collector

    root = verify_initial_root(plane.root())
    opened: dict[str, KeySet] = {}
    for room in rooms:
        doc = verify_document(raw[room], "keys", root, VerifyContext(device_id=room, groups=(), now=now()))
        assert doc.roles >= {"customer"}
        assert isinstance(doc.body, KeysBody)
        target = Recorder()
        KeyManager(
            device_id=room, identity=identities[room], policy=lambda: DEFAULT_POLICY, target=target
        ).install(doc.body)
        opened[room] = target.keys
        # The other room's package is not for this room (wrong-device replay).
        other = next(r for r in rooms if r != room)
        with pytest.raises(Rejected, match="not_for_this_device"):
            verify_document(raw[other], "keys", root, VerifyContext(device_id=room, groups=(), now=now()))
    own_a = opened["room-a"].own
    assert own_a is not None
    assert own_a.kid == report["rooms"]["room-a"]["kid"]
    sender = SenderContext(own_a.suite, own_a.base_key, own_a.kid)
    receiver = ReceiverContext()
    for key in opened["room-b"].peers:
        receiver.add_key(key.kid, key.base_key, key.suite, epoch=key.epoch)
    frame = os.urandom(1000)
    assert receiver.decrypt(b"meta", sender.encrypt(b"meta", frame)).plaintext == frame
    # No key bytes in what roomctl printed.
    assert own_a.base_key.hex() not in result.stdout + result.stderr


async def test_meeting_start_names_rooms_without_hpke_keys(
    mosquitto: Broker, agent_env: dict[str, str], tmp_path: Path
) -> None:
    key = tmp_path / "customer.pem"
    key.write_bytes(private_key_pem(ed25519.Ed25519PrivateKey.generate()))
    await _publish_states(mosquitto, {"room-a": HpkeIdentity.generate()}, tmp_path / "devices")
    result = await asyncio.to_thread(
        _roomctl,
        agent_env,
        "meeting",
        "start",
        "--rooms",
        "room-a,room-x",
        "--broker",
        mosquitto.url,
        "--customer-key",
        str(key),
        "--timeout",
        "1.5",
    )
    assert result.returncode == 3
    assert "room-x" in result.stderr
    assert "room-a" not in result.stderr.split(":")[-1]


async def test_broker_swapping_a_rooms_hpke_key_or_identity_is_refused(
    mosquitto: Broker, agent_env: dict[str, str], tmp_path: Path
) -> None:
    key = tmp_path / "customer.pem"
    key.write_bytes(private_key_pem(ed25519.Ed25519PrivateKey.generate()))
    pins = tmp_path / "pins.json"
    rooms = {"room-a": HpkeIdentity.generate(), "room-b": HpkeIdentity.generate()}
    await _publish_states(mosquitto, rooms, tmp_path / "devices")
    start = [
        "meeting",
        "start",
        "--rooms",
        "room-a,room-b",
        "--broker",
        mosquitto.url,
        "--customer-key",
        str(key),
        "--pins",
        str(pins),
        "--timeout",
        "3",
        "--json",
    ]
    first = await asyncio.to_thread(_roomctl, agent_env, *start)
    assert first.returncode == 0, first.stderr
    assert {r["pinned"] for r in json.loads(first.stdout)["rooms"].values()} == {"new"}
    # The attack, 1: the broker operator swaps room-b's HPKE key for its own, keeping the attestation.
    vendor = HpkeIdentity.generate()
    state = _state("room-b", rooms["room-b"], tmp_path / "devices")
    state["identity"]["hpke"] = vendor.public_keys()
    forged = json.loads(json.dumps(state))
    att = forged["identity"]["hpke_attestation"]
    payload = json.loads(base64.b64decode(att["payload"]))
    payload["hpke"] = vendor.public_keys()
    att["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    await _publish_raw(mosquitto, "room-b", forged)
    swapped = await asyncio.to_thread(_roomctl, agent_env, *start)
    assert swapped.returncode == 3
    assert "room-b" in swapped.stderr
    assert "not signed" in swapped.stderr
    # The attack, 2: it replaces room-b's whole identity with its own, validly self-signed: the pin refuses.
    await _publish_raw(mosquitto, "room-b", _state("room-b", vendor, tmp_path / "vendor-devices"))
    replaced = await asyncio.to_thread(_roomctl, agent_env, *start)
    assert replaced.returncode == 3
    assert "pinned" in replaced.stderr
