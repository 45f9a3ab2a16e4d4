"""The MQTT link to the management plane (aiomqtt): MQTT 5 or 3.1.1, one broker or a cluster.

mqtts with client certificates (plain mqtt for development), persistent session (MQTT 5: clean_start
False and a session expiry; 3.1.1: clean_session False), QoS 1, last will ``online: false`` on the
retained state topic, the device's and its groups' topics. ``[mqtt] urls`` lists several endpoints of
one (clustered) broker: on loss the link goes to the next one with a short connect timeout, backs off
(full jitter) only after a whole round failed, resubscribes (retrying topics the broker refused with
SUBACK 0x80 while its cluster re-elects), which re-reads the retained desired documents, and
re-publishes the retained state. docs/mqtt.md has the protocol details.

The will is the state document of the moment of connecting; :meth:`ControlLink.refresh_will`
reconnects at once (same session, nothing lost) so that a crash later still reports the versions last
applied (docs/adr/0020-last-will-refresh.md). Outgoing messages wait in two queues while offline: acks
of authenticated documents in a priority queue that is sent first and never dropped (each needs a
threshold signature, so it cannot be flooded), everything else in a bounded drop-oldest queue; the
device keeps running on last-known-good meanwhile.
"""

from __future__ import annotations

__all__ = ["ControlLink", "Topics", "kind_of_topic"]

import asyncio
import collections
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
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.config import MqttSection
from agent.control.errors import LinkError

log = structlog.get_logger()

SESSION_EXPIRY_S = 7 * 24 * 3600
_REFRESH_DRAIN_S = 2.0
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
        self._urgent: collections.deque[tuple[str, bytes, bool]] = collections.deque()
        self._outbox: collections.deque[tuple[str, bytes, bool]] = collections.deque()
        self._queued = asyncio.Event()
        self._in_flight = False
        self._drained = asyncio.Event()  # set whenever a publish ends (flush waits on it)
        self.dropped = 0  # messages of the ordinary queue dropped (oldest first) when it was full
        self.unknown_topic_messages = 0
        self.connected = asyncio.Event()
        self.connections = 0
        self.endpoint: Endpoint | None = None  # the one connected to, or last tried
        # One client per endpoint for the link's lifetime (aiomqtt clients are reusable): messages
        # received and PUBACKed but not yet handled stay in its queue across a reconnect.
        self._clients: dict[Endpoint, aiomqtt.Client] = {}
        self._refresh = asyncio.Event()
        self._closing = False
        self._idle = asyncio.Event()  # set while no received document is being handled
        self._idle.set()
        self._leftover: list[aiomqtt.Message] = []

    def close(self) -> None:
        """The owner is stopping: connect no more. A cancellation that Python 3.11's
        ``asyncio.wait_for`` (inside paho/aiomqtt) swallowed while connecting is raised again at the
        next step, so a stop that meets a reconnect (a will refresh) cannot leave the link running."""
        self._closing = True

    def _check_closing(self) -> None:
        if self._closing:
            raise asyncio.CancelledError

    def refresh_will(self) -> None:
        """Reconnect soon with a will computed now (after an apply changed the versions it reports).

        MQTT has no way to change the will of a live connection; a clean DISCONNECT discards the old
        one without publishing it, and the persistent session keeps subscriptions and queued QoS 1
        messages across the reconnect.
        """
        if not self._closing:
            self._refresh.set()

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every queued message has been published (PUBACK received); False when offline
        or not done within ``timeout_s``. Used before a clean disconnect (``online: false``)."""
        if not self.connected.is_set():
            return False
        try:
            async with asyncio.timeout(timeout_s):
                await self._outbox_empty()
        except TimeoutError:
            return False
        return True

    async def _outbox_empty(self) -> None:
        while self._urgent or self._outbox or self._in_flight:
            self._drained.clear()
            await self._drained.wait()

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

    async def _subscribe(self, client: aiomqtt.Client, *, refreshed: bool = False) -> None:
        """Subscribe to every topic in one SUBSCRIBE; retry the refused ones until SUBSCRIBE_RETRY_S.

        Each (re)subscription makes the broker send the retained desired documents again: that is how
        a room re-reads them after a failover. Documents it already applied are acked again, not
        re-applied (the control service keeps each document's outcome by digest).
        """
        pending = self.topics.subscriptions()
        deadline = time.monotonic() + SUBSCRIBE_RETRY_S
        delay = 0.25
        # After a will refresh the session (and its subscriptions) is still there: subscribing again
        # must not make the broker resend every retained document (MQTT 5 retain handling 1: retained
        # messages only for a new subscription, e.g. when the broker lost the session).
        options: Any = 1
        if refreshed and self._mqtt.protocol == "5":
            options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        while True:
            granted = await client.subscribe([(t, options) for t in pending], timeout=SUBACK_WAIT_S)
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
        refreshed = False
        delay = self._backoff[0]
        while True:
            endpoint = self.endpoints[index % len(self.endpoints)]
            self.endpoint = endpoint
            client = self._clients.get(endpoint)
            if client is None:
                client = self._clients[endpoint] = self._client(endpoint)
            was_refresh, refreshed = refreshed, False
            self._check_closing()
            self._set_will(client)
            try:
                async with client:
                    self._check_closing()
                    failed_rounds = failed_here = 0
                    self.connections += 1
                    log.info(
                        "control_link_connected",
                        broker=endpoint.host,
                        port=endpoint.port,
                        protocol=self._mqtt.protocol,
                    )
                    await self._subscribe(client, refreshed=was_refresh)
                    await client.publish(self.topics.state, self._state_payload(True), qos=1, retain=True)
                    self._check_closing()
                    self.connected.set()
                    try:
                        async with asyncio.TaskGroup() as tg:
                            loops = (
                                tg.create_task(self._send_loop(client), name="control.link.send"),
                                tg.create_task(self._receive_loop(client, beat), name="control.link.receive"),
                            )
                            tg.create_task(self._await_refresh(loops), name="control.link.refresh")
                        # The loops only end by error or cancellation: a normal exit is a will refresh
                        # (it cancels them; no child fails, so no cancel request is left on this task).
                        log.info("control_link_will_refreshed")
                        refreshed = True  # reconnect at once (clean disconnect: the old will is discarded)
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
            if refreshed:
                continue  # the same endpoint, at once
            index += 1  # the next endpoint: the one just lost (or refused) is the likeliest to be down
            # Full jitter (AWS architecture blog): spreads a fleet's reconnects after a broker restart.
            await asyncio.sleep(random.uniform(0, delay))  # noqa: S311 - jitter, not crypto

    def _set_will(self, client: aiomqtt.Client) -> None:
        """The will of the next connection: the state document of now, ``online: false``."""
        # aiomqtt takes the will only in its constructor; its paho client re-reads it at each connect.
        client._client.will_set(self.topics.state, self._state_payload(False), qos=1, retain=True)

    async def _await_refresh(self, loops: tuple[asyncio.Task[None], ...]) -> None:
        await self._refresh.wait()
        self._refresh.clear()
        # Let what is queued (the ack of the apply that asked for this) go out on this connection, and
        # never cut a document in the middle of its handling (its PUBACK has already been sent).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_REFRESH_DRAIN_S):
                await self._outbox_empty()
                await self._idle.wait()
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
            except (aiomqtt.MqttError, asyncio.CancelledError):
                # Keep it, at the front of its queue, for the next connection (QoS 1 allows the
                # duplicate if it did reach the broker).
                (self._urgent if urgent else self._outbox).appendleft((topic, payload, retain))
                raise
            finally:
                self._in_flight = False
                self._drained.set()

    async def _next_message(self, client: aiomqtt.Client) -> aiomqtt.Message:
        """The next received message; one taken from the queue just as the loop is cancelled (a will
        refresh) is kept for the next connection rather than lost (its PUBACK has been sent)."""
        if self._leftover:
            return self._leftover.pop(0)
        get = asyncio.ensure_future(anext(client.messages))
        try:
            return await asyncio.shield(get)
        except asyncio.CancelledError:
            if get.done() and not get.cancelled() and get.exception() is None:
                self._leftover.append(get.result())
            else:
                get.cancel()
            raise

    async def _receive_loop(self, client: aiomqtt.Client, beat: Callable[[], None]) -> None:
        while True:
            message = await self._next_message(client)
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
            self._idle.clear()
            try:
                await self._on_message(topic, kind, payload)
            except Exception as exc:  # CancelledError passes; nothing a message does ends the link
                log.error("control_message_failed", topic=topic[:200], error=type(exc).__name__)
            finally:
                self._idle.set()


def state_json(state: dict[str, object]) -> bytes:
    return json.dumps(state, sort_keys=True, separators=(",", ":")).encode()
