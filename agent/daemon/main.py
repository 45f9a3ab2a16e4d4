"""``roomagent run``: runtime, the room (:func:`agent.daemon.room.build_room`), signals, supervisor.

The room's parts and their wiring live in one place, the composition root :mod:`agent.daemon.room`;
this module only runs what it built.
"""

from __future__ import annotations

__all__ = [
    "StopDeadline",
    "build_runtime",
    "prepare_state_dir",
    "run",
    "serve",
]

import asyncio
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from agent.config import AgentConfig
from agent.daemon.room import RoomIncomplete, build_room
from agent.daemon.runtime import Runtime
from agent.daemon.sdnotify import Notifier, watchdog_interval
from agent.daemon.supervisor import EXIT_GAVE_UP, EXIT_OK, Supervisor
from agent.errors import StateError
from agent.logs import configure_logging
from agent.persist import remove_stale_temp_files
from agent.service import Service

EXIT_CONFIG = 2  # the unit's RestartPreventExitStatus: restarting does not fix a configuration

# systemd's default TimeoutStopSec is 90 s; we promise 5 s. Past this the process exits non-zero.
STOP_DEADLINE_S = 5.0


def prepare_state_dir(path: Path) -> Path:
    """Create the state directory (mode 0700: only the agent reads its state) and return it.

    Raises:
        StateError: it cannot be created or is not a directory.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.is_dir():
            raise StateError(str(path), "not a directory")
        # mkdir's mode is filtered by the umask and ignored for an existing directory: enforce it.
        if path.stat().st_mode & 0o077:
            path.chmod(0o700)
        # A crash between write and rename leaves a temp file; the real file is intact (old version).
        remove_stale_temp_files(path)
    except OSError as exc:
        raise StateError(str(path), f"cannot create state directory: {exc.strerror or exc}") from exc
    return path


def build_runtime(config: AgentConfig) -> Runtime:
    """Configure logging (device id bound), create the state directory, return the runtime.

    Raises:
        StateError: the state directory cannot be created.
    """
    configure_logging(config.log.level, config.log.format)
    structlog.contextvars.bind_contextvars(device=config.device.id)
    state_dir = prepare_state_dir(config.state_dir())
    return Runtime(config, state_dir)


class StopDeadline:
    """Ends the process with exit 1 if a stop takes longer than ``seconds`` (default 5 s).

    A thread timer fires even if a misbehaving service blocks the event loop, or a worker thread keeps
    ``asyncio.run()`` from returning. Only ``run()`` (the process) uses one: in-process callers of
    :func:`serve` (tests, simulations) must not be ``os._exit``-ed.
    """

    def __init__(self, log: Any, seconds: float = STOP_DEADLINE_S) -> None:
        self._log = log
        self._seconds = seconds
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def arm(self, _reason: str = "") -> None:
        with self._lock:
            if self._timer is None:
                self._timer = threading.Timer(self._seconds, self._expire)
                self._timer.daemon = True
                self._timer.start()

    def cancel(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()

    def _expire(self) -> None:
        self._log.critical("stop_deadline_exceeded", deadline_s=self._seconds)
        sys.stdout.flush()
        os._exit(EXIT_GAVE_UP)


async def serve(
    runtime: Runtime,
    services: list[Service],
    *,
    environ: Mapping[str, str] | None = None,
    deadline: StopDeadline | None = None,
) -> int:
    """Run the supervisor with signal handling and systemd notification; returns the exit code.

    Args:
        runtime: the runtime the services were built with.
        services: in start order.
        environ: where ``NOTIFY_SOCKET`` / ``WATCHDOG_USEC`` come from (default ``os.environ``).
        deadline: armed when a stop begins and when this returns (process use only).
    """
    env = os.environ if environ is None else environ
    notifier = Notifier(env)
    loop = asyncio.get_running_loop()
    log = runtime.logger

    def on_signal(signame: str) -> None:
        if runtime.stopping.is_set():
            log.warning("second_stop_signal", signal=signame)
            return
        runtime.request_stop(signame)

    if deadline is not None:
        runtime.on_stop(deadline.arm)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    supervisor = Supervisor(runtime, services, notifier=notifier, watchdog_interval=watchdog_interval(env))
    try:
        return await supervisor.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        notifier.close()
        if deadline is not None:
            deadline.arm()  # bounds what is left: asyncio.run() waits for executor threads


def run(
    config: AgentConfig, *, source: str = "built-in defaults", fault_steps: tuple[object, ...] = ()
) -> int:
    """``roomagent run`` after the config was validated: returns the process exit code."""
    runtime = build_runtime(config)
    runtime.logger.info(
        "agent_starting",
        config=source,
        state_dir=str(runtime.state_dir),
        hal=config.hal.backend,
        mqtt="configured" if config.mqtt.endpoints else "offline",
    )
    try:
        room = build_room(config, runtime, fault_steps=fault_steps)
    except RoomIncomplete as exc:
        # A command of the schema without a handler: fail closed, before anything runs.
        runtime.logger.critical("room_incomplete", problem=exc.problem)
        print(f"error: room incomplete: {exc.problem}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception as exc:  # a sub-system that cannot even be built (bad lab key file, sink, ...)
        runtime.logger.critical("service_build_failed", error=type(exc).__name__, exc_info=exc)
        return EXIT_GAVE_UP
    deadline = StopDeadline(runtime.logger)
    try:
        code = asyncio.run(serve(runtime, room.services, deadline=deadline))
        return runtime.exit_code if code == EXIT_OK and runtime.exit_code is not None else code
    except Exception as exc:  # a bug in the daemon itself (not a service): exit non-zero, loudly
        runtime.logger.critical("agent_crashed", error=type(exc).__name__, exc_info=exc)
        return EXIT_GAVE_UP
    finally:
        deadline.cancel()
        sys.stdout.flush()
