"""The MQTT link to the management plane (aiomqtt): MQTT 5 or 3.1.1, one broker or a cluster.

mqtts with client certificates (plain mqtt for development), persistent session (MQTT 5: clean_start
False and a session expiry; 3.1.1: clean_session False), QoS 1, last will ``online: false`` on the
retained state topic, the device's and its groups' topics. ``[mqtt] urls`` lists several endpoints of
one (clustered) broker: on loss the link goes to the next one with a short connect timeout, backs off
(full jitter) only after a whole round failed, resubscribes (retrying topics the broker refused with
SUBACK 0x80 while its cluster re-elects), which re-reads the retained desired documents, and
re-publishes the retained state. Outgoing messages wait in a bounded drop-oldest queue while offline;
the device keeps running on last-known-good meanwhile. docs/mqtt.md has the protocol details.
"""

from __future__ import annotations

__all__ = ["ControlLink", "Topics", "kind_of_topic"]

import asyncio
import contextlib
import json
import random
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
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
# A clustered broker refuses subscriptions (SUBACK 0x80) for a few seconds after losing a node, until
# its stream leaders are re-elected (NATS: 6-8 s measured); retry that long, then try another endpoint.
SUBSCRIBE_RETRY_S = 15.0
# NATS handles a SUBSCRIBE's topics one after the other and may spend its 4 s JetStream API timeout
# on each while a consumer leader is elected: the SUBACK of five topics can take 20 s.
SUBACK_WAIT_S = 30.0
SUBACK_FAILURE = 0x80


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One broker endpoint of ``[mqtt] url``/``urls``."""

    url: str
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        tls = parts.scheme == "mqtts"
        return cls(url, parts.hostname or "localhost", parts.port or (8883 if tls else 1883), tls)


def refused_topics(topics: Sequence[str], granted: Sequence[object]) -> list[str]:
    """The topics of one SUBSCRIBE whose SUBACK entry is a failure (MQTT 3.1.1 0x80, MQTT 5 >= 0x80)."""
    refused = []
    for topic, code in zip(topics, granted, strict=False):
        value = code if isinstance(code, int) else getattr(code, "value", SUBACK_FAILURE)
        if not isinstance(value, int) or value >= SUBACK_FAILURE:
            refused.append(topic)
    refused += list(topics[len(granted) :])  # a short SUBACK: treat the missing entries as refused
    return refused


def _abandon(client: aiomqtt.Client) -> None:
    # A connect that timed out leaves paho's socket open; a broker that processes that CONNECT late
    # would then hold a second session with our client id, and on a NATS cluster the two connections
    # (on different nodes) take the id from each other in a loop. Close it.
    with contextlib.suppress(Exception):
        # paho sends DISCONNECT and closes through its normal path (the event loop unregisters the
        # socket first); closing the fd from outside would leave aiomqtt callbacks on a reused fd.
        client._client.disconnect()


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
    """The document kind a topic carries (``root``, ``policy``, ``config``, ``command``, ``keys``)."""
    if topic == f"{topics.base}/cmd":
        return "command"
    if topic == f"{topics.base}/keys":
        return "keys"
    for head in [topics.base, *(f"{topics.prefix}/groups/{g}" for g in topics.groups)]:
        if topic.startswith(head + "/desired/"):
            kind = topic[len(head) + len("/desired/") :]
            return kind if kind in ("root", "policy", "config") else None
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
        if not mqtt.endpoints:
            raise LinkError("no [mqtt] url: the control link stays offline")
        self.endpoints = tuple(Endpoint.parse(url) for url in mqtt.endpoints)
        self._tls = self.endpoints[0].tls
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
        self.endpoint: Endpoint | None = None  # the one connected to, or last tried

    def publish_nowait(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Queue a QoS 1 publish; when full while offline, the oldest waiting message is dropped."""
        if self._outbox.full():
            self._outbox.get_nowait()
            log.warning("control_outbox_dropped_oldest")
        self._outbox.put_nowait((topic, payload, retain))

    def _client(self, endpoint: Endpoint) -> aiomqtt.Client:
        v5 = self._mqtt.protocol == "5"
        props = None
        if v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = SESSION_EXPIRY_S
        tls = None
        if endpoint.tls:
            tls = aiomqtt.TLSParameters(
                ca_certs=str(self._mqtt.ca),
                certfile=str(self._mqtt.cert) if self._mqtt.cert else None,
                keyfile=str(self._mqtt.key) if self._mqtt.key else None,
            )
        # A persistent session either way: QoS 1 commands and key packages wait for the room.
        session: dict[str, Any] = {"clean_start": False} if v5 else {"clean_session": False}
        client = aiomqtt.Client(
            endpoint.host,
            endpoint.port,
            identifier=self.topics.device,
            username=self._mqtt.username,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            **session,
            properties=props,
            keepalive=self._mqtt.keepalive_s,
            tls_params=tls,
            # Bounds CONNACK/SUBACK/PUBACK waits: short, so a hanging cluster node costs seconds.
            timeout=self._mqtt.connect_timeout_s,
            # Small control messages: Nagle + delayed ACK would add ~40 ms per hop.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            will=aiomqtt.Will(self.topics.state, self._state_payload(False), qos=1, retain=True),
        )
        client._client.connect_timeout = self._mqtt.connect_timeout_s  # the TCP/TLS connect itself
        return client

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        """Subscribe to every topic in one SUBSCRIBE; retry the refused ones until SUBSCRIBE_RETRY_S.

        Each (re)subscription makes the broker send the retained desired documents again: that is how
        a room re-reads them after a failover. Documents it already applied are acked again, not
        re-applied (the control service keeps each document's outcome by digest).
        """
        pending = self.topics.subscriptions()
        deadline = time.monotonic() + SUBSCRIBE_RETRY_S
        delay = 0.25
        while True:
            granted = await client.subscribe([(t, 1) for t in pending], timeout=SUBACK_WAIT_S)
            pending = refused_topics(pending, granted)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise aiomqtt.MqttError(f"subscriptions refused for {SUBSCRIBE_RETRY_S:.0f} s: {pending}")
            log.warning("control_subscribe_refused", topics=len(pending), retry_s=delay)
            await asyncio.sleep(random.uniform(delay / 2, delay))  # noqa: S311 - jitter, not crypto
            delay = min(delay * 2, 2.0)

    async def run(self, beat: Callable[[], None] = lambda: None) -> None:
        """Connect forever (until cancelled); on loss go to the next endpoint, back off after a round."""
        index = 0
        failed_rounds = 0
        failed_here = 0
        while True:
            endpoint = self.endpoints[index % len(self.endpoints)]
            self.endpoint = endpoint
            client = self._client(endpoint)
            try:
                async with client:
                    failed_rounds = failed_here = 0
                    self.connections += 1
                    log.info(
                        "control_link_connected",
                        broker=endpoint.host,
                        port=endpoint.port,
                        protocol=self._mqtt.protocol,
                    )
                    await self._subscribe(client)
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
                _abandon(client)
                failed_here += 1
                if failed_here >= len(self.endpoints):
                    failed_rounds, failed_here = failed_rounds + 1, 0
                delay = min(self._backoff[0] * 2**failed_rounds, self._backoff[1])
                log.warning(
                    "control_link_lost",
                    broker=endpoint.host,
                    port=endpoint.port,
                    error=str(group.exceptions[0])[:200],
                    retry_s=round(delay, 2),
                )
            index += 1  # the next endpoint: the one just lost (or refused) is the likeliest to be down
            # Full jitter (AWS architecture blog): spreads a fleet's reconnects after a broker restart.
            await asyncio.sleep(random.uniform(0, delay))  # noqa: S311 - jitter, not crypto

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
