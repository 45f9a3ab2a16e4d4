"""The MQTT 5 link to the management plane (aiomqtt).

mqtts with client certificates (plain mqtt for development), persistent session (clean_start
False, session expiry), QoS 1, last will ``online: false`` on the retained state topic, the device's
and its groups' topics, reconnect with jittered exponential backoff. Outgoing messages wait in a
bounded drop-oldest queue while offline; the device keeps running on last-known-good meanwhile.
"""

from __future__ import annotations

__all__ = ["ControlLink", "Topics", "kind_of_topic"]

import asyncio
import json
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import MqttSection
from agent.control.errors import LinkError

log = structlog.get_logger()

SESSION_EXPIRY_S = 7 * 24 * 3600
_OUTBOX = 1000


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str
    device: str
    groups: tuple[str, ...]

    @property
    def base(self) -> str:
        return f"{self.prefix}/devices/{self.device}"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def ack(self) -> str:
        return f"{self.base}/ack"

    @property
    def audit(self) -> str:
        return f"{self.base}/audit"

    def subscriptions(self) -> list[str]:
        subs = [f"{self.base}/desired/+", f"{self.base}/cmd", f"{self.base}/keys"]
        subs += [f"{self.prefix}/groups/{g}/desired/+" for g in self.groups]
        return subs


def kind_of_topic(topics: Topics, topic: str) -> str | None:
    """The document kind a topic carries (``root``, ``policy``, ``config``, ``update``, ``command``,
    ``keys``)."""
    if topic == f"{topics.base}/cmd":
        return "command"
    if topic == f"{topics.base}/keys":
        return "keys"
    for head in [topics.base, *(f"{topics.prefix}/groups/{g}" for g in topics.groups)]:
        if topic.startswith(head + "/desired/"):
            kind = topic[len(head) + len("/desired/") :]
            return kind if kind in ("root", "policy", "config", "update") else None
    return None


OnMessage = Callable[[str, str, bytes], Awaitable[None]]


class ControlLink:
    """Connects, subscribes, delivers documents to ``on_message(topic, kind, payload)``, publishes."""

    def __init__(
        self,
        mqtt: MqttSection,
        topics: Topics,
        on_message: OnMessage,
        state_payload: Callable[[bool], bytes],
        *,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 30.0,
    ) -> None:
        if mqtt.url is None:
            raise LinkError("no [mqtt] url: the control link stays offline")
        parts = urlsplit(mqtt.url)
        self._host = parts.hostname or "localhost"
        self._tls = parts.scheme == "mqtts"
        self._port = parts.port or (8883 if self._tls else 1883)
        if self._tls and mqtt.ca is None:
            raise LinkError("mqtts needs [mqtt] ca (the broker's CA certificate)")
        self._mqtt = mqtt
        self.topics = topics
        self._on_message = on_message
        self._state_payload = state_payload
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._outbox: asyncio.Queue[tuple[str, bytes, bool]] = asyncio.Queue(_OUTBOX)
        self.connected = asyncio.Event()
        self.connections = 0

    def publish_nowait(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Queue a QoS 1 publish; when full while offline, the oldest waiting message is dropped."""
        if self._outbox.full():
            self._outbox.get_nowait()
            log.warning("control_outbox_dropped_oldest")
        self._outbox.put_nowait((topic, payload, retain))

    def _client(self) -> aiomqtt.Client:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        tls = None
        if self._tls:
            tls = aiomqtt.TLSParameters(
                ca_certs=str(self._mqtt.ca),
                certfile=str(self._mqtt.cert) if self._mqtt.cert else None,
                keyfile=str(self._mqtt.key) if self._mqtt.key else None,
            )
        return aiomqtt.Client(
            self._host,
            self._port,
            identifier=self.topics.device,
            username=self._mqtt.username,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=props,
            keepalive=self._mqtt.keepalive_s,
            tls_params=tls,
            timeout=10,
            # Small control messages: Nagle + delayed ACK would add ~40 ms per hop.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            will=aiomqtt.Will(self.topics.state, self._state_payload(False), qos=1, retain=True),
        )

    async def run(self, beat: Callable[[], None] = lambda: None) -> None:
        """Connect forever (until cancelled), reconnecting with jittered exponential backoff."""
        delay = self._backoff[0]
        while True:
            try:
                async with self._client() as client:
                    self.connections += 1
                    delay = self._backoff[0]
                    log.info("control_link_connected", broker=self._host, port=self._port)
                    for topic in self.topics.subscriptions():
                        await client.subscribe(topic, qos=1)
                    await client.publish(self.topics.state, self._state_payload(True), qos=1, retain=True)
                    self.connected.set()
                    try:
                        async with asyncio.TaskGroup() as tg:
                            tg.create_task(self._send_loop(client), name="control.link.send")
                            tg.create_task(self._receive_loop(client, beat), name="control.link.receive")
                    finally:
                        self.connected.clear()
            except* aiomqtt.MqttError as group:
                # (No task.cancelling() check here: on 3.11 the inner TaskGroup leaves a cancel
                # request on this task when a child fails, so it would read as a shutdown.)
                log.warning(
                    "control_link_lost", error=str(group.exceptions[0])[:200], retry_s=round(delay, 2)
                )
            # Full jitter (AWS architecture blog): spreads a fleet's reconnects after a broker restart.
            await asyncio.sleep(random.uniform(0, delay))  # noqa: S311 - jitter, not crypto
            delay = min(delay * 2, self._backoff[1])

    async def _send_loop(self, client: aiomqtt.Client) -> None:
        me = asyncio.current_task()
        while True:
            if me is not None and me.cancelling():
                # Python 3.11's asyncio.wait_for (inside paho/aiomqtt publish) can swallow a
                # cancellation that races with completion; never loop on after being cancelled.
                raise asyncio.CancelledError
            topic, payload, retain = await self._outbox.get()
            try:
                await client.publish(topic, payload, qos=1, retain=retain)
            except aiomqtt.MqttError:
                # Keep it for the next connection (front of the line is lost; order is best effort).
                self.publish_nowait(topic, payload, retain=retain)
                raise

    async def _receive_loop(self, client: aiomqtt.Client, beat: Callable[[], None]) -> None:
        async for message in client.messages:
            beat()
            topic = str(message.topic)
            kind = kind_of_topic(self.topics, topic)
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            if kind is None:
                log.warning("control_unknown_topic", topic=topic[:200])
                continue
            if not payload and message.retain:
                continue  # a cleared retained topic
            await self._on_message(topic, kind, payload)


def state_json(state: dict[str, object]) -> bytes:
    return json.dumps(state, sort_keys=True, separators=(",", ":")).encode()
