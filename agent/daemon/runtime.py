"""The runtime every service receives in its constructor: config, state dir, identity, status, stop event.

It is also the single place where the device state is assembled (:meth:`Runtime.state_snapshot`): the
state reporter writes it to ``<state_dir>/state.json`` and the control link publishes the same dict on
the retained MQTT state topic. Services contribute with :meth:`Runtime.update_state`; the supervisor
plugs in the health of every service.
"""

from __future__ import annotations

__all__ = ["HealthSource", "Runtime"]

import asyncio
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from agent import __version__
from agent.config import AgentConfig

HealthSource = Callable[[], dict[str, dict[str, Any]]]

_RESERVED = frozenset({"device", "health", "agent", "updated_at"})


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Runtime:
    """Shared context of one agent process.

    Attributes:
        config: the validated local configuration.
        state_dir: where persisted state lives (created mode 0700 by ``agent.daemon.main``).
        device_id: ``[device] id``.
        logger: a structlog logger (the daemon binds the device id in the logging context).
        status: fragments of systemd's one-line ``STATUS=`` (key -> short text); services may set their own.
        stopping: set once the agent is shutting down (SIGTERM/SIGINT or a service that gave up).
    """

    def __init__(self, config: AgentConfig, state_dir: Path, *, logger: Any = None) -> None:
        self.config = config
        self.state_dir = state_dir
        self.device_id = config.device.id
        self.logger: Any = logger if logger is not None else structlog.get_logger()
        self.status: dict[str, str] = {}
        self.stopping = asyncio.Event()
        self.started_at = _utc_now()
        self._started_mono = time.monotonic()
        self._state: dict[str, Any] = {
            "online": False,
            "applied": {"root": None, "policy": None, "config": None},
        }
        self._health_source: HealthSource | None = None
        self._state_changed = asyncio.Event()
        self._stop_callbacks: list[Callable[[str], None]] = []
        self._sources: dict[str, Callable[[], Any]] = {}
        self.exit_code: int | None = None  # set by a stop that asks for a specific exit code

    # -- device state -------------------------------------------------------------------------------
    def update_state(self, **fields: Any) -> None:
        """Merge top-level fields into the reported state and wake the state reporter.

        ``applied`` is merged per kind (``update_state(applied={"policy": 7})``); any other field replaces
        its old value (``online=True``, ``identity={...}``, ``audit_head={...}``, ``inventory=[...]``).
        Values must be JSON-serialisable and must never carry keys or personal data. Call it on the
        event loop (from a worker thread: ``loop.call_soon_threadsafe(runtime.update_state, ...)``).

        Raises:
            ValueError: a reserved field (``device``, ``health``, ``agent``, ``updated_at``).
        """
        bad = _RESERVED.intersection(fields)
        if bad:
            raise ValueError(f"state fields {sorted(bad)} are maintained by the daemon itself")
        for key, value in fields.items():
            if key == "applied":
                self._state["applied"] = {**self._state["applied"], **dict(value)}
            else:
                self._state[key] = value
        self._state_changed.set()

    def state_changed(self) -> None:
        """Ask the state reporter to write the state now (e.g. a service's health changed)."""
        self._state_changed.set()

    async def wait_state_changed(self, within_s: float) -> bool:
        """Wait until the state changes or ``within_s`` seconds pass; True when it changed."""
        try:
            async with asyncio.timeout(within_s):
                await self._state_changed.wait()
        except TimeoutError:
            return False
        self._state_changed.clear()
        return True

    def add_state_source(self, name: str, source: Callable[[], Any]) -> None:
        """A field read live at each snapshot (e.g. ``media``: pipeline counters move every frame)."""
        if name in _RESERVED:
            raise ValueError(f"state field {name!r} is maintained by the daemon itself")
        self._sources[name] = source

    def set_health_source(self, source: HealthSource | None) -> None:
        """The supervisor's per-service health (``{name: {"state", "restarts", ...}}``)."""
        self._health_source = source
        self._state_changed.set()

    def state_snapshot(self) -> dict[str, Any]:
        """The device state as a JSON-ready dict (a fresh copy each call).

        Keys: ``device``, ``online``, ``applied`` (version per document kind), ``health`` (per service:
        state, restarts, seconds since last progress), ``restarts`` (total), ``agent`` (version, pid,
        start time, uptime), ``updated_at``, plus whatever services added with :meth:`update_state`.
        """
        health = self._health_source() if self._health_source is not None else {}
        snapshot: dict[str, Any] = {
            "device": self.device_id,
            **{k: (dict(v) if isinstance(v, dict) else v) for k, v in self._state.items()},
            **{name: source() for name, source in self._sources.items()},
            "health": health,
            "restarts": sum(int(h.get("restarts", 0)) for h in health.values()),
            "agent": {
                "version": __version__,
                "pid": os.getpid(),
                "started_at": self.started_at,
                "uptime_s": round(time.monotonic() - self._started_mono, 1),
                "stopping": self.stopping.is_set(),
            },
            "updated_at": _utc_now(),
        }
        return snapshot

    # -- status line --------------------------------------------------------------------------------
    def status_line(self) -> str:
        """systemd's ``STATUS=`` text: the ``status`` fragments joined, in insertion order."""
        return "; ".join(f"{k} {v}" for k, v in self.status.items())

    def request_stop(self, reason: str = "requested", *, exit_code: int | None = None) -> None:
        """Begin a graceful stop (idempotent). Use this rather than setting ``stopping`` directly.

        ``exit_code``: the process exits with it after a clean stop (``restart_agent``: a code
        systemd restarts).
        """
        if not self.stopping.is_set():
            self.exit_code = exit_code
            self.logger.info("agent_stop_requested", reason=reason)
            self.stopping.set()
            for callback in self._stop_callbacks:
                callback(reason)

    def on_stop(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` once when a stop is requested (the daemon arms its stop deadline)."""
        self._stop_callbacks.append(callback)
