"""What an unauthenticated rejection costs: coalesced counters, a daily audit byte budget, per-topic
ack rate limits and at most one ack per distinct message.

Anyone with a broker connection can send garbage; nobody is accountable for it. Auditing and acking
every such message one by one lets a flood fill the disk (then every document fails with
``state_error``) and the outbound queue. So for each (reason, topic) the device keeps a counter
(count, first and last seen); the first rejection of a (reason, topic) pair in a day is audited in
full, later ones are written as one ``rejections_coalesced`` entry per pair and flush interval, and
all of them together never write more than ``audit_budget_bytes`` a day (after that only the
in-memory counters grow; the next day's first flush says how many went unaudited). Acks of
unauthenticated rejections are limited per topic (token bucket), and a message already acked (same
bytes, e.g. a retained poison message redelivered on every reconnect) is acked once.

Authenticated rejections (a threshold of some role signed the document) never pass through here:
they are audited and acked one by one, with priority.
"""

from __future__ import annotations

__all__ = ["Admission", "Counter", "Intake", "RejectionLedger", "plausible"]

import asyncio
import datetime as dt
import hashlib
from collections import OrderedDict, deque
from dataclasses import dataclass


@dataclass(slots=True)
class Counter:
    """Unauthenticated rejections of one (reason, topic) pair."""

    count: int
    first: dt.datetime
    last: dt.datetime
    pending: int = 0  # counted since the last coalesced audit entry
    pending_first: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class Admission:
    """What to do with one unauthenticated rejection."""

    ack: bool
    audit: bool  # audit this one in full (first of its pair today, within the byte budget)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: dt.datetime


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RejectionLedger:
    """Counters and limits for unauthenticated rejections (pure: the caller passes ``now``)."""

    def __init__(
        self,
        *,
        acks_per_s: float = 5.0,
        ack_burst: int = 20,
        audit_budget_bytes: int = 256 * 1024,
        flush_interval_s: float = 60.0,
        remembered: int = 1024,
    ) -> None:
        self.acks_per_s = acks_per_s
        self.ack_burst = ack_burst
        self.audit_budget_bytes = audit_budget_bytes
        self.flush_interval = dt.timedelta(seconds=flush_interval_s)
        self._remembered = remembered
        self.counters: dict[tuple[str, str], Counter] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._acked: OrderedDict[bytes, None] = OrderedDict()
        self._day: dt.date | None = None
        self._spent = 0  # audit bytes written today for unauthenticated rejections
        self.unaudited = 0  # rejections counted but neither audited in full nor coalesced (budget)
        self._audited_today: set[tuple[str, str]] = set()
        self._last_flush: dt.datetime | None = None

    # -- admission -------------------------------------------------------------------------------
    def admit(self, reason: str, topic: str, raw: bytes, now: dt.datetime) -> Admission:
        """Count one rejection and say whether to ack it and whether to audit it in full."""
        self._roll(now)
        key = (reason, topic)
        counter = self.counters.get(key)
        if counter is None:
            counter = self.counters[key] = Counter(0, now, now)
        counter.count += 1
        counter.last = now
        digest = hashlib.sha256(raw).digest()
        duplicate = digest in self._acked
        ack = not duplicate and self._take_token(topic, now)
        if ack:
            self._acked[digest] = None
            if len(self._acked) > self._remembered:
                self._acked.popitem(last=False)
        audit = key not in self._audited_today and self._spent < self.audit_budget_bytes
        if audit:
            self._audited_today.add(key)
        else:
            counter.pending += 1
            if counter.pending_first is None:
                counter.pending_first = now
        return Admission(ack, audit)

    def _take_token(self, topic: str, now: dt.datetime) -> bool:
        bucket = self._buckets.get(topic)
        if bucket is None:
            bucket = self._buckets[topic] = _Bucket(float(self.ack_burst), now)
        elapsed = max(0.0, (now - bucket.at).total_seconds())
        bucket.tokens = min(float(self.ack_burst), bucket.tokens + elapsed * self.acks_per_s)
        bucket.at = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def count_unprocessed(self, topic: str, n: int, now: dt.datetime) -> None:
        """``n`` messages on ``topic`` dropped unparsed by the intake (rate limit): coalesced only."""
        key = ("unprocessed", topic)
        counter = self.counters.get(key)
        if counter is None:
            counter = self.counters[key] = Counter(0, now, now)
        counter.count += n
        counter.last = now
        counter.pending += n
        if counter.pending_first is None:
            counter.pending_first = now

    # -- audit budget ----------------------------------------------------------------------------
    def spend(self, nbytes: int) -> None:
        """Record audit bytes written for unauthenticated rejections."""
        self._spent += nbytes

    @property
    def spent(self) -> int:
        return self._spent

    def _roll(self, now: dt.datetime) -> None:
        day = now.astimezone(dt.UTC).date()
        if day != self._day:
            self._day = day
            self._spent = 0
            self._audited_today.clear()

    def flush_due(self, now: dt.datetime) -> bool:
        if self._last_flush is None:
            self._last_flush = now
            return False
        return now - self._last_flush >= self.flush_interval and any(
            c.pending for c in self.counters.values()
        )

    def flush(self, now: dt.datetime) -> list[tuple[str, str, str]]:
        """Coalesced entries to audit now: ``(reason, topic, message)`` per pair with pending counts.

        Within the byte budget (the caller reports what it wrote with :meth:`spend`); past it the
        counts stay in :attr:`unaudited` and in the counters the state reports.
        """
        self._roll(now)
        self._last_flush = now
        out: list[tuple[str, str, str]] = []
        for (reason, topic), counter in sorted(self.counters.items()):
            if not counter.pending:
                continue
            if self._spent >= self.audit_budget_bytes:
                self.unaudited += counter.pending
            else:
                first = counter.pending_first or counter.last
                message = (
                    f"{counter.pending} more unauthenticated {reason} on {topic} from {_iso(first)} to "
                    f"{_iso(counter.last)} ({counter.count} since start"
                    + (f", {self.unaudited} unaudited over the daily budget" if self.unaudited else "")
                    + ")"
                )
                out.append((reason, topic, message))
            counter.pending = 0
            counter.pending_first = None
        return out

    def summary(self) -> dict[str, dict[str, object]]:
        """For the device state: ``{"<reason> <topic>": {"count", "first", "last"}}``."""
        return {
            f"{reason} {topic}": {"count": c.count, "first": _iso(c.first), "last": _iso(c.last)}
            for (reason, topic), c in sorted(self.counters.items())
        }


class Intake:
    """Two lanes between the MQTT link and verification, so garbage never delays a real document.

    A message is *plausible* when it is within the size cap and names, somewhere in its bytes, the
    key id (any hex case) of a key that may sign its kind: every valid document does (DSSE carries
    the key id beside each signature), and checking costs a few substring searches. Plausible
    messages are verified first, in arrival order. Everything else waits in a small drop-oldest
    lane and is verified at most ``garbage_per_s`` times a second per topic (the per-topic rate
    limit); the rest is counted (reason ``unprocessed``) without being parsed at all. Both lanes are
    bounded in bytes and drop their oldest message when full.
    """

    def __init__(
        self,
        *,
        plausible_max_bytes: int = 4 << 20,
        garbage_max_bytes: int = 1 << 20,
        garbage_per_s: float = 200.0,
    ) -> None:
        # Bounded in bytes, not messages: 1024 messages of 64 KiB would be 64 MiB on a room device.
        self.plausible: deque[tuple[str, str, bytes]] = deque()
        self.garbage: deque[tuple[str, str, bytes]] = deque()
        self._max = {"plausible": plausible_max_bytes, "garbage": garbage_max_bytes}
        self._bytes = {"plausible": 0, "garbage": 0}
        self.garbage_per_s = garbage_per_s
        self._buckets: dict[str, _Bucket] = {}
        self.ready = asyncio.Event()
        self.unprocessed: dict[str, int] = {}  # per topic: garbage never parsed (lane full / rate)
        self.plausible_dropped = 0

    def put(self, topic: str, kind: str, payload: bytes, plausible: bool, now: dt.datetime) -> None:
        if plausible:
            while self.plausible and self._bytes["plausible"] + len(payload) > self._max["plausible"]:
                self._bytes["plausible"] -= len(self.plausible.popleft()[2])
                self.plausible_dropped += 1
            self.plausible.append((topic, kind, payload))
            self._bytes["plausible"] += len(payload)
        else:
            bucket = self._buckets.get(topic)
            if bucket is None:
                bucket = self._buckets[topic] = _Bucket(self.garbage_per_s, now)
            elapsed = max(0.0, (now - bucket.at).total_seconds())
            bucket.tokens = min(self.garbage_per_s, bucket.tokens + elapsed * self.garbage_per_s)
            bucket.at = now
            if bucket.tokens < 1.0:
                self.unprocessed[topic] = self.unprocessed.get(topic, 0) + 1
                return
            bucket.tokens -= 1.0
            while self.garbage and self._bytes["garbage"] + len(payload) > self._max["garbage"]:
                old_topic, _, old = self.garbage.popleft()
                self._bytes["garbage"] -= len(old)
                self.unprocessed[old_topic] = self.unprocessed.get(old_topic, 0) + 1
            self.garbage.append((topic, kind, payload))
            self._bytes["garbage"] += len(payload)
        self.ready.set()

    def take(self) -> tuple[str, str, bytes] | None:
        for lane, queue in (("plausible", self.plausible), ("garbage", self.garbage)):
            if queue:
                item = queue.popleft()
                self._bytes[lane] -= len(item[2])
                return item
        self.ready.clear()
        return None


def plausible(payload: bytes, keyids: frozenset[bytes], max_bytes: int) -> bool:
    """Cheap necessary condition for an authentic document (see :class:`Intake`)."""
    if len(payload) > max_bytes:
        return False
    lowered = payload.lower()
    return any(k in lowered for k in keyids)
