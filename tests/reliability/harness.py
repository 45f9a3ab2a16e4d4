"""A real agent process and a reconciling management plane, for the fault-injection scenarios.

``AgentProcess`` starts the agent as ``roomagent run`` would on a room PC (``python -m agent run --config
...``; until the daemon wires the control plane, the control plane's own entry point ``python -m
agent.control``) against a real broker, and SIGKILLs or stops it. ``ReconcilingPlane`` is what a
management plane does: it keeps the desired documents retained, republishes any that are not acked yet
after every reconnect, and records every ack. Only the wire contract (docs/design.md) is used, plus the
agent's own persisted files for the never-torn checks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent.fleet.sim import FleetKeys
from tests.conftest import REPO

PREFIX = "roomagent/v1"


def agent_command(config: Path) -> list[str]:
    """The agent's command line, or skip when the control plane is not built on this branch."""
    try:
        service = importlib.util.find_spec("agent.control.service")
    except ModuleNotFoundError:
        service = None
    if service is None:
        pytest.skip("the control plane (agent.control.service) is not built on this branch yet")
    import agent.control.service as svc

    if hasattr(svc, "services"):
        return [sys.executable, "-m", "agent", "run", "--config", str(config)]
    return [sys.executable, "-m", "agent.control", "--config", str(config)]


@dataclass
class AgentProcess:
    workdir: Path
    broker_url: str
    keys: FleetKeys
    device: str = "room-rel"
    groups: tuple[str, ...] = ("hq",)
    state_dir: Path | None = None  # default workdir/state; a small tmpfs for the disk-full scenario
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def __post_init__(self) -> None:
        if self.state_dir is None:
            self.state_dir = self.workdir / "state"
        self.root_path = self.workdir / "root.json"
        self.root_path.write_bytes(self.keys.root_envelope())
        self.config_path = self.workdir / "agent.toml"
        groups = ", ".join(f'"{g}"' for g in self.groups)
        self.config_path.write_text(
            f'[device]\nid = "{self.device}"\ngroups = [{groups}]\n'
            f'[mqtt]\nurl = "{self.broker_url}"\nkeepalive_s = 5\n'
            f'[trust]\nroot = "{self.root_path}"\n'
            f'[state]\ndir = "{self.state_dir}"\n'
            '[log]\nlevel = "info"\nformat = "json"\n'
            "[media]\nenabled = false\n"
        )
        self.log_path = self.workdir / "agent.log"

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        env.pop("NOTIFY_SOCKET", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                agent_command(self.config_path), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO
            )
        self.starts += 1

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def control_state(self) -> Any:
        """The control plane's persisted state (raises StateError when torn)."""
        from agent.persist import read_json

        assert self.state_dir is not None
        return read_json(self.state_dir / "control" / "state.json")

    def audit_events(self) -> list[dict[str, Any]]:
        assert self.state_dir is not None
        path = self.state_dir / "audit" / "audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def log_tail(self, n: int = 40) -> str:
        return (
            "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
            if self.log_path.exists()
            else ""
        )


@dataclass
class ReconcilingPlane:
    """Pushes desired documents and reconciles until each is acked; records every ack."""

    host: str
    port: int
    keys: FleetKeys
    device: str = "room-rel"
    desired: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # kind -> (version, envelope)
    acks: list[dict[str, Any]] = field(default_factory=list)
    applied: Counter[tuple[str, int]] = field(default_factory=Counter)
    state: dict[str, Any] = field(default_factory=dict)
    connections: int = 0
    republished: int = 0
    online_reports: int = 0  # retained-state messages with online: true seen so far
    _client: aiomqtt.Client | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def document(self, kind: str, version: int, *, now: datetime | None = None) -> bytes:
        now = now or datetime.now(UTC)
        if kind == "config":
            body: dict[str, Any] = {"encoder": {"bitrate_kbps": 1000 + version}}
        else:
            from agent.schema.policy import DEFAULT_POLICY

            body = DEFAULT_POLICY.model_dump(mode="json")
            body["camera"]["remote_ptz"] = False  # tightens the default; later versions keep it
        payload = FleetKeys.payload(
            kind, version, body, now=now, devices=(self.device,), valid_for=timedelta(hours=1)
        )
        return self.keys.sign(kind, payload, self.keys.fleet)

    def acked(self, kind: str, version: int) -> bool:
        return self.applied[(kind, version)] > 0

    async def push(self, kind: str, version: int) -> None:
        envelope = self.document(kind, version)
        self.desired[kind] = (version, envelope)
        await self._publish(kind, envelope)

    async def _publish(self, kind: str, envelope: bytes) -> None:
        client = self._client
        if client is None:
            return  # reconciled on the next connection
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(
                f"{PREFIX}/devices/{self.device}/desired/{kind}", envelope, qos=1, retain=True
            )

    async def run(self) -> None:
        """Connect forever; on each connection republish what is not acked yet."""
        while True:
            try:
                async with aiomqtt.Client(
                    self.host,
                    self.port,
                    identifier=f"plane-{os.getpid()}",
                    protocol=aiomqtt.ProtocolVersion.V5,
                    timeout=5,
                ) as client:
                    self._client = client
                    self.connections += 1
                    await client.subscribe(f"{PREFIX}/devices/{self.device}/ack", qos=1)
                    await client.subscribe(f"{PREFIX}/devices/{self.device}/state", qos=1)
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._receive(client), name="plane.receive")
                        tg.create_task(self._reconcile(), name="plane.reconcile")
            except* aiomqtt.MqttError:
                pass
            finally:
                self._client = None
            await asyncio.sleep(0.2)

    async def _reconcile(self) -> None:
        while True:
            for kind, (version, envelope) in list(self.desired.items()):
                if not self.acked(kind, version):
                    await self._publish(kind, envelope)
                    self.republished += 1
            await asyncio.sleep(0.5)

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            topic = str(message.topic)
            if topic.endswith("/state"):
                with contextlib.suppress(ValueError):
                    self.state = json.loads(payload) if payload else {}
                    if self.state.get("online") is True:
                        self.online_reports += 1
                self._changed.set()
                continue
            try:
                ack = json.loads(base64.b64decode(json.loads(payload)["payload"]))
            except (ValueError, KeyError, TypeError):
                continue
            self.acks.append(ack)
            if ack.get("status") == "applied":
                self.applied[(str(ack.get("doc_kind")), int(ack.get("doc_version") or 0))] += 1
            self._changed.set()

    async def wait_for(self, predicate: Any, within_s: float, what: str) -> None:
        deadline = time.monotonic() + within_s
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {within_s} s waiting for {what}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 0.5)):
                    await self._changed.wait()
