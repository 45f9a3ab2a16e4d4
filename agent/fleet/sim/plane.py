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
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from agent.fleet.sim.keys import FleetKeys
from agent.fleet.sim.result import FleetSimError, FleetSimResult, percentile
from agent.fleet.sim.rooms import importlib_find, raise_nofile


class _Observer:
    """The management plane's view: retained states (who is online) and acks of the pushed version."""

    def __init__(self, prefix: str, devices: set[str]) -> None:
        self.prefix = prefix
        self.devices = devices
        self.online: set[str] = set()
        self.online_at: dict[str, float] = {}  # device -> monotonic time of its first online state
        self.first_ack = asyncio.Event()
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
                self.online_at.setdefault(device, now)
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
                self.first_ack.set()
                if len(self.acks) == len(self.devices):
                    self.all_acked.set()


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (``/proc/PID/stat`` fields 14 and 15)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> tuple[float | None, float | None]:
    """(current RSS, peak RSS) in MiB from ``/proc/PID/status``."""
    out: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0]) / 1024
    except (OSError, ValueError, IndexError):
        return None, None
    return out.get("VmRSS"), out.get("VmHWM")


def _applied_counts(base: Path, devices: set[str], version: int) -> Counter[str]:
    """How often each room's audit log records the pushed policy as applied (exactly once is right)."""
    counts: Counter[str] = Counter()
    for device in devices:
        path = base / device / "audit" / "audit.jsonl"
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if '"applied"' not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if (
                entry.get("event") == "applied"
                and entry.get("kind") == "policy"
                and entry.get("version") == version
            ):
                counts[device] += 1
    return counts


async def run_fleet_sim(
    rooms: int,
    brokers: list[str],
    *,
    protocol: str = "5",
    timeout_s: float = 120.0,
    connect_rate: float = 500.0,
    prefix: str = "roomagent/v1",
    workdir: Path | None = None,
    workers: int | None = None,
    broker_pids: list[int] | None = None,
    kill_node: Callable[[], None] | None = None,
    plane_endpoint: int = 0,
) -> FleetSimResult:
    """Run the simulation (see the module docstring) and return what it measured.

    The rooms run in ``workers`` child processes (default: one per CPU), so that the plane here, which
    timestamps each ack as it arrives, is not queued behind the rooms' own work on one event loop.
    Room ``i`` connects to ``brokers[i % n]`` first (the rest are its failover endpoints); the plane to
    ``brokers[plane_endpoint]``. ``kill_node`` is called as soon as the first room acked the push (the
    middle of the roll-out). ``broker_pids`` are sampled for CPU time and memory.

    Raises:
        FleetSimError: the control plane is not built, the broker is unreachable, or rooms never came up.
    """
    import aiomqtt

    if importlib_find("agent.control.service") is None:
        raise FleetSimError("fleet-sim needs the control plane (agent.control.service), not built here")
    parts = urlsplit(brokers[plane_endpoint])
    if any(urlsplit(b).scheme != "mqtt" or not urlsplit(b).hostname for b in brokers):
        raise FleetSimError("fleet-sim speaks plain mqtt://HOST:PORT on loopback")
    pids = list(broker_pids or [])
    cpu_start = [_cpu_s(pid) for pid in pids]
    raise_nofile(rooms + 256)
    workers = max(1, min(rooms, workers or os.cpu_count() or 1))
    keys = FleetKeys.generate()
    group = f"fleetsim-{secrets.token_hex(4)}"
    devices = {f"sim-{i:05d}" for i in range(rooms)}
    observer = _Observer(prefix, devices)
    version = 1
    killed_s = 0.0
    killed_at_acks = 0
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
            parts.hostname or "127.0.0.1",
            parts.port or 1883,
            identifier=f"fleet-sim-plane-{group}",
            protocol=aiomqtt.ProtocolVersion.V5 if protocol == "5" else aiomqtt.ProtocolVersion.V311,
            max_queued_incoming_messages=10 * rooms + 1000,
            timeout=60,
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
                            ",".join(brokers),
                            "--protocol",
                            protocol,
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
                if kill_node is not None:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(timeout_s):
                            await observer.first_ack.wait()
                    killed_at_acks = len(observer.acks)
                    kill_node()
                    killed_s = time.monotonic() - t0
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

        applied_counts = _applied_counts(base, devices, version)
    cpu_end = [_cpu_s(pid) for pid in pids]
    memory = [_rss_mib(pid) for pid in pids]
    applied = {d: t for d, (t, status, _) in observer.acks.items() if status == "applied"}
    connect_ms = sorted((t - t_connect) * 1000 for t in observer.online_at.values())
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
        broker=",".join(brokers),
        version=version,
        extra={
            "workers": workers,
            "malformed_messages": observer.malformed,
            "rooms_exit_nonzero": sum(r.get("exit_nonzero", 0) for r in worker_reports),
            "rooms_stuck_at_stop": sum(r.get("stuck", 0) for r in worker_reports),
            "protocol": protocol,
            "connect_p50_ms": round(percentile(connect_ms, 50), 1) if connect_ms else None,
            "connect_p99_ms": round(percentile(connect_ms, 99), 1) if connect_ms else None,
            "applied_once": sum(1 for d in devices if applied_counts[d] == 1),
            "applied_twice_or_more": sum(1 for d in devices if applied_counts[d] > 1),
            "never_applied": sum(1 for d in devices if applied_counts[d] == 0),
            "node_killed_after_s": None if kill_node is None else round(killed_s, 3),
            "node_killed_at_acks": None if kill_node is None else killed_at_acks,
            "broker_cpu_s": [
                None if a is None or b is None else round(b - a, 2)
                for a, b in zip(cpu_start, cpu_end, strict=True)
            ],
            "broker_rss_mib": [None if m[0] is None else round(m[0], 1) for m in memory],
            "broker_peak_rss_mib": [None if m[1] is None else round(m[1], 1) for m in memory],
        },
    )
