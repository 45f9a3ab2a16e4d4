"""An impairing UDP relay: loss, jitter and blackouts you can reproduce, between any two UDP endpoints.

This machine's kernel has no ``netem`` queueing discipline, so impairment is done in user space: a
relay listens on one port and forwards every datagram to ``target``; datagrams coming back from the
target go to the last address that sent to the relay, so it works both ways between two endpoints.
Each datagram is dropped with probability ``loss_pct``, delayed by a uniform 0..``jitter_ms`` (so
packets may be reordered, as on a jittery path), and everything is dropped for ``blackout_ms`` starting
``blackout_at_s`` after start. The random choices come from a seeded generator: the same seed and the
same traffic give the same impairment. Memory is bounded (``max_queued`` datagrams in flight).
"""

from __future__ import annotations

__all__ = ["ImpairingRelay", "Impairment", "RelayStats"]

import heapq
import random
import socket
import threading
import time
from dataclasses import asdict, dataclass

import structlog

_log = structlog.get_logger()
_MAX_DATAGRAM = 65_535


@dataclass(frozen=True, slots=True, kw_only=True)
class Impairment:
    loss_pct: float = 0.0
    jitter_ms: float = 0.0
    delay_ms: float = 0.0
    blackout_ms: float = 0.0
    blackout_at_s: float = 5.0
    seed: int = 1
    max_queued: int = 20_000

    def __post_init__(self) -> None:
        if not 0 <= self.loss_pct <= 100:
            raise ValueError("loss must be 0..100 %")
        if not 0 <= self.jitter_ms <= 2000 or not 0 <= self.delay_ms <= 2000:
            raise ValueError("jitter and delay must be 0..2000 ms")
        if not 0 <= self.blackout_ms <= 60_000 or self.blackout_at_s < 0:
            raise ValueError("blackout must be 0..60000 ms, starting at >= 0 s")
        if self.max_queued < 1:
            raise ValueError("max_queued must be at least 1")


@dataclass(slots=True)
class RelayStats:
    received: int = 0
    forwarded: int = 0
    lost: int = 0  # dropped by the random loss
    blacked_out: int = 0  # dropped during the blackout
    overflow: int = 0  # dropped because max_queued were in flight

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class ImpairingRelay:
    """Forwards UDP between a client and ``target`` with an :class:`Impairment`; runs in two threads
    (receive, release) started by :meth:`start` and stopped by :meth:`stop`."""

    def __init__(
        self, target: tuple[str, int], impairment: Impairment, *, listen: tuple[str, int] = ("127.0.0.1", 0)
    ) -> None:
        self.target = target
        self.impairment = impairment
        self.stats = RelayStats()
        self._sock = socket.socket(socket.AF_INET6 if ":" in listen[0] else socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        self._sock.bind(listen)
        self._rng = random.Random(impairment.seed)  # noqa: S311 - reproducible impairment, not secrecy
        self._heap: list[tuple[float, int, bytes, tuple[str, int]]] = []
        self._order = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._client: tuple[str, int] | None = None
        self._t0 = 0.0
        self._threads: list[threading.Thread] = []

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return host, port

    def start(self) -> ImpairingRelay:
        self._t0 = time.monotonic()
        for target, name in ((self._receive, "receive"), (self._release, "release")):
            thread = threading.Thread(target=target, name=f"relay[{self.address[1]}].{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(2.0)
        self._sock.close()

    def _receive(self) -> None:
        imp = self.impairment
        target = (socket.gethostbyname(self.target[0]), self.target[1])
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                data, addr = self._sock.recvfrom(_MAX_DATAGRAM)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            self.stats.received += 1
            if addr[:2] == target:
                if self._client is None:
                    continue
                dest = self._client
            else:
                self._client = addr[:2]
                dest = target
            now = time.monotonic()
            since = now - self._t0
            if imp.blackout_ms and imp.blackout_at_s <= since < imp.blackout_at_s + imp.blackout_ms / 1000:
                self.stats.blacked_out += 1
                continue
            if imp.loss_pct and self._rng.random() * 100 < imp.loss_pct:
                self.stats.lost += 1
                continue
            delay = (imp.delay_ms + (self._rng.random() * imp.jitter_ms if imp.jitter_ms else 0.0)) / 1000
            with self._cond:
                if len(self._heap) >= imp.max_queued:
                    self.stats.overflow += 1
                    continue
                self._order += 1
                heapq.heappush(self._heap, (now + delay, self._order, data, dest))
                self._cond.notify()

    def _release(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                while not self._heap and not self._stop.is_set():
                    self._cond.wait(0.1)
                if self._stop.is_set():
                    return
                due, _, data, dest = self._heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
            try:
                self._sock.sendto(data, dest)
                self.stats.forwarded += 1
            except OSError as exc:
                _log.debug("relay_send_failed", error=str(exc))
