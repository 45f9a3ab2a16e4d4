"""The supervisor: one ``asyncio.TaskGroup`` owning every service, the watchdog and the READY signal.

- Each service runs in its own named task (``service[NAME]``). A service that raises is restarted after a
  jittered exponential backoff and counted; more than ``max_restarts`` failures within
  ``restart_window_s`` and the supervisor gives up: it stops the agent and :meth:`Supervisor.run` returns
  exit code 1, so that systemd (``Restart=on-failure``) restarts the whole process.
- READY=1 goes out once every service has beaten its :class:`~agent.service.Progress` once.
- On stop (``runtime.stopping``: SIGTERM/SIGINT or a give-up) STOPPING=1 goes out and the services are
  cancelled one by one in reverse start order (media first, the state reporter last so it flushes the
  final state), each waited for within the stop budget.
- ``CancelledError`` is never swallowed: it is a ``BaseException`` and passes every ``except Exception``.
"""

from __future__ import annotations

__all__ = ["EXIT_GAVE_UP", "EXIT_OK", "RestartPolicy", "Supervisor"]

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from agent.config import SupervisorSection
from agent.daemon.runtime import Runtime
from agent.daemon.sdnotify import Notifier
from agent.daemon.watchdog import Watchdog
from agent.service import Progress, Service

EXIT_OK = 0
EXIT_GAVE_UP = 1

_READY_POLL_S = 0.01


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartPolicy:
    """When and how often a failing service is restarted."""

    max_restarts: int = 5
    window_s: float = 60.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    stall_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_restarts < 1:
            raise ValueError("max_restarts must be at least 1")
        if min(self.window_s, self.backoff_initial_s, self.backoff_max_s, self.stall_timeout_s) <= 0:
            raise ValueError("window, backoff and stall timeout must be positive")

    @classmethod
    def from_config(cls, section: SupervisorSection) -> RestartPolicy:
        return cls(
            max_restarts=section.max_restarts,
            window_s=section.restart_window_s,
            backoff_initial_s=section.backoff_initial_s,
            backoff_max_s=section.backoff_max_s,
            stall_timeout_s=section.stall_timeout_s,
        )

    def backoff(self, recent_failures: int, rng: random.Random) -> float:
        """Delay before the next restart: exponential in the recent failures, capped, "equal jitter".

        Half of the capped delay is fixed and half random, so a fleet of rooms failing together (a broker
        outage, a bad config push) does not restart in lockstep, and no delay collapses to zero.
        """
        exponent = max(0, recent_failures - 1)
        capped = min(self.backoff_max_s, self.backoff_initial_s * (2.0 ** min(exponent, 32)))
        return capped / 2 + rng.uniform(0, capped / 2)


class _Supervised:
    """Mutable bookkeeping of one service (owned by the supervisor's event loop)."""

    __slots__ = ("failures", "last_error", "progress", "restarts", "service", "state")

    def __init__(self, service: Service, clock: Callable[[], float]) -> None:
        self.service = service
        self.progress = Progress(service.name, clock=clock)
        self.state = "starting"  # starting | running | backoff | failed | stopped
        self.restarts = 0
        self.last_error: str | None = None
        self.failures: deque[float] = deque()


class Supervisor:
    """Runs services under one TaskGroup until the agent stops.

    Args:
        runtime: the shared runtime (its ``stopping`` event ends the run).
        services: the services, in start order (stopped in reverse).
        policy: restart, backoff and stall settings.
        notifier: systemd notify sender (a disabled one without ``NOTIFY_SOCKET``).
        watchdog_interval: seconds between WATCHDOG=1 pings (half of ``WATCHDOG_USEC``), None for none.
        stop_timeout_s: total time allowed for stopping all services.
        rng: randomness for the backoff jitter (tests pass a seeded one).
        clock: monotonic clock.
    """

    def __init__(
        self,
        runtime: Runtime,
        services: Sequence[Service],
        *,
        policy: RestartPolicy | None = None,
        notifier: Notifier | None = None,
        watchdog_interval: float | None = None,
        stop_timeout_s: float = 4.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        names = [s.name for s in services]
        if len(set(names)) != len(names):
            raise ValueError(f"service names must be unique, got {names}")
        self._runtime = runtime
        self._policy = policy if policy is not None else RestartPolicy.from_config(runtime.config.supervisor)
        self._notifier = notifier if notifier is not None else Notifier({})
        self._stop_timeout_s = stop_timeout_s
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 (jitter, not crypto)
        self._clock = clock
        self._entries = [_Supervised(s, clock) for s in services]
        self._gave_up: list[str] = []
        self._ready = False
        self._log = structlog.get_logger()
        self._watchdog = Watchdog(
            runtime,
            self._notifier,
            stalled=self.stalled,
            summary=self.summary,
            ping_interval=watchdog_interval,
            check_interval=min(1.0, self._policy.stall_timeout_s / 4),
        )

    # -- views ------------------------------------------------------------------------------------
    @property
    def progress(self) -> dict[str, Progress]:
        """The Progress of each service by name."""
        return {e.service.name: e.progress for e in self._entries}

    @property
    def ready(self) -> bool:
        """Whether READY=1 was sent (every service beat once)."""
        return self._ready

    def stalled(self) -> list[str]:
        """Names of running services that have not beaten for ``stall_timeout_s``.

        Services waiting in restart backoff are not stalled: the restart policy is making progress on
        them, and a service that keeps failing ends the process anyway.
        """
        now = self._clock()
        limit = self._policy.stall_timeout_s
        return [
            e.service.name
            for e in self._entries
            if e.state in ("starting", "running") and e.progress.age(now) > limit
        ]

    def health(self) -> dict[str, dict[str, Any]]:
        """Per-service health for the device state (JSON-ready)."""
        now = self._clock()
        stalled = set(self.stalled())
        return {
            e.service.name: {
                "state": "stalled" if e.service.name in stalled else e.state,
                "restarts": e.restarts,
                "last_progress_s": round(e.progress.age(now), 3),
                "last_error": e.last_error,
            }
            for e in self._entries
        }

    def summary(self) -> str:
        """A short text for systemd's STATUS= line."""
        up = sum(1 for e in self._entries if e.state == "running")
        text = f"{up}/{len(self._entries)} up"
        restarts = sum(e.restarts for e in self._entries)
        if restarts:
            text += f", {restarts} restarts"
        stalled = self.stalled()
        if stalled:
            text += f", stalled: {','.join(stalled)}"
        return text

    # -- running ----------------------------------------------------------------------------------
    async def run(self) -> int:
        """Run until ``runtime.stopping`` is set; returns the process exit code."""
        self._runtime.set_health_source(self.health)
        self._runtime.status["services"] = self.summary()
        self._log.info("supervisor_started", services=[e.service.name for e in self._entries])
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(self._keep_running(entry), name=f"service[{entry.service.name}]")
                for entry in self._entries
            ]
            watchdog = tg.create_task(self._watchdog.run(), name="watchdog")
            ready = tg.create_task(self._signal_ready(), name="ready")
            await self._runtime.stopping.wait()
            ready.cancel()
            reason = f"stopping: {', '.join(self._gave_up)} gave up" if self._gave_up else "stopping"
            self._runtime.status["services"] = reason
            self._notifier.stopping(self._runtime.status_line())
            await self._stop_services(tasks)
            watchdog.cancel()
        self._runtime.set_health_source(None)
        code = EXIT_GAVE_UP if self._gave_up else EXIT_OK
        self._log.info("supervisor_stopped", exit_code=code, gave_up=self._gave_up)
        return code

    async def _signal_ready(self) -> None:
        warned = False
        started = self._clock()
        while not all(e.progress.beats > 0 for e in self._entries):
            if not warned and self._clock() - started > self._policy.stall_timeout_s:
                waiting = [e.service.name for e in self._entries if e.progress.beats == 0]
                self._log.warning("services_not_ready", waiting=waiting)
                warned = True
            await asyncio.sleep(_READY_POLL_S)
        self._ready = True
        self._runtime.status["services"] = self.summary()
        self._notifier.ready(self._runtime.status_line())
        self._log.info("agent_ready", services=len(self._entries))

    async def _keep_running(self, entry: _Supervised) -> None:
        name = entry.service.name
        while not self._runtime.stopping.is_set():
            entry.state = "running"
            self._runtime.state_changed()
            try:
                await entry.service.run(entry.progress)
            except Exception as exc:  # CancelledError is a BaseException: it passes through
                if self._runtime.stopping.is_set():
                    self._log.info("service_failed_while_stopping", service=name, error=type(exc).__name__)
                    break
                entry.last_error = type(exc).__name__
                # exc_info: the traceback names code locations; services must keep secrets out of messages.
                self._log.error("service_failed", service=name, error=type(exc).__name__, exc_info=exc)
            else:
                if self._runtime.stopping.is_set():
                    break
                entry.last_error = "returned"
                self._log.error("service_returned", service=name)
            now = self._clock()
            entry.failures.append(now)
            while entry.failures and now - entry.failures[0] > self._policy.window_s:
                entry.failures.popleft()
            if len(entry.failures) > self._policy.max_restarts:
                entry.state = "failed"
                self._gave_up.append(name)
                self._log.critical(
                    "service_gave_up",
                    service=name,
                    failures=len(entry.failures),
                    window_s=self._policy.window_s,
                )
                self._runtime.request_stop(f"service {name} keeps failing")
                return
            delay = self._policy.backoff(len(entry.failures), self._rng)
            entry.state = "backoff"
            self._runtime.status["services"] = self.summary()
            self._runtime.state_changed()
            self._log.warning("service_restart_scheduled", service=name, delay_s=round(delay, 3))
            await asyncio.sleep(delay)
            entry.restarts += 1
            entry.progress.reset()
        entry.state = "stopped"

    async def _stop_services(self, tasks: list[asyncio.Task[None]]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._stop_timeout_s
        for entry, task in reversed(list(zip(self._entries, tasks, strict=True))):
            if task.done():
                continue
            task.cancel()
            remaining = max(0.0, deadline - loop.time())
            done, _ = await asyncio.wait([task], timeout=remaining)
            if not done:
                self._log.error("service_stop_timeout", service=entry.service.name)
            entry.state = "stopped" if entry.state != "failed" else "failed"
