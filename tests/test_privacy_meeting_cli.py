"""``roomctl meeting start`` against a real Mosquitto: takes rooms' HPKE keys from the customer-signed
roster, pushes customer-signed key packages that each room verifies and opens; frames from room A
then decrypt at room B. The broker's retained states play no part."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import aiomqtt
import pytest

from agent.control.errors import Rejected
from agent.control.identity import DeviceIdentity
from agent.control.signing_keys import private_key_pem
from agent.control.verify import VerifyContext, verify_document, verify_initial_root
from agent.e2ee.context import ReceiverContext, SenderContext
from agent.privacy.errors import KeyDeliveryError
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


def _identity(room: str, hpke: HpkeIdentity, device_dir: Path) -> dict:
    """What ``roomagent identity --json`` prints on the room: Ed25519 identity, HPKE keys, attestation."""
    device = DeviceIdentity.load_or_create(device_dir / room)
    attestation = device.sign_envelope("hpke-identity", {"device": room, "hpke": hpke.public_keys()})
    return {
        "device": room,
        "ed25519": device.public_dict,
        "keyid": device.keyid,
        "hpke": hpke.public_keys(),
        "hpke_attestation": attestation.to_dict(),
    }


def _state(room: str, hpke: HpkeIdentity, device_dir: Path) -> dict:
    return {"device": room, "online": True, "identity": _identity(room, hpke, device_dir)}


def _enroll(env: dict[str, str], plane: Plane, tmp: Path, identities: dict[str, HpkeIdentity]) -> list[str]:
    """Record each room in a customer-signed roster; returns roomctl's --roster/--root arguments."""
    root = tmp / "root.json"
    if not root.exists():
        root.write_bytes(plane.root())
    customer = tmp / "roster-customer.pem"
    customer.write_bytes(private_key_pem(plane.customer))
    trust = ["--roster", str(tmp / "roster.env.json"), "--root", str(root)]
    for room, hpke in identities.items():
        path = tmp / f"{room}.identity.json"
        path.write_text(json.dumps(_identity(room, hpke, tmp / "devices")))
        added = _roomctl(
            env,
            "roster",
            "add",
            room,
            "--identity",
            str(path),
            "--customer",
            "acme",
            "--customer-key",
            str(customer),
            *trust,
        )
        assert added.returncode == 0, added.stderr
    return trust


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
    trust = _enroll(agent_env, plane, tmp_path, identities)
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
        *trust,
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
    plane = Plane()
    key = tmp_path / "customer.pem"
    key.write_bytes(private_key_pem(plane.customer))
    trust = _enroll(agent_env, plane, tmp_path, {"room-a": HpkeIdentity.generate()})
    # A state on the broker does not enroll a room.
    await _publish_states(mosquitto, {"room-x": HpkeIdentity.generate()}, tmp_path / "devices")
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
        *trust,
    )
    assert result.returncode == 3
    assert "room-x: not in the roster" in result.stderr
    assert "room-a:" not in result.stderr


async def test_broker_swapping_a_rooms_keys_changes_nothing_and_pins_are_gone(
    mosquitto: Broker, agent_env: dict[str, str], tmp_path: Path
) -> None:
    plane = Plane()
    key = tmp_path / "customer.pem"
    key.write_bytes(private_key_pem(plane.customer))
    rooms = {"room-a": HpkeIdentity.generate(), "room-b": HpkeIdentity.generate()}
    trust = _enroll(agent_env, plane, tmp_path, rooms)
    # The attack: the broker operator replaces room-b's whole identity with its own, validly self-signed.
    vendor = HpkeIdentity.generate()
    await _publish_raw(mosquitto, "room-b", _state("room-b", vendor, tmp_path / "vendor-devices"))
    ready = asyncio.Event()
    collector = asyncio.create_task(_collect_keys(mosquitto, ["room-b"], ready))
    await ready.wait()
    start = [
        "meeting",
        "start",
        "--rooms",
        "room-a,room-b",
        "--broker",
        mosquitto.url,
        "--customer-key",
        str(key),
        "--timeout",
        "3",
        "--json",
        *trust,
    ]
    result = await asyncio.to_thread(_roomctl, agent_env, *start)
    assert result.returncode == 0, result.stderr
    raw = (await collector)["room-b"]
    root = verify_initial_root((tmp_path / "root.json").read_bytes())
    body = verify_document(raw, "keys", root, VerifyContext(device_id="room-b", groups=(), now=now())).body
    assert isinstance(body, KeysBody)
    # Sealed to room-b's rostered key: room-b opens it, the broker's key does not.
    KeyManager(
        device_id="room-b", identity=rooms["room-b"], policy=lambda: DEFAULT_POLICY, target=Recorder()
    ).install(body)
    with pytest.raises(KeyDeliveryError, match="bad_seal"):
        KeyManager(
            device_id="room-b", identity=vendor, policy=lambda: DEFAULT_POLICY, target=Recorder()
        ).install(body)
    # Trust on first use is gone: --pins is no longer an option.
    pins = await asyncio.to_thread(_roomctl, agent_env, *start, "--pins", str(tmp_path / "pins.json"))
    assert pins.returncode == 2
    assert "--pins" in pins.stderr
