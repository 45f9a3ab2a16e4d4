"""Soak: the agent on the sim HAL for a long time with pushes, key rotations and faults (``make soak``).

``roomagent bench soak --json -- --seconds 1800`` (``make soak``; a bare ``bench soak`` runs 60 s)
runs the agent's own services (``build_room`` under a real
:class:`~agent.daemon.supervisor.Supervisor`, exactly what ``roomagent run`` starts) in this process
against a throw-away Mosquitto, with media to a loopback RTP port when the sim HAL is present, and
meanwhile:

- pushes a signed ``config`` or ``policy`` document every ``--push-every`` seconds (versions increase;
  each must be acked ``applied`` exactly once);
- rotates the meeting keys every ``--rotate-every`` seconds (a customer-signed ``keys`` document sealed
  to the device's published HPKE key, as ``roomctl meeting start`` does);
- injects a fault every ``--fault-every`` seconds, in turn: broker restart, broker SIGKILL + restart,
  and, where the sim HAL has fault switches, camera unplug/replug and encoder failure;
- samples RSS, open file descriptors, asyncio tasks and threads every ``--sample-every`` seconds.

The figures: RSS growth (median of the last tenth of the run minus the median of the first tenth
after a warm-up; goal < 10 MB), fd/task/thread counts (medians of the same windows, and the maximum),
pushes applied, documents applied twice (from the agent's audit log), faults injected. Measuring
in-process is what makes the task count exact; the pushing client and the sampler are a constant few
hundred KiB beside the agent.
"""

from __future__ import annotations

__all__ = ["SoakPlan", "run"]

import argparse
import asyncio
import base64
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.bench import Result, result
from agent.daemon.room import build_room
from agent.fleet.sim import FleetKeys
from agent.media.service import Media

_PREFIX = "roomagent/v1"
_DEVICE = "soak-room"
_GROUP = "soak"


@dataclass(frozen=True, slots=True, kw_only=True)
class SoakPlan:
    seconds: float = 1800.0
    push_every_s: float = 15.0
    rotate_every_s: float = 30.0
    fault_every_s: float = 60.0
    sample_every_s: float = 5.0
    warmup_s: float = 30.0
    media: bool = True


@dataclass(slots=True)
class _Sample:
    t: float
    rss_kib: int
    fds: int
    tasks: int
    threads: int


@dataclass(slots=True)
class _Tally:
    pushed: dict[str, int] = field(default_factory=Counter)
    applied: Counter[tuple[str, int]] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    faults_skipped: Counter[str] = field(default_factory=Counter)
    rotations: int = 0
    rtp_packets: int = 0
    hpke: dict[str, str] | None = None
    state_online_seen: int = 0


def _rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _sample(t0: float) -> _Sample:
    return _Sample(
        t=time.monotonic() - t0,
        rss_kib=_rss_kib(),
        fds=len(os.listdir("/proc/self/fd")),
        tasks=len(asyncio.all_tasks()),
        threads=threading.active_count(),
    )


def _sim_hal_available() -> bool:
    try:
        import hal
    except ImportError:
        return False
    return hasattr(hal, "open_inventory") and hasattr(hal, "encoder_factory")


class _Rtp(asyncio.DatagramProtocol):
    def __init__(self, tally: _Tally) -> None:
        self.tally = tally

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.tally.rtp_packets += 1


def _agent_config(workdir: Path, broker_url: str, root_path: Path, rtp_port: int | None) -> Any:
    from agent.config import parse_config

    data: dict[str, Any] = {
        "device": {"id": _DEVICE, "groups": [_GROUP]},
        "mqtt": {"url": broker_url, "prefix": _PREFIX},
        "trust": {"root": str(root_path)},
        "state": {"dir": str(workdir / "state"), "report_interval_s": 5.0},
        "log": {"level": "warning"},
        "hal": {"backend": "sim", "cameras": [{"id": "cam0", "width": 320, "height": 240, "fps": 15}]},
        "media": {"enabled": rtp_port is not None},
        "supervisor": {"max_restarts": 50, "restart_window_s": 60.0, "backoff_max_s": 5.0},
    }
    if rtp_port is not None:
        from agent.media.key_source import write_lab_key

        lab = workdir / "lab.key"
        write_lab_key(lab)
        data["media"]["sink"] = f"rtp://127.0.0.1:{rtp_port}"
        data["e2ee"] = {"lab_key_file": str(lab)}
    return parse_config(data, source="soak")


async def _soak(plan: SoakPlan, workdir: Path) -> dict[str, Any]:

    from agent.control.devbroker import Mosquitto
    from agent.daemon.runtime import Runtime
    from agent.daemon.supervisor import Supervisor

    tally = _Tally()
    keys = FleetKeys.generate()
    broker = Mosquitto(workdir / "broker")
    broker.start()
    root_path = workdir / "root.json"
    root_path.write_bytes(keys.root_envelope())
    loop = asyncio.get_running_loop()
    transport = None
    rtp_port = None
    if plan.media and _sim_hal_available():
        transport, _ = await loop.create_datagram_endpoint(lambda: _Rtp(tally), local_addr=("127.0.0.1", 0))
        rtp_port = transport.get_extra_info("sockname")[1]
    config = _agent_config(workdir, broker.url, root_path, rtp_port)
    (workdir / "state").mkdir(mode=0o700, exist_ok=True)
    runtime = Runtime(config, workdir / "state")
    samples: list[_Sample] = []
    t0 = time.monotonic()
    try:
        async with asyncio.TaskGroup() as tg:
            room = build_room(config, runtime)
            agent = tg.create_task(Supervisor(runtime, room.services).run(), name="soak.agent")
            plane = tg.create_task(_plane(plan, broker, keys, tally, runtime, room.media), name="soak.plane")
            while time.monotonic() - t0 < plan.seconds and not agent.done():
                samples.append(_sample(t0))
                await asyncio.sleep(plan.sample_every_s)
            samples.append(_sample(t0))
            plane.cancel()
            runtime.request_stop("soak done")
            exit_code = await agent
    finally:
        if transport is not None:
            transport.close()
        broker.stop()
    audit: Counter[tuple[Any, Any]] = Counter()
    audit_path = workdir / "state" / "audit" / "audit.jsonl"
    if audit_path.exists():
        for line in audit_path.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("event") == "applied":
                audit[(entry.get("kind"), entry.get("version"))] += 1
    report = _report(
        plan, samples, tally, exit_code, media=rtp_port is not None, elapsed=time.monotonic() - t0
    )
    # Exactly once is the agent's own record: one "applied" audit entry per version (an ack may repeat:
    # a redelivered document is acked again with its recorded outcome).
    report["applied_in_audit"] = len(audit)
    report["applied_twice_in_audit"] = sum(1 for n in audit.values() if n > 1)
    return report


async def _plane(
    plan: SoakPlan, broker: Any, keys: FleetKeys, tally: _Tally, runtime: Any, media: Media
) -> None:
    """The management plane: pushes, key rotations and faults on their schedules, acks counted."""
    import aiomqtt

    version = {"config": 0, "policy": 0, "keys": 0}
    next_push = next_rotate = time.monotonic() + 5.0
    next_fault = time.monotonic() + plan.fault_every_s
    faults = ["broker_restart", "broker_kill", "camera_unplug", "encoder_failure"]
    fault_index = 0
    while True:
        try:
            async with aiomqtt.Client(
                broker.host, broker.port, identifier="soak-plane", protocol=aiomqtt.ProtocolVersion.V5
            ) as client:
                await client.subscribe(f"{_PREFIX}/devices/{_DEVICE}/ack", qos=1)
                await client.subscribe(f"{_PREFIX}/devices/{_DEVICE}/state", qos=1)
                listener = asyncio.create_task(_listen(client, tally), name="soak.plane.listen")
                try:
                    while True:
                        now = time.monotonic()
                        if now >= next_push:
                            kind = "config" if sum(tally.pushed.values()) % 2 == 0 else "policy"
                            version[kind] += 1
                            await client.publish(
                                f"{_PREFIX}/devices/{_DEVICE}/desired/{kind}",
                                _document(keys, kind, version[kind]),
                                qos=1,
                                retain=True,
                            )
                            tally.pushed[kind] += 1
                            next_push = now + plan.push_every_s
                        if now >= next_rotate and tally.hpke:
                            version["keys"] += 1
                            await client.publish(
                                f"{_PREFIX}/devices/{_DEVICE}/keys",
                                _keys_document(keys, version["keys"], tally.hpke),
                                qos=1,
                            )
                            tally.rotations += 1
                            next_rotate = now + plan.rotate_every_s
                        if now >= next_fault:
                            fault = faults[fault_index % len(faults)]
                            fault_index += 1
                            next_fault = now + plan.fault_every_s
                            if fault.startswith("broker"):
                                tally.faults[fault] += 1
                                (broker.kill if fault == "broker_kill" else broker.stop)()
                                await asyncio.sleep(1.0)
                                broker.start()
                                break  # reconnect our own client too
                            if _hal_fault(media, fault):
                                tally.faults[fault] += 1
                            else:
                                tally.faults_skipped[fault] += 1
                        await asyncio.sleep(0.5)
                finally:
                    listener.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await listener
        except aiomqtt.MqttError:
            await asyncio.sleep(0.5)


async def _listen(client: Any, tally: _Tally) -> None:
    async for message in client.messages:
        payload = message.payload if isinstance(message.payload, bytes) else b""
        topic = str(message.topic)
        try:
            if topic.endswith("/state"):
                state = json.loads(payload) if payload else {}
                hpke = (state.get("identity") or {}).get("hpke")
                if isinstance(hpke, dict):
                    tally.hpke = hpke
                continue
            ack = json.loads(base64.b64decode(json.loads(payload)["payload"]))
        except (ValueError, KeyError, TypeError):
            continue
        status = str(ack.get("status"))
        tally.statuses[f"{ack.get('doc_kind')}:{status}:{ack.get('reason')}"] += 1
        if status == "applied":
            tally.applied[(str(ack.get("doc_kind")), int(ack.get("doc_version") or 0))] += 1


def _document(keys: FleetKeys, kind: str, version: int) -> bytes:
    now = datetime.now(UTC)
    if kind == "config":
        body: dict[str, Any] = {"encoder": {"bitrate_kbps": 500 + 100 * (version % 5)}}
    else:
        from agent.schema.policy import DEFAULT_POLICY

        # Alternate "keep" and "tighten" (remote PTZ off): never a weakening, so the fleet key suffices.
        camera = DEFAULT_POLICY.camera.model_copy(update={"remote_ptz": False})
        body = DEFAULT_POLICY.model_copy(update={"camera": camera}).model_dump(mode="json")
    payload = FleetKeys.payload(kind, version, body, now=now, devices=(_DEVICE,))
    return keys.sign(kind, payload, keys.fleet)


def _keys_document(keys: FleetKeys, version: int, hpke: dict[str, str]) -> bytes:
    from agent.privacy.key_packages import seal_meeting

    now = datetime.now(UTC)
    kem = "x25519" if "x25519" in hpke else next(iter(hpke))
    packages = seal_meeting(
        meeting="soak",
        epoch=version,
        suite=4,
        key_expires=(now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        rooms={_DEVICE: hpke},
        kem=kem,
    )
    body = packages[_DEVICE].model_dump(mode="json")
    payload = FleetKeys.payload("keys", version, body, now=now, devices=(_DEVICE,))
    return keys.sign("keys", payload, keys.customer)


def _hal_fault(media: Media, fault: str) -> bool:
    """Flip a sim HAL fault switch (unplug + replug 2 s later, or one encoder failure); False if absent."""
    if not media.pipelines or media.inventory is None:
        return False
    if fault == "camera_unplug":
        faults_of = getattr(media.inventory, "faults", None)
        if faults_of is None:
            return False
        camera = faults_of(media.pipelines[0].camera_id)
        camera.unplug()
        asyncio.get_running_loop().call_later(2.0, camera.replug)
        return True
    # The pipeline's encoder factory carries the sim encoder fault switches (hal.encoder_factory().faults).
    factory = getattr(media.pipelines[0], "_encoders", None)
    switches = getattr(factory, "faults", None)
    if switches is None:
        return False
    switches.fail()
    return True


def _median(values: list[int]) -> float:
    return float(statistics.median(values)) if values else 0.0


def _report(
    plan: SoakPlan, samples: list[_Sample], tally: _Tally, exit_code: int, *, media: bool, elapsed: float
) -> dict[str, Any]:
    steady = [s for s in samples if s.t >= min(plan.warmup_s, plan.seconds / 5)] or samples
    tenth = max(1, len(steady) // 10)
    first, last = steady[:tenth], steady[-tenth:]
    reacks = sum(n - 1 for n in tally.applied.values() if n > 1)
    return {
        "seconds": round(elapsed, 1),
        "samples": len(samples),
        "rss_start_mb": round(_median([s.rss_kib for s in first]) / 1024, 2),
        "rss_end_mb": round(_median([s.rss_kib for s in last]) / 1024, 2),
        "rss_growth_mb": round(
            (_median([s.rss_kib for s in last]) - _median([s.rss_kib for s in first])) / 1024, 2
        ),
        "rss_max_mb": round(max(s.rss_kib for s in samples) / 1024, 2),
        "fds_start": int(_median([s.fds for s in first])),
        "fds_end": int(_median([s.fds for s in last])),
        "fds_max": max(s.fds for s in steady),
        "tasks_start": int(_median([s.tasks for s in first])),
        "tasks_end": int(_median([s.tasks for s in last])),
        "tasks_max": max(s.tasks for s in steady),
        "threads_start": int(_median([s.threads for s in first])),
        "threads_end": int(_median([s.threads for s in last])),
        "pushed": dict(tally.pushed),
        "applied_versions": len(tally.applied),
        "repeated_applied_acks": reacks,
        "ack_statuses": dict(tally.statuses),
        "key_rotations_sent": tally.rotations,
        "faults_injected": dict(tally.faults),
        "faults_unavailable": dict(tally.faults_skipped),
        "media": media,
        "rtp_packets": tally.rtp_packets,
        "agent_exit_code": exit_code,
    }


def run(args: list[str]) -> list[Result]:
    """``roomagent bench soak [-- --seconds N ...]``: run the soak and return its figures."""
    parser = argparse.ArgumentParser(prog="roomagent bench soak")
    # `make soak` asks for 30 minutes (SOAK_SECONDS=1800); a bare `roomagent bench soak` (or `bench all`,
    # `make bench`) runs a one-minute soak so that the benchmark list stays quick.
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", "60")))
    parser.add_argument("--push-every", type=float, default=15.0)
    parser.add_argument("--rotate-every", type=float, default=30.0)
    parser.add_argument("--fault-every", type=float, default=60.0)
    parser.add_argument("--sample-every", type=float, default=5.0)
    parser.add_argument("--no-media", action="store_true")
    ns = parser.parse_args([a for a in args if a != "--"])
    plan = SoakPlan(
        seconds=ns.seconds,
        push_every_s=ns.push_every,
        rotate_every_s=ns.rotate_every,
        fault_every_s=ns.fault_every,
        sample_every_s=ns.sample_every,
        warmup_s=min(30.0, ns.seconds / 5),
        media=not ns.no_media,
    )
    from agent.logs import configure_logging

    configure_logging("error", "json", stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="roomagent-soak-") as tmp:
        report = asyncio.run(_soak(plan, Path(tmp)))
    rss_ok = report["rss_growth_mb"] < 10.0
    return [
        result("soak_rss_growth_mb", report["rss_growth_mb"], "MB", goal="< 10", ok=rss_ok, detail=report),
        result("soak_rss_end_mb", report["rss_end_mb"], "MB", baseline=report["rss_start_mb"]),
        result("soak_fds_end", report["fds_end"], "fds", baseline=report["fds_start"]),
        result("soak_tasks_end", report["tasks_end"], "tasks", baseline=report["tasks_start"]),
        result("soak_threads_end", report["threads_end"], "threads", baseline=report["threads_start"]),
        result(
            "soak_versions_applied",
            report["applied_versions"],
            "documents",
            baseline=float(sum(report["pushed"].values())),
        ),
        result("soak_applied_twice", report["applied_twice_in_audit"], "documents"),
        result("soak_faults_injected", float(sum(report["faults_injected"].values())), "faults"),
    ]
