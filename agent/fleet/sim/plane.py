"""The simulated management plane: starts the room workers, publishes one signed group policy and
timestamps every room's signed ack as it arrives (on an otherwise idle event loop)."""

from __future__ import annotations

__all__ = ["run_fleet_sim"]

import asyncio
import base64
import contextlib
import json
import os
import secrets
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

from agent.fleet.sim.keys import FleetKeys
from agent.fleet.sim.result import FleetSimError, FleetSimResult
from agent.fleet.sim.rooms import importlib_find, raise_nofile


class _Observer:
    """The management plane's view: retained states (who is online) and acks of the pushed version."""

    def __init__(self, prefix: str, devices: set[str]) -> None:
        self.prefix = prefix
        self.devices = devices
        self.online: set[str] = set()
        self.acks: dict[str, tuple[float, str, str]] = {}  # device -> (monotonic, status, reason)
        self.version: int | None = None
        self.all_online = asyncio.Event()
        self.all_acked = asyncio.Event()
        self.malformed = 0

    def handle(self, topic: str, payload: bytes, now: float) -> None:
        parts = topic.split("/")
        device = parts[-2] if len(parts) >= 2 else ""
        if device not in self.devices:
            return
        if parts[-1] == "state":
            try:
                state = json.loads(payload) if payload else {}
            except ValueError:
                self.malformed += 1
                return
            if state.get("online") is True:
                self.online.add(device)
                if len(self.online) == len(self.devices):
                    self.all_online.set()
            return
        if parts[-1] == "ack" and self.version is not None:
            try:
                envelope = json.loads(payload)
                ack = json.loads(base64.b64decode(envelope["payload"]))
            except (ValueError, KeyError, TypeError):
                self.malformed += 1
                return
            if ack.get("doc_kind") != "policy" or ack.get("doc_version") != self.version:
                return
            if device not in self.acks:
                self.acks[device] = (now, str(ack.get("status")), str(ack.get("reason")))
                if len(self.acks) == len(self.devices):
                    self.all_acked.set()


async def run_fleet_sim(
    rooms: int,
    broker_url: str,
    *,
    timeout_s: float = 120.0,
    connect_rate: float = 500.0,
    prefix: str = "roomagent/v1",
    workdir: Path | None = None,
    workers: int | None = None,
) -> FleetSimResult:
    """Run the simulation (see the module docstring) and return what it measured.

    The rooms run in ``workers`` child processes (default: one per CPU), so that the plane here, which
    timestamps each ack as it arrives, is not queued behind the rooms' own work on one event loop.

    Raises:
        FleetSimError: the control plane is not built, the broker is unreachable, or rooms never came up.
    """
    import aiomqtt

    if importlib_find("agent.control.service") is None:
        raise FleetSimError("fleet-sim needs the control plane (agent.control.service), not built here")
    parts = urlsplit(broker_url)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise FleetSimError("fleet-sim speaks plain mqtt://HOST:PORT on loopback")
    raise_nofile(rooms + 256)
    workers = max(1, min(rooms, workers or os.cpu_count() or 1))
    keys = FleetKeys.generate()
    group = f"fleetsim-{secrets.token_hex(4)}"
    devices = {f"sim-{i:05d}" for i in range(rooms)}
    observer = _Observer(prefix, devices)
    version = 1
    worker_reports: list[dict[str, int]] = []

    with contextlib.ExitStack() as stack:
        base = (
            Path(workdir)
            if workdir
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fleet-sim-")))
        )
        root_path = base / "root.json"
        root_path.write_bytes(keys.root_envelope())

        async with aiomqtt.Client(
            parts.hostname,
            parts.port or 1883,
            identifier=f"fleet-sim-plane-{group}",
            protocol=aiomqtt.ProtocolVersion.V5,
            max_queued_incoming_messages=10 * rooms + 1000,
        ) as plane:
            await plane.subscribe(f"{prefix}/devices/+/state", qos=1)
            await plane.subscribe(f"{prefix}/devices/+/ack", qos=1)

            async def listen() -> None:
                async for message in plane.messages:
                    payload = message.payload if isinstance(message.payload, bytes) else b""
                    observer.handle(str(message.topic), payload, time.monotonic())

            listener = asyncio.create_task(listen(), name="fleet-sim.plane.listen")
            procs: list[asyncio.subprocess.Process] = []
            t0 = t_connect = time.monotonic()
            connect_s = 0.0
            try:
                share, extra = divmod(rooms, workers)
                first = 0
                for w in range(workers):
                    count = share + (1 if w < extra else 0)
                    procs.append(
                        await asyncio.create_subprocess_exec(
                            sys.executable,
                            "-m",
                            "agent.fleet.sim",
                            "--worker",
                            "--broker",
                            broker_url,
                            "--group",
                            group,
                            "--root",
                            str(root_path),
                            "--workdir",
                            str(base),
                            "--prefix",
                            prefix,
                            "--first",
                            str(first),
                            "--count",
                            str(count),
                            "--connect-rate",
                            str(connect_rate / workers),
                            stdin=asyncio.subprocess.PIPE,
                            stdout=asyncio.subprocess.PIPE,
                        )
                    )
                    first += count
                try:
                    async with asyncio.timeout(timeout_s):
                        await observer.all_online.wait()
                except TimeoutError:
                    raise FleetSimError(
                        f"only {len(observer.online)} of {rooms} rooms came online within {timeout_s} s"
                    ) from None
                connect_s = time.monotonic() - t_connect

                envelope = keys.policy_envelope(version=version, group=group)
                observer.version = version
                t0 = time.monotonic()
                await plane.publish(f"{prefix}/groups/{group}/desired/policy", envelope, qos=1, retain=True)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout_s):
                        await observer.all_acked.wait()
                # Clean the broker: the retained group document must not outlive the simulation.
                await plane.publish(f"{prefix}/groups/{group}/desired/policy", b"", qos=1, retain=True)
            finally:
                for proc in procs:
                    if proc.stdin is not None:
                        proc.stdin.close()
                for proc in procs:
                    try:
                        async with asyncio.timeout(60):
                            out, _ = await proc.communicate()
                        worker_reports.append(json.loads(out.decode().strip().splitlines()[-1]))
                    except (TimeoutError, ValueError, IndexError):
                        with contextlib.suppress(ProcessLookupError):
                            proc.kill()
                        await proc.wait()
                        worker_reports.append({"exit_nonzero": 0, "stuck": -1})
                listener.cancel()
                await asyncio.wait([listener])

            for device in devices:  # retained states of the simulated rooms go too
                await plane.publish(f"{prefix}/devices/{device}/state", b"", qos=1, retain=True)

    applied = {d: t for d, (t, status, _) in observer.acks.items() if status == "applied"}
    rejected = Counter(
        f"{status}:{reason}" for (_, status, reason) in observer.acks.values() if status != "applied"
    )
    ack_ms = tuple((t - t0) * 1000 for t in applied.values())
    all_acked_s = max(ack_ms) / 1000 if len(applied) == rooms else None
    return FleetSimResult(
        rooms=rooms,
        acked=len(applied),
        ack_ms=ack_ms,
        all_acked_s=all_acked_s,
        connect_s=connect_s,
        rejected=dict(rejected),
        broker=broker_url,
        version=version,
        extra={
            "workers": workers,
            "malformed_messages": observer.malformed,
            "rooms_exit_nonzero": sum(r.get("exit_nonzero", 0) for r in worker_reports),
            "rooms_stuck_at_stop": sum(r.get("stuck", 0) for r in worker_reports),
        },
    )
