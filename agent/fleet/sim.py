"""``roomctl fleet-sim``: N rooms' control planes against one broker, one signed group push, ack times.

Each simulated room is the agent's own stack, not a model of it: an :class:`~agent.config.AgentConfig`
(sim HAL, media off, its own state directory), a :class:`~agent.daemon.runtime.Runtime`, the services
``roomagent run`` builds (:func:`agent.daemon.room.build_room`: the state reporter and the control
link from ``agent.control.service``) under a real :class:`~agent.daemon.supervisor.Supervisor`. The rooms
run in ``--workers`` child processes (``python -m agent.fleet.sim --worker``, one per CPU by default),
their state on tmpfs by default (``--state-dir``); the plane below runs in this process on an otherwise
idle event loop so that it timestamps each ack as it arrives. All talk to one MQTT broker.

The measurement is the management plane's view, through the wire contract only (docs/design.md):

1. set up a trust root (root and fleet Ed25519 keys) and write the root envelope every room trusts;
2. start the rooms (paced at ``--connect-rate`` per second) and wait until each has published its
   retained state with ``online: true``;
3. publish ONE signed policy (fleet-signed, tightening) to ``{p}/groups/{g}/desired/policy``, retained,
   QoS 1, and take the time;
4. collect each room's ack on ``{p}/devices/+/ack`` (payload in the device-signed DSSE envelope) and
   record, per room, the time from the publish to its ``applied`` ack.

``--json`` prints ``rooms``, ``acked``, ``p50_ms``, ``p99_ms``, ``all_acked_s`` (null when some room never
acked within ``--timeout``) and extra detail (connect time, rejections by reason, broker).
"""

from __future__ import annotations

__all__ = [
    "FleetKeys",
    "FleetSimError",
    "FleetSimResult",
    "agent_services",
    "percentile",
    "register",
    "run_fleet_sim",
    "run_rooms",
]

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import math
import os
import resource
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.errors import AgentError

if TYPE_CHECKING:
    from agent.daemon.runtime import Runtime
    from agent.service import Service

_PAYLOAD_TYPE = "application/vnd.roomagent.{kind}+json"
# Rooms whose supervisor did not return within the stop budget (the CLI then exits without waiting).
_STUCK: set[asyncio.Task[int]] = set()


class FleetSimError(AgentError):
    """The simulation could not run (no broker, control plane not built, too few file descriptors)."""


# -- signing (docs/design.md "Signed documents": TUF key dicts, DSSE envelopes) ----------------------------


def _key_dict(private: Ed25519PrivateKey) -> dict[str, Any]:
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    return {"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": public}}


def _keyid(key: dict[str, Any]) -> str:
    # Key id = hex sha256 of the key dict as canonical JSON (sorted keys, no whitespace), as TUF does.
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _pae(payload_type: str, payload: bytes) -> bytes:
    # DSSE v1 pre-authentication encoding: "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body.
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class FleetKeys:
    """The simulated management plane's keys: one root key and one fleet key (threshold 1 each)."""

    root: Ed25519PrivateKey
    fleet: Ed25519PrivateKey
    customer: Ed25519PrivateKey
    legal: Ed25519PrivateKey

    @classmethod
    def generate(cls, seed: bytes | None = None) -> FleetKeys:
        """Fresh random keys, or deterministic ones from ``seed`` (fuzzing, reproducible tests only)."""
        if seed is None:
            return cls(*(Ed25519PrivateKey.generate() for _ in range(4)))
        return cls(
            *(
                Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed + role).digest())
                for role in (b"root", b"fleet", b"customer", b"legal")
            )
        )

    @staticmethod
    def payload(
        kind: str,
        version: int,
        body: Any,
        *,
        now: datetime,
        groups: tuple[str, ...] = (),
        devices: tuple[str, ...] = (),
        valid_for: timedelta = timedelta(days=30),
    ) -> dict[str, Any]:
        """A document payload of docs/design.md's shape (``targets`` omitted for ``root``)."""
        out: dict[str, Any] = {
            "kind": kind,
            "version": version,
            "issued_at": _utc(now - timedelta(seconds=5)),
            "expires": _utc(now + valid_for),
            "body": body,
        }
        if kind != "root":
            out["targets"] = {"devices": list(devices), "groups": list(groups)}
        return out

    def sign(self, kind: str, payload: dict[str, Any], *signers: Ed25519PrivateKey) -> bytes:
        """A DSSE envelope of ``payload`` signed by ``signers`` (each with its TUF key id)."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        payload_type = _PAYLOAD_TYPE.format(kind=kind)
        pae = _pae(payload_type, body)
        envelope = {
            "payload": base64.b64encode(body).decode(),
            "payloadType": payload_type,
            "signatures": [
                {"keyid": _keyid(_key_dict(k)), "sig": base64.b64encode(k.sign(pae)).decode()}
                for k in signers
            ],
        }
        return json.dumps(envelope, separators=(",", ":")).encode()

    def root_envelope(self, *, version: int = 1, now: datetime | None = None) -> bytes:
        """Root ``version`` naming the four roles, self-signed by the root key (trust on first boot)."""
        now = now or datetime.now(UTC)
        roles = {"root": self.root, "fleet": self.fleet, "customer": self.customer, "legal": self.legal}
        keys = {_keyid(_key_dict(k)): _key_dict(k) for k in roles.values()}
        payload = {
            "kind": "root",
            "version": version,
            "issued_at": _utc(now - timedelta(minutes=1)),
            "expires": _utc(now + timedelta(days=365)),
            "body": {
                "keys": keys,
                "roles": {
                    name: {"keyids": [_keyid(_key_dict(k))], "threshold": 1} for name, k in roles.items()
                },
            },
        }
        return self.sign("root", payload, self.root)

    def policy_envelope(self, *, version: int, group: str, now: datetime | None = None) -> bytes:
        """A fleet-signed policy for ``group`` that tightens the first-boot default (remote PTZ off)."""
        from agent.schema.policy import DEFAULT_POLICY  # light, but only the push needs it

        now = now or datetime.now(UTC)
        body = DEFAULT_POLICY.model_copy(
            update={"camera": DEFAULT_POLICY.camera.model_copy(update={"remote_ptz": False})}
        ).model_dump(mode="json")
        payload = {
            "kind": "policy",
            "version": version,
            "issued_at": _utc(now - timedelta(seconds=5)),
            "expires": _utc(now + timedelta(days=30)),
            "targets": {"devices": [], "groups": [group]},
            "body": body,
        }
        return self.sign("policy", payload, self.fleet)


# -- statistics ---------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class FleetSimResult:
    """What one push measured. Times are from the publish of the group policy."""

    rooms: int
    acked: int
    ack_ms: tuple[float, ...]
    all_acked_s: float | None
    connect_s: float
    rejected: dict[str, int]
    broker: str
    version: int
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "rooms": self.rooms,
            "acked": self.acked,
            "p50_ms": round(percentile(list(self.ack_ms), 50), 1) if self.ack_ms else None,
            "p99_ms": round(percentile(list(self.ack_ms), 99), 1) if self.ack_ms else None,
            "max_ms": round(max(self.ack_ms), 1) if self.ack_ms else None,
            "all_acked_s": None if self.all_acked_s is None else round(self.all_acked_s, 3),
            "connect_s": round(self.connect_s, 3),
            "rejected": self.rejected,
            "policy_version": self.version,
            "broker": self.broker,
            **self.extra,
        }


# -- the simulation -----------------------------------------------------------------------------------


def _raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < needed:
        raise FleetSimError(f"need {needed} file descriptors, the hard limit is {hard}: raise ulimit -n")


def _room_config(
    workdir: Path, index: int, *, broker_url: str, group: str, root_path: Path, prefix: str
) -> Any:
    from agent.config import parse_config

    return parse_config(
        {
            "device": {"id": f"sim-{index:05d}", "groups": [group]},
            "mqtt": {"url": broker_url, "prefix": prefix},
            "trust": {"root": str(root_path)},
            "state": {"dir": str(workdir / f"sim-{index:05d}"), "report_interval_s": 60.0},
            "supervisor": {"stall_timeout_s": 180.0},  # beats every report_interval_s; no watchdog here
            "log": {"level": "warning"},
            "hal": {"backend": "sim", "cameras": [{"id": "cam0", "width": 320, "height": 240, "fps": 5}]},
            "media": {"enabled": False},
        },
        source=f"fleet-sim room {index}",
    )


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


async def run_rooms(
    first: int,
    count: int,
    *,
    broker_url: str,
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
            workdir, i, broker_url=broker_url, group=group, root_path=root_path, prefix=prefix
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
    for name in ("--broker", "--group", "--root", "--workdir", "--prefix"):
        parser.add_argument(name, required=True)
    parser.add_argument("--first", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--connect-rate", type=float, required=True)
    args = parser.parse_args(argv)
    _raise_nofile(2 * args.count + 256)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def wait_for_eof() -> None:
        sys.stdin.buffer.read()  # the coordinator closes our stdin when the measurement is done
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait_for_eof, name="fleet-sim.worker.stdin", daemon=True).start()
    return await run_rooms(
        args.first,
        args.count,
        broker_url=args.broker,
        group=args.group,
        root_path=Path(args.root),
        workdir=Path(args.workdir),
        prefix=args.prefix,
        connect_rate=args.connect_rate,
        stop=stop,
    )


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
    _raise_nofile(rooms + 256)
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


def agent_services(runtime: Runtime) -> list[Service]:
    """The services ``roomagent run`` starts for ``runtime``: the room built by the composition root."""
    from agent.daemon.room import build_room

    return list(build_room(runtime.config, runtime).services)


def importlib_find(name: str) -> Any:
    import importlib.util

    try:
        return importlib.util.find_spec(name)
    except ModuleNotFoundError:
        return None


# -- CLI ----------------------------------------------------------------------------------------------


def _main(args: argparse.Namespace) -> int:
    from agent.logs import configure_logging

    configure_logging("error", "json", stream=sys.stderr)
    if args.rooms < 1:
        print("fleet-sim: --rooms must be at least 1", file=sys.stderr)
        return 2
    broker = None
    try:
        url = args.broker
        if url is None:
            from agent.control.devbroker import Mosquitto

            _raise_nofile(2 * args.rooms + 256)  # the broker inherits it
            broker = Mosquitto(Path(tempfile.mkdtemp(prefix="fleet-sim-broker-")))
            broker.start()
            url = broker.url
        workdir = None
        if args.state_dir is not None:
            args.state_dir.mkdir(parents=True, exist_ok=True)
            workdir = Path(tempfile.mkdtemp(prefix="fleet-sim-", dir=args.state_dir))
        try:
            result = asyncio.run(
                run_fleet_sim(
                    args.rooms,
                    url,
                    timeout_s=args.timeout,
                    connect_rate=args.connect_rate,
                    prefix=args.prefix,
                    workers=args.workers,
                    workdir=workdir,
                )
            )
        finally:
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
    except AgentError as exc:
        print(f"fleet-sim: {exc}", file=sys.stderr)
        return 1
    finally:
        if broker is not None:
            broker.stop()
            shutil.rmtree(broker.workdir, ignore_errors=True)
    out = result.as_json()
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"{out['acked']}/{out['rooms']} rooms applied policy v{out['policy_version']}: "
            f"p50 {out['p50_ms']} ms, "
            f"p99 {out['p99_ms']} ms, all acked in {out['all_acked_s']} s (connect {out['connect_s']} s)"
        )
        if out["rejected"]:
            print(f"not applied: {out['rejected']}")
    return 0 if result.acked == result.rooms else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``fleet-sim`` to ``roomctl``."""
    p = sub.add_parser(
        "fleet-sim",
        help="run N rooms' control planes against one broker and time a signed group push",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("--rooms", type=int, required=True, metavar="N", help="number of simulated rooms")
    p.add_argument(
        "--broker",
        metavar="URL",
        default=None,
        help="mqtt://HOST:PORT (default: start a throw-away Mosquitto on loopback)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--timeout", type=float, default=180.0, metavar="S", help="give up waiting after S seconds"
    )
    p.add_argument(
        "--connect-rate",
        type=float,
        default=500.0,
        metavar="R",
        help="rooms started per second (a real fleet reconnects with jitter, too)",
    )
    p.add_argument("--prefix", default="roomagent/v1", help="topic prefix")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,  # noqa: S108 - tmpfs on purpose
        metavar="DIR",
        help="where the rooms keep their state (default /dev/shm: on a real fleet every room has its own "
        "disk, so N rooms' fsyncs must not queue on one disk here; pass a disk path to include them)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="K",
        help="processes the rooms run in (default: one per CPU)",
    )
    p.set_defaults(func=_main)


def _worker_entry() -> None:
    from agent.logs import configure_logging

    configure_logging("error", "json", stream=sys.stderr)
    loop = asyncio.new_event_loop()
    report = loop.run_until_complete(_worker_main(sys.argv[2:]))
    print(json.dumps(report), flush=True)
    if _STUCK:  # a room hangs in its stop: waiting would hang the worker; leave without waiting
        sys.stderr.flush()
        os._exit(0)
    loop.close()


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    _worker_entry()
