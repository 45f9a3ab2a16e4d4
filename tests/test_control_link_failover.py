"""The control link's MQTT versions and failover, against real Mosquitto brokers.

- a real ``roomagent run`` speaks MQTT 5 and 3.1.1 (``[mqtt] protocol``), skips a dead endpoint of
  ``[mqtt] urls``, and ``roomctl push --broker DEAD,LIVE --mqtt-protocol`` does the same;
- when its broker dies the room moves to the next endpoint, re-reads the retained documents there
  (acking the one it already applied again, never applying it twice) and takes the next version;
- a subscription the broker refuses (SUBACK 0x80, as a NATS cluster does while it re-elects leaders)
  is retried on the same connection until granted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import parse_config
from agent.control.devbroker import free_port
from agent.control.link import ControlLink, Topics, refused_topics
from agent.control.signing_keys import private_key_pem
from agent.errors import ConfigError
from tests.broker import Broker
from tests.plane import Beat, Plane
from tests.room_processes import RoomProcess, applied_count, enroll, roomctl, wait_until, write_room_config

pytestmark = pytest.mark.broker


def _signed_policy(plane: Plane, tmp: Path, version: int) -> Path:
    raw = plane.sign(
        "policy",
        plane.policy(camera__remote_ptz=version % 2 == 0),
        [plane.fleet, plane.customer],
        version=version,
        devices=[],
        groups=["hq"],
    )
    path = tmp / f"policy-v{version}.env"
    path.write_bytes(raw)
    return path


def _enroll(env: dict[str, str], plane: Plane, tmp: Path, root: Path, config: Path) -> list[str]:
    """The room in a customer-signed roster; returns roomctl's ``--roster``/``--root`` arguments."""
    key = tmp / "customer.pem"
    key.write_bytes(private_key_pem(plane.customer))
    roster = tmp / "roster.env.json"
    enroll(env, config, groups=["hq"], customer_key=key, roster=roster, root=root)
    return ["--roster", str(roster), "--root", str(root)]


def _push(
    env: dict[str, str], trust: list[str], brokers: list[str], protocol: str, envelope: Path
) -> dict[str, Any]:
    proc = roomctl(
        env,
        "push",
        str(envelope),
        "--broker",
        ",".join(brokers),
        "--mqtt-protocol",
        protocol,
        "--connect-timeout",
        "2",
        "--group",
        "hq",
        "--wait",
        "60",
        *trust,
        "--json",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ok"] is True, out
    acks: dict[str, Any] = out["rooms"]
    return acks


def test_mqtt_section_urls_protocol_and_their_errors() -> None:
    one = parse_config({"mqtt": {"url": "mqtt://a:1883"}}).mqtt
    assert one.endpoints == ("mqtt://a:1883",)
    assert one.protocol == "5"
    many = parse_config({"mqtt": {"urls": ["mqtts://a:8883", "mqtts://b:8883"], "protocol": "3.1.1"}}).mqtt
    assert many.endpoints == ("mqtts://a:8883", "mqtts://b:8883")
    for bad, key in [
        ({"url": "mqtt://a", "urls": ["mqtt://b"]}, "mqtt"),
        ({"urls": ["mqtt://a", "mqtts://b"]}, "mqtt"),
        ({"urls": ["mqtt://a", "mqtt://a"]}, "mqtt.urls"),
        ({"urls": ["http://a"]}, "mqtt.urls"),
        ({"url": "mqtt://a", "protocol": "4"}, "mqtt.protocol"),
        ({"url": "mqtt://a", "protocol": 5}, "mqtt.protocol"),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_config({"mqtt": bad})
        assert key in str(info.value), (bad, str(info.value))


def test_refused_topics_reads_both_suback_forms() -> None:
    topics = ["a", "b", "c"]
    assert refused_topics(topics, (1, 0x80, 1)) == ["b"]
    granted = ReasonCode(PacketTypes.SUBACK, identifier=1)
    failed = ReasonCode(PacketTypes.SUBACK, identifier=0x80)
    denied = ReasonCode(PacketTypes.SUBACK, identifier=0x87)
    assert refused_topics(topics, [granted, failed, denied]) == ["b", "c"]
    assert refused_topics(topics, [granted]) == ["b", "c"]  # a short SUBACK: the rest count as refused


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_room_and_roomctl_speak_the_protocol_and_skip_a_dead_endpoint(
    protocol: str, mosquitto: Broker, tmp_path: Path, agent_env: dict[str, str]
) -> None:
    plane = Plane()
    root = tmp_path / "root.json"
    root.write_bytes(plane.root())
    dead = f"mqtt://127.0.0.1:{free_port()}"
    config = write_room_config(
        tmp_path / "rooms",
        "room-101",
        groups=["hq"],
        urls=[dead, mosquitto.url],
        protocol=protocol,
        root=root,
    )
    trust = _enroll(agent_env, plane, tmp_path, root, config)
    room = RoomProcess("room-101", config, tmp_path / "rooms" / "room-101", agent_env).start()
    try:
        acks = _push(agent_env, trust, [dead, mosquitto.url], protocol, _signed_policy(plane, tmp_path, 1))
        assert acks["room-101"]["status"] == "applied"
        assert acks["room-101"]["verified"] is True
        # The broker's own record: "as room-101 (p2, c0, k30)" = MQTT 3.1.1, p5 = MQTT 5; c0 = a
        # persistent session.
        level = {"5": "p5", "3.1.1": "p2"}[protocol]
        assert f"as room-101 ({level}, c0, k30)" in mosquitto.log_path.read_text()
    finally:
        room.stop()


def test_failover_rereads_retained_documents_without_applying_twice(
    tmp_path: Path, agent_env: dict[str, str]
) -> None:
    plane = Plane()
    root = tmp_path / "root.json"
    root.write_bytes(plane.root())
    a, b = Broker(tmp_path / "a"), Broker(tmp_path / "b")
    a.start()
    b.start()
    config = write_room_config(
        tmp_path / "rooms", "room-101", groups=["hq"], urls=[a.url, b.url], protocol="5", root=root
    )
    trust = _enroll(agent_env, plane, tmp_path, root, config)
    room = RoomProcess("room-101", config, tmp_path / "rooms" / "room-101", agent_env).start()
    try:
        v1 = _signed_policy(plane, tmp_path, 1)
        assert _push(agent_env, trust, [a.url], "5", v1)["room-101"]["status"] == "applied"
        # The plane keeps every endpoint's retained documents (a cluster replicates them; two lone
        # brokers stand in for it here): B holds version 1 too.
        assert _push_retained_only(agent_env, b.url, v1)
        a.kill()
        # On B the room re-reads version 1 (acked again as applied, not re-applied), then takes v2.
        acks = _push(agent_env, trust, [a.url, b.url], "5", _signed_policy(plane, tmp_path, 2))
        assert acks["room-101"]["status"] == "applied"
        wait_until(lambda: "control_link_lost" in room.log_text, 10, "the link to notice the loss")
        assert applied_count(room, "policy", 1) == 1
        assert applied_count(room, "policy", 2) == 1
    finally:
        room.stop()
        a.stop()
        b.stop()


def _push_retained_only(env: dict[str, str], url: str, envelope: Path) -> bool:
    raw = envelope.read_bytes()

    async def publish() -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        async with aiomqtt.Client(host, int(port), identifier="plane-retain") as client:
            await client.publish("roomagent/v1/groups/hq/desired/policy", raw, qos=1, retain=True)

    asyncio.run(publish())
    return True


async def test_refused_subscription_is_retried_until_granted(
    mosquitto: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injected into the real client: the first SUBACK refuses the group topic (0x80)."""
    calls: list[list[str]] = []
    real = aiomqtt.Client.subscribe

    async def flaky(self: aiomqtt.Client, topic: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append([t for t, _ in topic])
        granted = await real(self, topic, *args, **kwargs)
        if len(calls) == 1:
            failed = ReasonCode(PacketTypes.SUBACK, identifier=0x80)
            return [
                failed if t.startswith("roomagent/v1/groups/") else g
                for (t, _), g in zip(topic, granted, strict=True)
            ]
        return granted

    monkeypatch.setattr(aiomqtt.Client, "subscribe", flaky)
    config = parse_config({"device": {"id": "room-101", "groups": ["hq"]}, "mqtt": {"url": mosquitto.url}})
    got: list[tuple[str, bytes]] = []
    arrived = asyncio.Event()

    async def on_message(topic: str, kind: str, payload: bytes) -> None:
        got.append((kind, payload))
        arrived.set()

    link = ControlLink(config.mqtt, Topics("roomagent/v1", "room-101", ("hq",)), on_message, lambda _: b"{}")
    task = asyncio.create_task(link.run(Beat().beat))
    try:
        async with asyncio.timeout(20):
            await link.connected.wait()
        assert len(calls) == 2
        assert calls[1] == ["roomagent/v1/groups/hq/desired/+"]  # only the refused topic again
        assert link.connections == 1  # retried on the same connection
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="plane") as plane:
            await plane.publish("roomagent/v1/groups/hq/desired/policy", b"doc", qos=1)
        async with asyncio.timeout(10):
            await arrived.wait()
        assert got == [("policy", b"doc")]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
