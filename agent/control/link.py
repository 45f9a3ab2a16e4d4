"""The MQTT 5 link to the management plane (aiomqtt).

mqtts with client certificates (plain mqtt for development), persistent session (clean_start
False, session expiry), QoS 1, last will ``online: false`` on the retained state topic, the device's
and its groups' topics, reconnect with jittered exponential backoff. The will is the state document of
the moment of connecting; :meth:`ControlLink.refresh_will` reconnects at once (same session, nothing
lost) so that a crash later still reports the versions last applied (docs/adr/0020-last-will-refresh.md).
Outgoing messages wait in two queues while offline: acks of authenticated documents in a priority
queue that is sent first and never dropped (each needs a threshold signature, so it cannot be
flooded), everything else in a bounded drop-oldest queue; the device keeps running on
last-known-good meanwhile.
"""

from __future__ import annotations

__all__ = ["ControlLink", "Topics", "kind_of_topic"]

import asyncio
import collections
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
        self._urgent: collections.deque[tuple[str, bytes, bool]] = collections.deque()
        self._outbox: collections.deque[tuple[str, bytes, bool]] = collections.deque()
        self._queued = asyncio.Event()
        self._in_flight = False
        self._drained = asyncio.Event()  # set whenever a publish ends (flush waits on it)
        self.dropped = 0  # messages of the ordinary queue dropped (oldest first) when it was full
        self.unknown_topic_messages = 0
        self.connected = asyncio.Event()
        self.connections = 0
        self._refresh = asyncio.Event()

    def refresh_will(self) -> None:
        """Reconnect soon with a will computed now (after an apply changed the versions it reports).

        MQTT has no way to change the will of a live connection; a clean DISCONNECT discards the old
        one without publishing it, and the persistent session keeps subscriptions and queued QoS 1
        messages across the reconnect.
        """
        self._refresh.set()

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every queued message has been published (PUBACK received); False when offline
        or not done within ``timeout_s``. Used before a clean disconnect (``online: false``)."""
        if not self.connected.is_set():
            return False
        try:
            async with asyncio.timeout(timeout_s):
                while self._urgent or self._outbox or self._in_flight:
                    self._drained.clear()
                    await self._drained.wait()
        except TimeoutError:
            return False
        return True

    def publish_nowait(
        self, topic: str, payload: bytes, *, retain: bool = False, priority: bool = False
    ) -> None:
        """Queue a QoS 1 publish.

        ``priority`` messages (acks of authenticated documents) are sent before any other and never
        dropped. Others wait in a bounded queue; when it is full the oldest is dropped (counted in
        :attr:`dropped`, logged once per 100).
        """
        if priority:
            self._urgent.append((topic, payload, retain))
        else:
            if len(self._outbox) >= _OUTBOX:
                self._outbox.popleft()
                self.dropped += 1
                if self.dropped % 100 == 1:
                    log.warning("control_outbox_dropped_oldest", dropped=self.dropped)
            self._outbox.append((topic, payload, retain))
        self._queued.set()

    def _next_outgoing(self) -> tuple[tuple[str, bytes, bool], bool] | None:
        if self._urgent:
            return self._urgent.popleft(), True
        if self._outbox:
            return self._outbox.popleft(), False
        return None

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
            refreshed = False
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
                            loops = (
                                tg.create_task(self._send_loop(client), name="control.link.send"),
                                tg.create_task(self._receive_loop(client, beat), name="control.link.receive"),
                            )
                            refresh = tg.create_task(self._await_refresh(loops), name="control.link.refresh")
                    finally:
                        self.connected.clear()
                    if refresh.done() and not refresh.cancelled():
                        log.info("control_link_will_refreshed")
                        refreshed = True  # reconnect at once (clean disconnect: the old will is discarded)
            except* aiomqtt.MqttError as group:
                # (No task.cancelling() check here: on 3.11 the inner TaskGroup leaves a cancel
                # request on this task when a child fails, so it would read as a shutdown.)
                log.warning(
                    "control_link_lost", error=str(group.exceptions[0])[:200], retry_s=round(delay, 2)
                )
            if refreshed:
                continue
            # Full jitter (AWS architecture blog): spreads a fleet's reconnects after a broker restart.
            await asyncio.sleep(random.uniform(0, delay))  # noqa: S311 - jitter, not crypto
            delay = min(delay * 2, self._backoff[1])

    async def _await_refresh(self, loops: tuple[asyncio.Task[None], ...]) -> None:
        """Ends the connection's TaskGroup without an error, by cancelling its loops.

        Not by raising: on Python 3.11 a TaskGroup whose child fails drops a cancellation of its
        owner that arrives meanwhile (child errors take priority), so a shutdown racing a will refresh
        was lost and ``run`` reconnected forever instead of stopping.
        """
        await self._refresh.wait()
        self._refresh.clear()
        for task in loops:
            task.cancel()

    async def _send_loop(self, client: aiomqtt.Client) -> None:
        me = asyncio.current_task()
        while True:
            if me is not None and me.cancelling():
                # Python 3.11's asyncio.wait_for (inside paho/aiomqtt publish) can swallow a
                # cancellation that races with completion; never loop on after being cancelled.
                raise asyncio.CancelledError
            picked = self._next_outgoing()
            if picked is None:
                self._queued.clear()
                await self._queued.wait()
                continue
            (topic, payload, retain), urgent = picked
            self._in_flight = True
            try:
                await client.publish(topic, payload, qos=1, retain=retain)
            except aiomqtt.MqttError:
                # Keep it, at the front of its queue, for the next connection.
                (self._urgent if urgent else self._outbox).appendleft((topic, payload, retain))
                raise
            finally:
                self._in_flight = False
                self._drained.set()

    async def _receive_loop(self, client: aiomqtt.Client, beat: Callable[[], None]) -> None:
        async for message in client.messages:
            beat()
            topic = str(message.topic)
            kind = kind_of_topic(self.topics, topic)
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            if kind is None:
                # Anyone may publish on desired/<anything>: log the first and then every 1000th.
                self.unknown_topic_messages += 1
                if self.unknown_topic_messages % 1000 == 1:
                    log.warning("control_unknown_topic", topic=topic[:200], seen=self.unknown_topic_messages)
                continue
            if not payload and message.retain:
                continue  # a cleared retained topic
            try:
                await self._on_message(topic, kind, payload)
            except Exception as exc:  # CancelledError passes; nothing a message does ends the link
                log.error("control_message_failed", topic=topic[:200], error=type(exc).__name__)


def state_json(state: dict[str, object]) -> bytes:
    return json.dumps(state, sort_keys=True, separators=(",", ":")).encode()
