"""The software watchdog: systemd's WATCHDOG=1 pings only while every service makes progress.

systemd (``WatchdogSec=``) kills and restarts the agent when pings stop for ``WATCHDOG_USEC``. Pinging from
a timer alone would only prove that the event loop turns; here a ping is sent only when no running
service has gone ``stall_timeout_s`` without a :meth:`~agent.service.Progress.beat`, so a hung
camera or encoder makes systemd restart the agent. Without ``WATCHDOG_USEC`` the same check still runs
(at ``check_interval``) to report stalled services in the state and the STATUS= line.
"""

from __future__ import annotations

__all__ = ["Watchdog"]

import asyncio
from collections.abc import Callable

import structlog

from agent.daemon.runtime import Runtime
from agent.daemon.sdnotify import Notifier


class Watchdog:
    """Sends WATCHDOG=1 every ``ping_interval`` seconds while nothing is stalled.

    Args:
        runtime: receives the STATUS fragment ``services`` and state-change wake-ups.
        notifier: where pings and STATUS= go.
        stalled: returns the names of stalled services (the supervisor's view).
        summary: returns the services' one-line summary for STATUS=.
        ping_interval: half of ``WATCHDOG_USEC`` in seconds, or None when systemd's watchdog is off.
        check_interval: how often to check without systemd's watchdog.
    """

    def __init__(
        self,
        runtime: Runtime,
        notifier: Notifier,
        *,
        stalled: Callable[[], list[str]],
        summary: Callable[[], str],
        ping_interval: float | None,
        check_interval: float = 1.0,
    ) -> None:
        if ping_interval is not None and ping_interval <= 0:
            raise ValueError("ping_interval must be positive")
        self._runtime = runtime
        self._notifier = notifier
        self._stalled = stalled
        self._summary = summary
        self._ping_interval = ping_interval
        self._period = ping_interval if ping_interval is not None else check_interval
        self._log = structlog.get_logger()
        self.pings = 0
        self.withheld = 0

    async def run(self) -> None:
        """Loop until cancelled."""
        last_status: str | None = None
        stalled_before: list[str] = []
        while True:
            if self._runtime.stopping.is_set():
                # systemd stops enforcing the watchdog once the service leaves "running"; keep the
                # supervisor's "stopping" STATUS instead of overwriting it with a summary.
                await asyncio.sleep(self._period)
                continue
            stalled = self._stalled()
            self._runtime.status["services"] = self._summary()
            status = self._runtime.status_line()
            new_status = status if status != last_status else None
            last_status = status
            if stalled != stalled_before:
                if stalled:
                    # Pings stop now: systemd restarts the agent after WatchdogSec unless they recover.
                    self._log.error("watchdog_withheld", stalled=stalled)
                else:
                    self._log.info("watchdog_resumed")
                self._runtime.state_changed()
                stalled_before = stalled
            if not stalled and self._ping_interval is not None:
                self._notifier.watchdog(new_status)
                self.pings += 1
            else:
                if stalled:
                    self.withheld += 1
                if new_status is not None:
                    self._notifier.status(new_status)
            await asyncio.sleep(self._period)
