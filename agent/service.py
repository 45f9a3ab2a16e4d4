"""The service contract every long-running part of the agent implements.

A service is an object with a ``name`` and an ``async run(progress)`` that runs until cancelled. The
supervisor creates one :class:`Progress` per service; the service calls :meth:`Progress.beat` whenever it
makes progress (a frame sent, a message handled, a loop turn of an idle wait). A service that has not
beaten for ``[supervisor] stall_timeout_s`` counts as hung: the watchdog withholds systemd's WATCHDOG=1
pings and systemd restarts the agent. A service that raises is restarted with backoff.
"""

from __future__ import annotations

__all__ = ["Progress", "Service"]

import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable


class Progress:
    """Progress heartbeat of one service (one per service, created by the supervisor)."""

    __slots__ = ("_beats", "_clock", "_last_beat", "name")

    def __init__(self, name: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._clock = clock
        self._last_beat = clock()
        self._beats = 0

    def beat(self) -> None:
        """Record that the service made progress now. Cheap: call it per frame if you like."""
        self._last_beat = self._clock()
        self._beats += 1

    @property
    def last_beat(self) -> float:
        """``time.monotonic()`` of the last beat (of the creation, before the first beat)."""
        return self._last_beat

    @property
    def beats(self) -> int:
        """How many times :meth:`beat` was called since creation."""
        return self._beats

    def reset(self) -> None:
        """Start a fresh stall window without counting a beat (the supervisor calls this on a restart)."""
        self._last_beat = self._clock()

    def age(self, now: float | None = None) -> float:
        """Seconds since the last beat."""
        return (self._clock() if now is None else now) - self._last_beat


@runtime_checkable
class Service(Protocol):
    """A long-running part of the agent, supervised and restarted on failure.

    ``run`` runs until cancelled (clean up in ``finally``; never swallow ``CancelledError``) and raises to
    be restarted. Returning is treated like a failure: services are meant to run for the agent's lifetime.
    """

    name: str

    async def run(self, progress: Progress) -> None: ...
