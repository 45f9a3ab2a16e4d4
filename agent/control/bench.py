"""``roomagent bench control``: publish -> signed ack latency on a loopback Mosquitto, and the cost
of verifying one document beside a bare Ed25519 verify of the same bytes (same run, same machine).

Options: ``--commands N`` (default 200), ``--configs N`` (default 50), ``--verifies N`` (default 2000).
Needs ``mosquitto`` on PATH or in /usr/sbin.
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
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiomqtt
from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.bench import Result, result
from agent.config import parse_config
from agent.control.devbroker import Mosquitto
from agent.control.documents import payload_type
from agent.control.dsse import Envelope
from agent.control.service import ControlService
from agent.control.signing_keys import key_dict, keyid_of
from agent.control.standalone import FileApplyTarget
from agent.control.verify import VerifiedDocument, VerifyContext, verify_document, verify_initial_root
from agent.logs import configure_logging
from agent.service import Progress

_DEVICE = "room-bench"


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


async def _latency(
    workdir: Path, keys: _Keys, commands: int, configs: int
) -> tuple[list[float], list[float]]:
    root = workdir / "root.json"
    root.write_bytes(keys.root_envelope())
    with Mosquitto(workdir / "broker") as broker:
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
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):  # our own child, cancelled just above
                await task
    return cmd_ms, cfg_ms


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
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # "bench control --json"
    args = parser.parse_args(argv)
    # Keep stdout for the results: the service's own log lines go to stderr, warnings only.
    configure_logging("warning", "json", stream=sys.stderr)
    keys = _Keys()
    with tempfile.TemporaryDirectory(prefix="roomagent-bench-") as tmp:
        cmd_ms, cfg_ms = asyncio.run(_latency(Path(tmp), keys, args.commands, args.configs))
    doc_us, bare_us = _verify_cost(keys, args.verifies)
    return [
        result("control.command_ack_p50", statistics.median(cmd_ms), "ms", n=len(cmd_ms)),
        result("control.command_ack_p99", _percentile(cmd_ms, 0.99), "ms", n=len(cmd_ms), goal_lt=50),
        result("control.config_apply_ack_p50", statistics.median(cfg_ms), "ms", n=len(cfg_ms)),
        result("control.config_apply_ack_p99", _percentile(cfg_ms, 0.99), "ms", n=len(cfg_ms), goal_lt=50),
        result(
            "control.verify_document", doc_us, "us", baseline=bare_us, baseline_metric="bare_ed25519_verify"
        ),
    ]
