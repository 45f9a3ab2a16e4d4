"""Acceptance suite of the assembled room: what a fleet admin, a customer and a tester do, for real.

- a real Mosquitto (one per module),
- real ``roomagent run`` processes (``python -m agent run --config ...``) on the sim HAL,
- documents signed and pushed with the real ``roomctl`` (``python -m agent.fleet keygen/root/sign/push``),
  acks read from roomctl's ``--json`` output,
- every room enrolled the way a customer does it before it first starts: ``roomagent identity --json``
  on the room's own config, then ``roomctl roster add`` signed with the customer key; roomctl trusts
  acks and states only through that roster (``$ROOMCTL_ROSTER`` / ``$ROOMCTL_ROOT`` in ``Fleet.env``),
- the retained state read by a fresh MQTT subscriber, and ``state.json`` read from the room's state dir.

Fixtures: ``broker`` (module), ``fleet`` (module: keys, trust root, sign + push through roomctl),
``room_factory`` (module: start rooms; every room is stopped at the end of the module).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent.control.dsse import Envelope
from tests.broker import Broker

REPO = Path(__file__).resolve().parents[2]
PREFIX = "roomagent/v1"
ROLES = ("root", "fleet", "customer", "legal")

pytestmark = pytest.mark.broker


def process_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["XDG_STATE_HOME"] = str(home / "xdg-state")
    env["COLUMNS"] = "200"  # roomctl's tables: no wrapping
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "STATE_DIRECTORY", "DBUS_SYSTEM_BUS_ADDRESS"):
        env.pop(name, None)
    return env


def _utc(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class Fleet:
    """The fleet admin and the customer: keys, trust root, and ``roomctl sign`` / ``roomctl push``."""

    def __init__(self, workdir: Path, broker: Broker, env: dict[str, str]) -> None:
        self.dir = workdir
        self.broker = broker
        self.env = env
        self.keys = {role: workdir / f"{role}.pem" for role in ROLES}
        # Document versions are milliseconds since the epoch, as roomctl and the rooms expect.
        self._versions = itertools.count(int(time.time() * 1000))
        self._docs = itertools.count()
        for path in self.keys.values():
            self.roomctl("keygen", "--out", str(path))
        self.root = workdir / "root.json"
        self.roomctl(
            "root",
            "init",
            *[arg for role in ROLES for arg in (f"--{role}-key", str(self.keys[role]))],
            "--sign",
            str(self.keys["root"]),
            "--out",
            str(self.root),
        )
        # Every roomctl call (push, status, verbs) reads acks and states through the customer's roster.
        self.roster = workdir / "roster.env.json"
        self.env = {**env, "ROOMCTL_ROSTER": str(self.roster), "ROOMCTL_ROOT": str(self.root)}

    def enroll(self, device: str, config: Path, groups: tuple[str, ...]) -> dict[str, Any]:
        """Enroll a room as a customer does: ``roomagent identity --json`` against the room's own
        config (a real process; it creates the identity files the daemon then uses), then
        ``roomctl roster add`` with the customer key. Returns the identity the room printed."""
        proc = subprocess.run(
            [sys.executable, "-m", "agent", "identity", "--config", str(config), "--json"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, f"roomagent identity {device} -> {proc.returncode}\n{proc.stderr}"
        identity = self.dir / f"{device}.identity.json"
        identity.write_text(proc.stdout)
        self.roomctl(
            "roster",
            "add",
            device,
            "--identity",
            str(identity),
            "--groups",
            ",".join(groups),
            "--customer",
            "acme",
            "--customer-key",
            str(self.keys["customer"]),
        )
        data: dict[str, Any] = json.loads(proc.stdout)
        return data

    def roomctl(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "agent.fleet", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"roomctl {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def sign(
        self, kind: str, body: dict[str, Any], device: str, signers: tuple[str, ...] = ("fleet",)
    ) -> Path:
        """A payload for ``device`` signed with ``roomctl sign`` by ``signers``; returns the envelope file."""
        now = dt.datetime.now(dt.UTC)
        payload = {
            "kind": kind,
            "version": next(self._versions),
            "issued_at": _utc(now - dt.timedelta(seconds=5)),
            "expires": _utc(now + dt.timedelta(hours=1)),
            "targets": {"devices": [device], "groups": []},
            "body": body,
        }
        n = next(self._docs)
        source = self.dir / f"doc-{n}.json"
        source.write_text(json.dumps(payload))
        envelope = self.dir / f"doc-{n}.env.json"
        keys = [arg for role in signers for arg in ("--key", str(self.keys[role]))]
        self.roomctl("sign", kind, str(source), *keys, "--out", str(envelope))
        return envelope

    def push(self, envelope: Path, device: str, wait_s: float = 40) -> dict[str, Any]:
        """``roomctl push --wait --json``: the device's outcome as roomctl reports it (``status``,
        ``reason``, ``message``, ``verified``: the ack's signature checked against the roster key,
        ``hint``), plus ``roomctl_exit`` and ``doc_version`` (the version pushed); ``timeout`` if none."""
        version = json.loads(Envelope.parse(envelope.read_bytes()).payload)["version"]
        proc = self.roomctl(
            "push",
            str(envelope),
            "--broker",
            self.broker.url,
            "--device",
            device,
            "--wait",
            str(wait_s),
            "--json",
            check=False,
            timeout=wait_s + 60,
        )
        for line in reversed(proc.stdout.splitlines()):
            if line.startswith("{"):
                report = json.loads(line)
                rooms = report.get("rooms", {})
                if device in rooms:
                    ack: dict[str, Any] = rooms[device]
                    assert report["ok"] is (proc.returncode == 0), report  # one verdict, two ways
                    ack["roomctl_exit"] = proc.returncode
                    ack["doc_version"] = version
                    return ack
        return {
            "status": "timeout",
            "roomctl_exit": proc.returncode,
            "stdout": proc.stdout[-2000:],
            "stderr": proc.stderr[-2000:],
        }

    def command(
        self,
        device: str,
        name: str,
        args: dict[str, Any] | None = None,
        signers: tuple[str, ...] = ("fleet",),
    ) -> dict[str, Any]:
        return self.push(self.sign("command", {"name": name, "args": args or {}}, device, signers), device)


class Room:
    """One ``roomagent run`` process on the sim HAL, with its config, state dir and log."""

    def __init__(
        self,
        workdir: Path,
        device: str,
        broker: Broker,
        fleet: Fleet,
        *,
        media: bool,
        extra_env: dict[str, str] | None = None,
        groups: tuple[str, ...] = ("hq",),
    ) -> None:
        self.device = device
        self.groups = groups
        self.dir = workdir
        self.broker = broker
        self.state_dir = workdir / "state"
        self.presets = workdir / "presets"
        self.presets.mkdir(parents=True, exist_ok=True)
        self.sink = workdir / "cam0.sframe"
        # Never the host's system bus: a reboot command must not reach a real logind from a test.
        no_bus = {"DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={workdir / 'no-system-bus'}"}
        self.env = {**fleet.env, **no_bus, **(extra_env or {})}
        self.config = workdir / "agent.toml"
        lines = [
            "[device]",
            f'id = "{device}"',
            f"groups = {json.dumps(list(groups))}",
            "[mqtt]",
            f'url = "{broker.url}"',
            "[trust]",
            f'root = "{fleet.root}"',
            "[state]",
            f'dir = "{self.state_dir}"',
            "report_interval_s = 1.0",
            "[log]",
            'format = "json"',
            'level = "debug"',
            "[hal]",
            'backend = "sim"',
            f'presets_dir = "{self.presets}"',
            "[[hal.cameras]]",
            'id = "cam0"',
            "width = 160",
            "height = 120",
            "fps = 10",
            "[hal.encoder]",
            "bitrate_kbps = 300",
        ]
        if media:
            lines += ["[media]", f'sink = "file://{self.sink}"']
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "agent.log"
        self.starts = 0

    # -- process ------------------------------------------------------------------------------------
    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.starts += 1
        log = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(self.config)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_online(self, timeout_s: float = 60) -> dict[str, Any]:
        """Until this process reports itself online in ``state.json`` and on the broker."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.device} exited {self.proc.returncode}:\n{self.tail()}")
            state = self.state_json()
            if state.get("online") is True and state.get("agent", {}).get("pid") == self.proc.pid:
                retained = await retained_state(self.broker, self.device)
                if retained.get("online") is True:
                    return retained
            await asyncio.sleep(0.2)
        raise AssertionError(f"{self.device} not online within {timeout_s} s:\n{self.tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20) -> int:
        """Send ``sig`` and wait for the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    async def wait_exit(self, timeout_s: float = 30) -> int:
        assert self.proc is not None
        return await asyncio.to_thread(self.proc.wait, timeout_s)

    # -- what the room shows ------------------------------------------------------------------------
    def state_json(self) -> dict[str, Any]:
        try:
            data = json.loads((self.state_dir / "state.json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    out.append(event)
        return out

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


async def retained_state(broker: Broker, device: str, timeout_s: float = 10) -> dict[str, Any]:
    """The retained state of ``device`` as a fresh subscriber sees it (``{}`` when there is none)."""
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=f"fresh-{uuid.uuid4().hex[:8]}",
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:
        await client.subscribe(f"{PREFIX}/devices/{device}/state", qos=1)
        try:
            async with asyncio.timeout(timeout_s):
                async for message in client.messages:
                    if isinstance(message.payload, bytes | bytearray) and message.payload:
                        data = json.loads(message.payload)
                        return data if isinstance(data, dict) else {}
        except TimeoutError:
            return {}
    return {}


async def wait_retained(broker: Broker, device: str, predicate: Any, timeout_s: float = 30) -> dict[str, Any]:
    """Poll fresh subscribers until the retained state satisfies ``predicate``."""
    deadline = time.monotonic() + timeout_s
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = await retained_state(broker, device, timeout_s=3)
        if predicate(state):
            return state
        await asyncio.sleep(0.3)
    raise AssertionError(f"retained state of {device} never matched; last: {json.dumps(state)[:1500]}")


async def collect(broker: Broker, topic: str, until: Any, timeout_s: float = 30) -> list[bytes]:
    """Messages on ``topic`` (subscribed now) until ``until(messages)`` is true."""
    got: list[bytes] = []
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=f"sub-{uuid.uuid4().hex[:8]}",
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(timeout_s):
            async for message in client.messages:
                if isinstance(message.payload, bytes | bytearray):
                    got.append(bytes(message.payload))
                if until(got):
                    return got
    return got


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = Broker(tmp_path_factory.mktemp("acceptance-mosquitto"))
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, broker: Broker) -> Fleet:
    workdir = tmp_path_factory.mktemp("fleet")
    return Fleet(workdir, broker, process_env(workdir))


class RoomFactory:
    def __init__(self, base: Path, broker: Broker, fleet: Fleet) -> None:
        self._base = base
        self._broker = broker
        self._fleet = fleet
        self.rooms: list[Room] = []

    def __call__(self, device: str, *, media: bool, extra_env: dict[str, str] | None = None) -> Room:
        room = Room(self._base / device, device, self._broker, self._fleet, media=media, extra_env=extra_env)
        self._fleet.enroll(device, room.config, room.groups)
        self.rooms.append(room)
        return room

    def stop_all(self) -> None:
        for room in self.rooms:
            if room.running:
                with contextlib.suppress(Exception):
                    room.stop(signal.SIGTERM, timeout_s=15)


@pytest.fixture(scope="module")
def room_factory(
    tmp_path_factory: pytest.TempPathFactory, broker: Broker, fleet: Fleet
) -> Iterator[RoomFactory]:
    factory = RoomFactory(tmp_path_factory.mktemp("rooms"), broker, fleet)
    try:
        yield factory
    finally:
        factory.stop_all()
