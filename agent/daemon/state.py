"""The state reporter: writes the device state to ``<state_dir>/state.json``, atomically.

It writes every ``[state] report_interval_s`` seconds and as soon as something changes
(:meth:`~agent.daemon.runtime.Runtime.update_state`, a service restart or stall), and once more on stop
with ``online: false`` and ``agent.stopping: true`` so the file never claims a dead agent is online.
The control link publishes the same dict (:meth:`~agent.daemon.runtime.Runtime.state_snapshot`) on the
retained MQTT state topic.
"""

from __future__ import annotations

__all__ = ["STATE_FILE", "StateReporter"]

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from agent.daemon.runtime import Runtime
from agent.errors import StateError
from agent.persist import atomic_write_json
from agent.service import Progress

STATE_FILE = "state.json"
MIN_SPACING_S = 0.25


class StateReporter:
    """Service ``state_reporter``.

    Args:
        runtime: source of the snapshot.
        interval_s: write at least this often (seconds).
    """

    name = "state_reporter"

    def __init__(
        self,
        runtime: Runtime,
        *,
        interval_s: float | None = None,
        document: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._runtime = runtime
        # The room passes the control plane's retained state document, so state.json mirrors the
        # broker's copy; alone (tests, no control plane) the runtime's snapshot is the state.
        self._document = document if document is not None else runtime.state_snapshot
        self._interval_s = interval_s if interval_s is not None else runtime.config.state.report_interval_s
        self.path: Path = runtime.state_dir / STATE_FILE
        self.writes = 0
        self._lock = threading.Lock()
        self._log = structlog.get_logger()

    def _write(self, snapshot: dict[str, Any]) -> None:
        # One writer at a time: a cancelled to_thread write may still be running when the final one starts.
        with self._lock:
            atomic_write_json(self.path, snapshot)
            self.writes += 1

    async def run(self, progress: Progress) -> None:
        # Beat well within the stall timeout even when the write interval is longer: idling between
        # writes is not a hang.
        turn_s = min(self._interval_s, self._runtime.config.supervisor.stall_timeout_s / 3)
        loop = asyncio.get_running_loop()
        progress.beat()  # up: READY=1 need not wait for the first fsync
        try:
            while True:
                snapshot = self._document()
                try:
                    # fsync can take a while on an SD card: keep it off the event loop.
                    await asyncio.to_thread(self._write, snapshot)
                except StateError as exc:
                    # A full disk must not stop the agent: the old file stays intact; retry next turn.
                    self._log.error("state_write_failed", path=exc.path, reason=exc.reason)
                progress.beat()
                written = loop.time()
                next_write = written + self._interval_s
                while not await self._runtime.wait_state_changed(
                    max(0.0, min(turn_s, next_write - loop.time()))
                ):
                    progress.beat()
                    if loop.time() >= next_write:
                        break
                # A burst of changes becomes one write: at most one fsync per MIN_SPACING_S (flash wear).
                await asyncio.sleep(max(0.0, written + min(MIN_SPACING_S, self._interval_s) - loop.time()))
        except asyncio.CancelledError:
            # On stop flush the final state, offline, then let the cancellation propagate.
            final = self._document()
            final["online"] = False
            try:
                self._write(final)  # waits for a write still running in its thread (the lock)
            except StateError as exc:
                self._log.error("state_write_failed", path=exc.path, reason=exc.reason)
            else:
                self._log.info("state_flushed", path=str(self.path))
            raise
