"""The simulated rooms: each the agent's own services under its own supervisor, many per process.

A worker process (``python -m agent.fleet.sim --worker``) runs a slice of the rooms on its own event
loop until its stdin closes, then prints ``{"exit_nonzero", "stuck"}``. Each room is an
:class:`~agent.config.AgentConfig` (sim HAL, media off, its own state directory, the broker endpoints
and MQTT protocol it was given), a :class:`~agent.daemon.runtime.Runtime` and the services
``roomagent run`` builds, so every room verifies, applies, persists, audits and signs its acks.
"""

from __future__ import annotations

__all__ = ["agent_services", "importlib_find", "raise_nofile", "run_rooms", "worker_entry"]

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
import threading
from pathlib import Path
from typing import Any

from agent.fleet.sim.result import FleetSimError

# Rooms whose supervisor did not return within the stop budget (the worker then exits without waiting).
_STUCK: set[asyncio.Task[int]] = set()


def raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < needed:
        raise FleetSimError(f"need {needed} file descriptors, the hard limit is {hard}: raise ulimit -n")


def _room_config(
    workdir: Path,
    index: int,
    *,
    brokers: list[str],
    protocol: str,
    group: str,
    root_path: Path,
    prefix: str,
) -> Any:
    from agent.config import parse_config

    return parse_config(
        {
            "device": {"id": f"sim-{index:05d}", "groups": [group]},
            # Room i starts on endpoint i mod n and keeps the others as failover: spread over a cluster.
            "mqtt": {
                "urls": [brokers[(index + k) % len(brokers)] for k in range(len(brokers))],
                "protocol": protocol,
                "prefix": prefix,
                # Thousands of rooms share one event loop here: a CONNACK can wait seconds for the loop.
                "connect_timeout_s": 30.0,
            },
            "trust": {"root": str(root_path)},
            "state": {"dir": str(workdir / f"sim-{index:05d}"), "report_interval_s": 60.0},
            "supervisor": {"stall_timeout_s": 180.0},  # beats every report_interval_s; no watchdog here
            "log": {"level": "warning"},
            "hal": {"backend": "sim", "cameras": [{"id": "cam0", "width": 320, "height": 240, "fps": 5}]},
            "media": {"enabled": False},
        },
        source=f"fleet-sim room {index}",
    )


async def run_rooms(
    first: int,
    count: int,
    *,
    brokers: list[str],
    protocol: str,
    group: str,
    root_path: Path,
    workdir: Path,
    prefix: str,
    connect_rate: float,
    stop: asyncio.Event,
    stop_timeout_s: float = 30.0,
) -> dict[str, int]:
    """Run rooms ``first .. first+count-1`` (each the agent's own services under its supervisor) until
    ``stop`` is set; returns ``{"exit_nonzero", "stuck"}`` (rooms that did not stop within the budget are
    left in :data:`_STUCK` for the caller to abandon)."""
    try:
        from agent.daemon.runtime import Runtime
        from agent.daemon.supervisor import Supervisor
    except ModuleNotFoundError as exc:  # pragma: no cover - only while branches land
        raise FleetSimError(f"fleet-sim needs the daemon: {exc}") from exc
    if importlib_find("agent.control.service") is None:
        raise FleetSimError("fleet-sim needs the control plane (agent.control.service), not built here")
    runtimes = []
    for i in range(first, first + count):
        config = _room_config(
            workdir,
            i,
            brokers=brokers,
            protocol=protocol,
            group=group,
            root_path=root_path,
            prefix=prefix,
        )
        state_dir = workdir / f"sim-{i:05d}"
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        runtimes.append(Runtime(config, state_dir))
    # Not one TaskGroup: the supervisors get a bounded stop (below) so that a room that hangs while
    # stopping is counted instead of hanging the simulation.
    supervisors: list[asyncio.Task[int]] = []
    try:
        for n, rt in enumerate(runtimes):
            supervisors.append(
                asyncio.create_task(
                    Supervisor(rt, agent_services(rt)).run(), name=f"fleet-sim.room[{rt.device_id}]"
                )
            )
            if connect_rate > 0 and n % 10 == 9:
                await asyncio.sleep(10 / connect_rate)
        await stop.wait()
    finally:
        for rt in runtimes:
            rt.request_stop("fleet-sim done")
        stuck: set[asyncio.Task[int]] = set()
        if supervisors:
            _, stuck = await asyncio.wait(supervisors, timeout=stop_timeout_s)
        _STUCK.update(stuck)
    codes = [t.result() for t in supervisors if t.done() and not t.cancelled() and t.exception() is None]
    return {"exit_nonzero": sum(1 for c in codes if c != 0), "stuck": len(stuck)}


async def _worker_main(argv: list[str]) -> dict[str, int]:
    """``python -m agent.fleet.sim --worker ...``: run a slice of the rooms until stdin closes."""
    parser = argparse.ArgumentParser(prog="fleet-sim worker")
    for name in ("--broker", "--protocol", "--group", "--root", "--workdir", "--prefix"):
        parser.add_argument(name, required=True)
    parser.add_argument("--first", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--connect-rate", type=float, required=True)
    args = parser.parse_args(argv)
    raise_nofile(2 * args.count + 256)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def wait_for_eof() -> None:
        sys.stdin.buffer.read()  # the coordinator closes our stdin when the measurement is done
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait_for_eof, name="fleet-sim.worker.stdin", daemon=True).start()
    return await run_rooms(
        args.first,
        args.count,
        brokers=args.broker.split(","),
        protocol=args.protocol,
        group=args.group,
        root_path=Path(args.root),
        workdir=Path(args.workdir),
        prefix=args.prefix,
        connect_rate=args.connect_rate,
        stop=stop,
    )


def agent_services(runtime: Any) -> list[Any]:
    """The services ``roomagent run`` starts for ``runtime``: the room built by the composition root."""
    from agent.daemon.room import build_room

    return list(build_room(runtime.config, runtime).services)


def importlib_find(name: str) -> Any:
    import importlib.util

    try:
        return importlib.util.find_spec(name)
    except ModuleNotFoundError:
        return None


def worker_entry() -> None:
    from agent.logs import configure_logging

    configure_logging("error", "json", stream=sys.stderr)
    loop = asyncio.new_event_loop()
    report = loop.run_until_complete(_worker_main(sys.argv[2:]))
    print(json.dumps(report), flush=True)
    if _STUCK:  # a room hangs in its stop: waiting would hang the worker; leave without waiting
        sys.stderr.flush()
        os._exit(0)
    loop.close()
