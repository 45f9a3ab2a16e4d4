"""A customer's fleet for roomctl tests: role keys, a trust root, real rooms enrolled in a roster.

Rooms are enrolled the way the docs say: ``roomagent identity --json`` run against the room's own
agent.toml (a real process; it creates the same identity files the daemon uses), then
``roomctl roster add`` (a real process) signs the roster with the customer key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from agent.control.signing_keys import private_key_pem
from tests.broker import Broker
from tests.plane import PREFIX, Plane
from tests.test_privacy_agent_process import agent_process


def run(env: dict[str, str], *argv: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=timeout)


@dataclass
class Fleet:
    tmp: Path
    env: dict[str, str]
    plane: Plane = field(default_factory=Plane)
    rooms: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = self.tmp / "root.json"
        self.root.write_bytes(self.plane.root())
        self.roster = self.tmp / "roster.env.json"
        self.keys: dict[str, Path] = {}
        for role in ("fleet", "customer", "legal"):
            path = self.tmp / f"{role}.pem"
            path.write_bytes(private_key_pem(getattr(self.plane, role)))
            self.keys[role] = path

    @property
    def trust(self) -> list[str]:
        return ["--roster", str(self.roster), "--root", str(self.root)]

    def roomctl(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return run(self.env, sys.executable, "-m", "agent.fleet", *args, timeout=timeout)

    async def aroomctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(self.roomctl, *args)

    def room_config(self, device: str, broker: Broker | None, groups: tuple[str, ...] = ("hq",)) -> Path:
        config = self.tmp / f"{device}.toml"
        mqtt = f'[mqtt]\nurl = "{broker.url}"\n' if broker is not None else ""
        config.write_text(
            f'[device]\nid = "{device}"\ngroups = {json.dumps(list(groups))}\n{mqtt}'
            f'[trust]\nroot = "{self.root}"\n[state]\ndir = "{self.tmp / device}"\n[log]\nformat = "json"\n'
        )
        self.rooms[device] = config
        return config

    def identity(self, device: str) -> Path:
        """``roomagent identity --json`` on the room (a real process), saved as the installer would."""
        result = run(
            self.env, sys.executable, "-m", "agent", "identity", "--config", str(self.rooms[device]), "--json"
        )
        assert result.returncode == 0, result.stderr
        path = self.tmp / f"{device}.identity.json"
        path.write_text(result.stdout)
        return path

    def enroll(self, device: str, broker: Broker | None, groups: tuple[str, ...] = ("hq",)) -> dict[str, Any]:
        self.room_config(device, broker, groups)
        identity = self.identity(device)
        result = self.roomctl(
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
            *self.trust,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(identity.read_text())

    def broker_args(self, broker: Broker) -> list[str]:
        return ["--broker", broker.url, *self.trust]


async def wait_online(broker: Broker, devices: list[str], within_s: float = 30) -> None:
    """Return once every device's retained state says ``online: true`` (garbage is ignored)."""
    async with aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        for device in devices:
            await client.subscribe(topic(device, "state"), qos=1)
        online: set[str] = set()
        async with asyncio.timeout(within_s):
            async for message in client.messages:
                with contextlib.suppress(ValueError, AttributeError, TypeError):
                    state = json.loads(bytes(message.payload))  # type: ignore[arg-type]
                    if state.get("device") in devices:
                        if state.get("online") is True:
                            online.add(state["device"])
                        else:
                            online.discard(state["device"])
                if online == set(devices):
                    return


@contextlib.asynccontextmanager
async def running(fleet: Fleet, broker: Broker, *devices: str) -> AsyncIterator[None]:
    """``roomagent run`` for each enrolled room, returning once each has published ``online: true``."""
    async with contextlib.AsyncExitStack() as stack:
        for device in devices:
            await stack.enter_async_context(agent_process(fleet.rooms[device], fleet.env))
        await wait_online(broker, list(devices))
        yield


async def publish(broker: Broker, topic: str, payload: bytes, *, retain: bool = False) -> None:
    async with aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.publish(topic, payload, qos=1, retain=retain)


def topic(device: str, leaf: str) -> str:
    return f"{PREFIX}/devices/{device}/{leaf}"


GARBAGE: list[bytes] = [
    b"\xff\xfe\x00 not utf-8 \xc3",
    b"[1, 2, 3]",
    b"this is not json",
    b"[" * 100_000 + b"]" * 100_000,
    b'{"payload": 1}',
    b"",
]
