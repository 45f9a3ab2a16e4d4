"""The shipped production Mosquitto config and ``roomctl broker-config``, tried as an attacker would.

The broker runs ``deploy/mosquitto/mosquitto.conf`` (tests/production_broker.py templates only ports,
paths and the log) with the dynamic-security JSON that the real ``roomctl broker-config`` process
generated from a customer-signed roster: rooms ``room-a`` (group ``g1``) and ``room-b`` (group
``g2``), and the plane. Each attack below is made with a valid certificate of the fleet CA.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.control.signing_keys import key_dict, private_key_pem
from tests.plane import Plane, ts
from tests.production_broker import ProductionBroker
from tests.room_processes import RoomProcess, applied_count, enroll, roomctl, write_room_config

pytestmark = pytest.mark.broker

P = "roomagent/v1"


def roster_envelope(plane: Plane, rooms: dict[str, list[str]], signers: list[Any]) -> bytes:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    now = dt.datetime.now(dt.UTC)
    body = {
        "customer": "ACME",
        "rooms": {
            device: {
                "ed25519": key_dict(ed25519.Ed25519PrivateKey.generate().public_key()),
                "hpke": {},
                "hpke_attestation": {},
                "groups": groups,
            }
            for device, groups in rooms.items()
        },
    }
    payload = {
        "kind": "roster",
        "version": 1,
        "issued_at": ts(now - dt.timedelta(minutes=1)),
        "expires": ts(now + dt.timedelta(days=30)),
        "targets": {},
        "body": body,
    }
    return plane.envelope("roster", payload, signers).to_json()


@pytest.fixture
def world(tmp_path: Path, agent_env: dict[str, str]) -> Iterator[tuple[ProductionBroker, Plane, Path]]:
    plane = Plane()
    root = tmp_path / "root.json"
    root.write_bytes(plane.root())
    roster = tmp_path / "roster.env.json"
    roster.write_bytes(roster_envelope(plane, {"room-a": ["g1"], "room-b": ["g2"]}, [plane.customer]))
    out = tmp_path / "dynamic-security.json"
    proc = roomctl(
        agent_env, "broker-config", "--roster", str(roster), "--root", str(root), "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    broker = ProductionBroker(tmp_path / "broker", out)
    broker.start()
    try:
        yield broker, plane, root
    finally:
        broker.stop()


@contextlib.asynccontextmanager
async def connect(broker: ProductionBroker, cn: str | None, client_id: str) -> AsyncIterator[aiomqtt.Client]:
    ctx = ssl.create_default_context(cafile=str(broker.ca))
    if cn is not None:
        cert = broker.client(cn)
        ctx.load_cert_chain(cert.cert, cert.key)
    async with aiomqtt.Client(
        broker.host, broker.port, identifier=client_id, tls_context=ctx, timeout=10,
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:  # fmt: skip
        yield client


async def granted(client: aiomqtt.Client, topic: str) -> bool:
    codes = await client.subscribe(topic, qos=1)
    return all(getattr(c, "value", c) < 0x80 for c in codes)


async def received(client: aiomqtt.Client, within_s: float) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within_s):
            async for m in client.messages:
                got.append((str(m.topic), bytes(m.payload) if isinstance(m.payload, bytes) else b""))
    return got


def test_broker_config_refuses_a_roster_the_customer_did_not_sign(
    tmp_path: Path, agent_env: dict[str, str]
) -> None:
    plane = Plane()
    root = tmp_path / "root.json"
    root.write_bytes(plane.root())
    roster = tmp_path / "roster.env.json"
    roster.write_bytes(roster_envelope(plane, {"room-a": ["g1"]}, [plane.fleet]))  # the vendor alone
    out = tmp_path / "dynsec.json"
    proc = roomctl(
        agent_env, "broker-config", "--roster", str(roster), "--root", str(root), "--out", str(out)
    )
    assert proc.returncode == 2
    assert "not signed by the customer threshold" in proc.stderr
    assert not out.exists()
    roster.write_bytes(b"[" * 100_000)
    proc = roomctl(
        agent_env, "broker-config", "--roster", str(roster), "--root", str(root), "--out", str(out)
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


async def test_anonymous_and_certificate_less_clients_cannot_connect(
    world: tuple[ProductionBroker, Plane, Path],
) -> None:
    broker, _, _ = world
    with pytest.raises(aiomqtt.MqttError):
        async with connect(broker, None, "anon"):
            pass
    with pytest.raises(aiomqtt.MqttError):  # plain MQTT on the TLS port
        async with aiomqtt.Client(broker.host, broker.port, identifier="plain", timeout=5):
            pass
    # A certificate whose CN the roster does not know connects but may do nothing at all.
    async with connect(broker, "stranger", "stranger") as c:
        assert not await granted(c, f"{P}/#")
        assert not await granted(c, f"{P}/devices/stranger/#")


async def test_a_room_reads_and_writes_only_its_own_topics_and_its_groups(
    world: tuple[ProductionBroker, Plane, Path],
) -> None:
    broker, _, _ = world
    async with (
        connect(broker, "plane", "plane-1") as plane,
        connect(broker, "room-a", "room-a") as a,
        connect(broker, "room-b", "room-b") as b,
    ):
        await plane.publish(f"{P}/groups/g2/desired/policy", b"g2-doc", qos=1, retain=True)
        await plane.publish(f"{P}/groups/g1/desired/policy", b"g1-doc", qos=1, retain=True)
        # A may not subscribe to B's topics, the whole tree, or another group's documents.
        assert not await granted(a, f"{P}/devices/room-b/cmd")
        assert not await granted(a, f"{P}/devices/+/cmd")
        assert not await granted(a, f"{P}/#")
        assert not await granted(a, f"{P}/groups/g2/desired/+")
        assert await granted(a, f"{P}/devices/room-a/#")
        assert await granted(a, f"{P}/groups/g1/desired/+")
        assert await granted(plane, f"{P}/devices/+/#")
        # A writes into B's subtree and onto its own plane-only topics: nobody receives any of it.
        for topic in (f"{P}/devices/room-b/state", f"{P}/devices/room-b/ack", f"{P}/devices/room-a/cmd"):
            await a.publish(topic, b"forged", qos=1)
        await b.publish(f"{P}/devices/room-b/ack", b"real", qos=1)
        await plane.publish(f"{P}/devices/room-b/cmd", b"for-b", qos=1)
        await plane.publish(f"{P}/devices/room-a/cmd", b"for-a", qos=1)
        got_a = await received(a, 1.5)
        got_plane = await received(plane, 0.5)
    assert sorted(got_a) == [
        (f"{P}/devices/room-a/cmd", b"for-a"),
        (f"{P}/groups/g1/desired/policy", b"g1-doc"),
    ]
    # The plane (subscribed to every device topic) sees its own commands and B's real ack, nothing forged.
    assert sorted(got_plane) == [
        (f"{P}/devices/room-a/cmd", b"for-a"),
        (f"{P}/devices/room-b/ack", b"real"),
        (f"{P}/devices/room-b/cmd", b"for-b"),
    ]


async def test_a_room_cannot_take_another_rooms_client_id(
    world: tuple[ProductionBroker, Plane, Path],
) -> None:
    broker, _, _ = world
    async with connect(broker, "room-b", "room-b") as b:
        assert await granted(b, f"{P}/devices/room-b/#")
        # A asks for B's id: the broker gives it its own certificate's instead; B stays connected.
        async with connect(broker, "room-a", "room-b") as a:
            await asyncio.sleep(1.0)
            assert await granted(a, f"{P}/devices/room-a/#")
            assert not await granted(a, f"{P}/devices/room-b/#")
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        await b.publish(f"{P}/devices/room-b/state", b"{}", qos=1, properties=props)  # still up
    log = broker.log_path.read_text()
    assert "as room-b (p5, c1, k60, u'room-a')" not in log
    assert "as room-a (p5, c1, k60, u'room-a')" in log
    assert "Client room-b already connected" not in log


def test_a_real_room_works_through_the_production_broker(
    world: tuple[ProductionBroker, Plane, Path], tmp_path: Path, agent_env: dict[str, str]
) -> None:
    broker, plane, root = world
    cert = broker.client("room-a")
    extra = f'ca = "{cert.ca}"\ncert = "{cert.cert}"\nkey = "{cert.key}"\n'
    config = write_room_config(
        tmp_path / "rooms",
        "room-a",
        groups=["g1"],
        urls=[broker.url],
        protocol="5",
        root=root,
        mqtt_extra=extra,
    )
    # roomctl trusts acks only through the customer's roster of the rooms' real identities (the
    # broker's roster above only needs their names and groups: the broker authenticates certificates).
    key = tmp_path / "customer.pem"
    key.write_bytes(private_key_pem(plane.customer))
    roster = tmp_path / "rooms" / "roster.env.json"
    enroll(agent_env, config, groups=["g1"], customer_key=key, roster=roster, root=root)
    room = RoomProcess("room-a", config, tmp_path / "rooms" / "room-a", agent_env).start()
    envelope = tmp_path / "policy.env"
    envelope.write_bytes(
        plane.sign("policy", plane.policy(), [plane.fleet, plane.customer], devices=[], groups=["g1"])
    )
    pc = broker.client("plane")
    try:
        proc = roomctl(
            agent_env, "push", str(envelope), "--broker", broker.url, "--ca", str(pc.ca),
            "--cert", str(pc.cert), "--key", str(pc.key), "--group", "g1", "--wait", "60",
            "--roster", str(roster), "--root", str(root), "--json",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr + room.log_text[-2000:]
        acks = json.loads(proc.stdout.strip().splitlines()[-1])["rooms"]
        assert acks["room-a"]["status"] == "applied"
        assert acks["room-a"]["verified"] is True
        assert applied_count(room, "policy", 1) == 1
    finally:
        room.stop()
