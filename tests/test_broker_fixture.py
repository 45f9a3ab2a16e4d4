"""The broker fixtures themselves: plain pub/sub, restart keeps retained messages, TLS + ACL isolation."""

from __future__ import annotations

import asyncio
import ssl

import aiomqtt
import pytest

from tests.broker import Broker, TlsBroker

pytestmark = pytest.mark.broker


def _tls(broker: TlsBroker, client_id: str) -> ssl.SSLContext:
    c = broker.client(client_id)
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(c.ca))
    ctx.load_cert_chain(str(c.cert), str(c.key))
    return ctx


async def _first(client: aiomqtt.Client, wait_s: float = 3.0) -> aiomqtt.Message:
    async with asyncio.timeout(wait_s):
        async for message in client.messages:
            return message
    raise AssertionError("no message")


async def test_retained_message_survives_restart(mosquitto: Broker) -> None:
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5) as c:
        await c.publish("t/retained", b"kept", qos=1, retain=True)
    mosquitto.stop()
    mosquitto.start()
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5) as c:
        await c.subscribe("t/retained", qos=1)
        assert (await _first(c)).payload == b"kept"


async def test_tls_acl_confines_each_device_to_its_topics(mosquitto_tls: TlsBroker) -> None:
    p = "roomagent/v1/devices"
    kw = {"hostname": mosquitto_tls.host, "port": mosquitto_tls.port, "protocol": aiomqtt.ProtocolVersion.V5}
    async with (
        aiomqtt.Client(**kw, tls_context=_tls(mosquitto_tls, "plane"), identifier="plane") as plane,
        aiomqtt.Client(**kw, tls_context=_tls(mosquitto_tls, "room-a"), identifier="room-a") as a,
        aiomqtt.Client(**kw, tls_context=_tls(mosquitto_tls, "room-b"), identifier="room-b") as b,
    ):
        await plane.subscribe(f"{p}/+/state", qos=1)
        # Attack: device A subscribes to B's commands and writes B's state.
        await a.subscribe(f"{p}/room-b/cmd", qos=1)
        await a.publish(f"{p}/room-b/state", b"forged", qos=1)
        await b.subscribe(f"{p}/room-b/cmd", qos=1)
        await plane.publish(f"{p}/room-b/cmd", b"for-b", qos=1)
        assert (await _first(b)).payload == b"for-b"
        with pytest.raises(TimeoutError):
            await _first(a, 0.5)
        await b.publish(f"{p}/room-b/state", b"genuine", qos=1)
        msg = await _first(plane)
        assert msg.payload == b"genuine"  # the forged state never reached the plane


async def test_tls_refuses_client_without_certificate(mosquitto_tls: TlsBroker) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(mosquitto_tls.ca))
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(mosquitto_tls.host, mosquitto_tls.port, tls_context=ctx, timeout=1):
            pass
