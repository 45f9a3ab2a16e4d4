"""``roomagent bench control``: publish -> signed ack latency on a loopback Mosquitto, and the cost
of verifying one document beside a bare Ed25519 verify of the same bytes (same run, same machine).

Flood phase (``--flood-seconds``, default 10; 0 skips it): a raw MQTT client in a thread publishes
unsigned garbage (tiny junk, deep nesting, 350-signature envelopes naming the real fleet key id) at
the rate the broker takes it, on the device's command, policy and keys topics, while the plane
sends one valid command every 100 ms. Reported beside the same valid commands with no flood: the
ack latency p50/p99, and the audit log's growth per hour (the goal: < 1 MiB per hour of flood).

Options: ``--commands N`` (default 200), ``--configs N`` (default 50), ``--verifies N`` (default 2000),
``--flood-seconds S``. Needs ``mosquitto`` on PATH or in /usr/sbin.
"""

from __future__ import annotations

__all__ = ["run"]

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.bench import Result, result
from agent.config import parse_config
from agent.control.devbroker import Mosquitto
from agent.control.documents import payload_type
from agent.control.dsse import Envelope, Signature
from agent.control.errors import Rejected
from agent.control.service import ControlService
from agent.control.signing_keys import key_dict, keyid_of
from agent.control.standalone import FileApplyTarget
from agent.control.verify import VerifiedDocument, VerifyContext, verify_document, verify_initial_root
from agent.logs import configure_logging
from agent.service import Progress

_DEVICE = "room-bench"
# Mosquitto's default per-client queue bound (the dev broker raises it for the fleet simulation): it
# bounds what a flood can queue in front of a device's valid document at the broker.
_BROKER_CONF = "max_queued_messages 1000\n"


def _ts(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class _Keys:
    def __init__(self) -> None:
        self.root = ed25519.Ed25519PrivateKey.generate()
        self.fleet = ed25519.Ed25519PrivateKey.generate()
        self.customer = ed25519.Ed25519PrivateKey.generate()
        self.legal = ed25519.Ed25519PrivateKey.generate()

    def root_envelope(self) -> bytes:
        ks = {"root": self.root, "fleet": self.fleet, "customer": self.customer, "legal": self.legal}
        body = {
            "keys": {keyid_of(key_dict(k.public_key())): key_dict(k.public_key()) for k in ks.values()},
            "roles": {
                r: {"keyids": [keyid_of(key_dict(k.public_key()))], "threshold": 1} for r, k in ks.items()
            },
        }
        return self.doc("root", 1, body, signer=self.root)

    def doc(
        self, kind: str, version: int, body: Any, *, signer: ed25519.Ed25519PrivateKey | None = None
    ) -> bytes:
        now = dt.datetime.now(dt.UTC)
        payload: dict[str, Any] = {
            "kind": kind,
            "version": version,
            "issued_at": _ts(now),
            "expires": _ts(now + dt.timedelta(days=1)),
            "targets": {"devices": [_DEVICE], "groups": []},
            "body": body,
        }
        if kind == "root":
            del payload["targets"]
        env = Envelope(payload_type(kind), json.dumps(payload).encode(), ())
        return env.signed_by(signer or self.fleet).to_json()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _keyframe(name: str, args: Mapping[str, Any], doc: VerifiedDocument) -> str:
    return "ok"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _publish_packet(topic: str, payload: bytes) -> bytes:
    """An MQTT 3.1.1 PUBLISH at QoS 0 (section 3.3), built once and sent many times."""
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t + payload
    return b"\x30" + _varint(len(body)) + body


def many_signatures(keys: _Keys, n: int = 350) -> bytes:
    """A policy envelope with ``n`` (bad) signatures all naming the real fleet key id."""
    env = Envelope.parse(keys.doc("policy", 1, {}))
    keyid = keyid_of(key_dict(keys.fleet.public_key()))
    return Envelope(
        env.payload_type, env.payload, tuple(Signature(keyid, bytes([i % 256]) * 64) for i in range(n))
    ).to_json()


_FLOODER = """
import socket, sys, time
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[5]
seconds, rate = float(sys.argv[3]), float(sys.argv[4])
batch = open(path, "rb").read()
per_batch = int(sys.argv[6])
var = b"\\x00\\x04MQTT\\x04\\x02\\x00\\x3c\\x00\\x0bbench-flood"
with socket.create_connection((host, port)) as sock:
    sock.sendall(b"\\x10" + bytes([len(var)]) + var)
    if sock.recv(4)[:1] != b"\\x20":
        sys.exit("no CONNACK")
    sent, start = 0, time.perf_counter()
    while (now := time.perf_counter()) - start < seconds:
        if rate and sent > rate * (now - start):
            time.sleep(0.001)
            continue
        sock.sendall(batch)
        sent += per_batch
    print(sent, time.perf_counter() - start)
"""


class _Flood:
    """Garbage from a raw MQTT 3.1.1 client in a separate process: as fast as the broker takes it
    (``rate`` 0) or at ``rate`` messages per second."""

    def __init__(self, host: str, port: int, keys: _Keys, seconds: float, rate: float, workdir: Path) -> None:
        base = f"roomagent/v1/devices/{_DEVICE}"
        junk = [
            b"x",
            b"{",
            b"[" * 3000 + b"]" * 3000,
            b'{"payload":"e30=","payloadType":"x","signatures":[]}',
        ]
        batch = bytearray()
        per_batch = 0
        for i in range(200):
            topic = (f"{base}/cmd", f"{base}/desired/policy", f"{base}/keys")[i % 3]
            batch += _publish_packet(topic, junk[i % len(junk)])
            per_batch += 1
        batch += _publish_packet(f"{base}/cmd", many_signatures(keys))
        per_batch += 1
        path = workdir / "flood.bin"
        path.write_bytes(bytes(batch))
        self._argv = [sys.executable, "-c", _FLOODER, host, str(port), str(seconds), str(rate), str(path)]
        self._argv.append(str(per_batch))
        self._proc: subprocess.Popen[bytes] | None = None
        self.sent = 0
        self.elapsed = 0.0
        self.error: str | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(self._argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def alive(self) -> bool:
        if self._proc is None:
            return False
        if self._proc.poll() is None:
            return True
        out, err = self._proc.communicate()
        if self._proc.returncode != 0:
            self.error = err.decode(errors="replace")[-300:]
        else:
            sent, elapsed = out.split()
            self.sent, self.elapsed = int(sent), float(elapsed)
        return False


@dataclass
class _Figures:
    cmd_ms: list[float]
    cfg_ms: list[float]
    quiet_ms: list[float] = field(default_factory=list)
    flood_ms: list[float] = field(default_factory=list)
    flood_lost: int = 0
    quiet_audit_bytes_per_s: float = 0.0
    flood_audit_bytes_per_s: float = 0.0
    flood_unauth_audit_bytes_per_s: float = 0.0
    flood_sent_per_s: float = 0.0
    flood_seen_per_s: float = 0.0
    outbox_dropped: int = 0


async def _latency(
    workdir: Path,
    keys: _Keys,
    commands: int,
    configs: int,
    flood_s: float = 0.0,
    flood_rate: float = 0.0,
) -> _Figures:
    root = workdir / "root.json"
    root.write_bytes(keys.root_envelope())
    with Mosquitto(workdir / "broker", extra_conf=_BROKER_CONF) as broker:
        config = parse_config(
            {
                "device": {"id": _DEVICE},
                "mqtt": {"url": broker.url},
                "trust": {"root": str(root)},
                "state": {"dir": str(workdir / "state")},
            }
        )
        service = ControlService(config, FileApplyTarget(workdir / "state" / "running"))
        service.commands.register("keyframe", _keyframe)

        task = asyncio.create_task(service.run(Progress("bench")), name="bench.control")
        try:
            async with aiomqtt.Client(
                broker.host,
                broker.port,
                protocol=aiomqtt.ProtocolVersion.V5,
                socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            ) as plane:
                await plane.subscribe(f"roomagent/v1/devices/{_DEVICE}/ack", qos=1)
                async with asyncio.timeout(10):
                    # The link object only exists once run() started: poll for it, then its event.
                    while service.link is None:  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
                    await service.link.connected.wait()

                async def once(topic: str, raw: bytes, retain: bool) -> float:
                    sha = hashlib.sha256(Envelope.parse(raw).payload).hexdigest()
                    start = time.perf_counter()
                    await plane.publish(topic, raw, qos=1, retain=retain)
                    async with asyncio.timeout(10):
                        async for m in plane.messages:
                            ack = json.loads(Envelope.parse(bytes(m.payload)).payload)
                            if ack["payload_sha256"] == sha:
                                if ack["status"] != "applied":
                                    raise RuntimeError(f"bench document not applied: {ack}")
                                return (time.perf_counter() - start) * 1000
                    raise RuntimeError("no ack")

                cmd_ms = [
                    await once(
                        f"roomagent/v1/devices/{_DEVICE}/cmd",
                        keys.doc("command", i + 1, {"name": "keyframe", "args": {}}),
                        False,
                    )
                    for i in range(commands)
                ]
                cfg_ms = [
                    await once(
                        f"roomagent/v1/devices/{_DEVICE}/desired/config",
                        keys.doc("config", i + 1, {"encoder": {"bitrate_kbps": 1000 + i}}),
                        True,
                    )
                    for i in range(configs)
                ]
                figures = _Figures(cmd_ms, cfg_ms)
                if flood_s > 0:
                    await _flood_phase(
                        service,
                        plane,
                        broker,
                        keys,
                        flood_s,
                        flood_rate,
                        workdir,
                        commands + 1,
                        once,
                        figures,
                    )
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):  # our own child, cancelled just above
                await task
    return figures


async def _flood_phase(
    service: ControlService,
    plane: aiomqtt.Client,
    broker: Mosquitto,
    keys: _Keys,
    flood_s: float,
    flood_rate: float,
    workdir: Path,
    version: int,
    once: Any,
    figures: _Figures,
) -> None:
    """Valid commands every 100 ms, first for ``flood_s`` without a flood (the baseline), then with."""
    cmd_topic = f"roomagent/v1/devices/{_DEVICE}/cmd"

    async def cadence(until: Any, out: list[float]) -> None:
        nonlocal version
        while until():
            try:
                out.append(
                    await once(
                        cmd_topic, keys.doc("command", version, {"name": "keyframe", "args": {}}), False
                    )
                )
            except TimeoutError:
                # No ack within 10 s: counted as lost, and as 10 s in the percentiles.
                figures.flood_lost += 1
                out.append(10_000.0)
            version += 1
            await asyncio.sleep(0.1)

    audit = service.audit.path
    size0, t0 = audit.stat().st_size, time.perf_counter()
    await cadence(lambda: time.perf_counter() - t0 < flood_s, figures.quiet_ms)
    figures.quiet_audit_bytes_per_s = (audit.stat().st_size - size0) / (time.perf_counter() - t0)

    flood = _Flood(broker.host, broker.port, keys, flood_s, flood_rate, workdir)
    size1, spent1 = audit.stat().st_size, service.rejections.spent
    seen1 = sum(c.count for c in service.rejections.counters.values())
    t1 = time.perf_counter()
    flood.start()
    await cadence(flood.alive, figures.flood_ms)
    if flood.error is not None:
        raise RuntimeError(f"flood client failed: {flood.error}")
    # Let the device drain what the broker still holds, then flush the coalesced counters.
    await asyncio.sleep(1.0)
    spent_once = service.rejections.spent - spent1  # entries written once a day per (reason, topic)
    service.flush_rejections()
    per_flush = service.rejections.spent - spent1 - spent_once  # one coalesced entry per pair
    elapsed = time.perf_counter() - t1
    figures.flood_audit_bytes_per_s = (audit.stat().st_size - size1) / elapsed
    # An hour of this flood: the first-of-day entries once, then one flush per interval (and never
    # more than the daily budget).
    flushes = 3600 / service.rejections.flush_interval.total_seconds()
    hour = min(spent_once + per_flush * flushes, service.rejections.audit_budget_bytes)
    figures.flood_unauth_audit_bytes_per_s = hour / 3600
    figures.flood_sent_per_s = flood.sent / max(flood.elapsed, 1e-9)
    figures.flood_seen_per_s = (sum(c.count for c in service.rejections.counters.values()) - seen1) / elapsed
    figures.outbox_dropped = service.link.dropped if service.link is not None else 0


def _verify_cost(keys: _Keys, n: int) -> tuple[float, float]:
    trusted = verify_initial_root(keys.root_envelope())
    raw = keys.doc("config", 1, {"encoder": {"bitrate_kbps": 1500}})
    ctx = VerifyContext(_DEVICE, (), dt.datetime.now(dt.UTC))
    env = Envelope.parse(raw)
    pae, sig = env.pae(), env.signatures[0].sig
    public = keys.fleet.public_key()
    for _ in range(50):  # warm up both paths
        verify_document(raw, "config", trusted, ctx)
        public.verify(sig, pae)
    start = time.perf_counter()
    for _ in range(n):
        verify_document(raw, "config", trusted, ctx)
    doc_us = (time.perf_counter() - start) / n * 1e6
    start = time.perf_counter()
    for _ in range(n):
        public.verify(sig, pae)
    bare_us = (time.perf_counter() - start) / n * 1e6
    return doc_us, bare_us


def run(argv: list[str]) -> list[Result]:
    parser = argparse.ArgumentParser(prog="roomagent bench control")
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--configs", type=int, default=50)
    parser.add_argument("--verifies", type=int, default=2000)
    parser.add_argument("--flood-seconds", type=float, default=10.0)
    parser.add_argument(
        "--flood-rate", type=float, default=0.0, help="garbage msg/s (0: as fast as possible)"
    )
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # "bench control --json"
    args = parser.parse_args(argv)
    # Keep stdout for the results: the service's own log lines go to stderr, warnings only.
    configure_logging("warning", "json", stream=sys.stderr)
    keys = _Keys()
    with tempfile.TemporaryDirectory(prefix="roomagent-bench-") as tmp:
        fig = asyncio.run(
            _latency(Path(tmp), keys, args.commands, args.configs, args.flood_seconds, args.flood_rate)
        )
    cmd_ms, cfg_ms = fig.cmd_ms, fig.cfg_ms
    doc_us, bare_us = _verify_cost(keys, args.verifies)
    many_us = _many_signatures_cost(keys, max(10, args.verifies // 10))
    flood: list[Result] = []
    if args.flood_seconds > 0:
        mib_h = 3600 / (1 << 20)
        flood = [
            result(
                "control.flood_ack_p50",
                statistics.median(fig.flood_ms) if fig.flood_ms else 10_000.0,
                "ms",
                baseline=statistics.median(fig.quiet_ms),
                baseline_metric="same commands, no flood",
                n=len(fig.flood_ms),
            ),
            result(
                "control.flood_ack_p99",
                _percentile(fig.flood_ms, 0.99) if fig.flood_ms else 10_000.0,
                "ms",
                baseline=_percentile(fig.quiet_ms, 0.99),
                baseline_metric="same commands, no flood",
                n=len(fig.flood_ms),
                lost=fig.flood_lost,
                goal_lt=1000,
            ),
            result(
                "control.flood_audit_growth",
                fig.flood_audit_bytes_per_s * mib_h,
                "MiB/h",
                baseline=fig.quiet_audit_bytes_per_s * mib_h,
                baseline_metric="same commands, no flood",
            ),
            result(
                "control.flood_audit_growth_from_garbage",
                fig.flood_unauth_audit_bytes_per_s * mib_h,
                "MiB/h",
                goal_lt=1,
            ),
            result(
                "control.flood_messages_seen",
                fig.flood_seen_per_s,
                "msg/s",
                baseline=fig.flood_sent_per_s,
                baseline_metric="garbage sent to the broker",
                outbox_dropped=fig.outbox_dropped,
            ),
        ]
    return [
        result("control.command_ack_p50", statistics.median(cmd_ms), "ms", n=len(cmd_ms)),
        result("control.command_ack_p99", _percentile(cmd_ms, 0.99), "ms", n=len(cmd_ms), goal_lt=50),
        result("control.config_apply_ack_p50", statistics.median(cfg_ms), "ms", n=len(cfg_ms)),
        result("control.config_apply_ack_p99", _percentile(cfg_ms, 0.99), "ms", n=len(cfg_ms), goal_lt=50),
        result(
            "control.verify_document", doc_us, "us", baseline=bare_us, baseline_metric="bare_ed25519_verify"
        ),
        result(
            "control.verify_350_signatures",
            many_us,
            "us",
            baseline=doc_us,
            baseline_metric="control.verify_document",
        ),
        *flood,
    ]


def _many_signatures_cost(keys: _Keys, n: int) -> float:
    """Rejecting a 350-signature envelope naming the fleet key id: capped before any verification."""
    trusted = verify_initial_root(keys.root_envelope())
    raw = many_signatures(keys)
    ctx = VerifyContext(_DEVICE, (), dt.datetime.now(dt.UTC))
    start = time.perf_counter()
    for _ in range(n):
        with contextlib.suppress(Rejected):
            verify_document(raw, "policy", trusted, ctx)
    return (time.perf_counter() - start) / n * 1e6
