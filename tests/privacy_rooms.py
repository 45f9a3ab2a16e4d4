"""Privacy scenario rooms: rooms built by the composition root (control service run), a plane client each."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt

from agent.control.service import ControlService
from agent.daemon.room import build_room
from agent.daemon.runtime import Runtime
from agent.privacy.guard import PrivacyGuard
from tests.broker import Broker
from tests.plane import Beat, Plane, PlaneClient, device_config


@dataclass
class Room:
    service: ControlService
    guard: PrivacyGuard
    plane: PlaneClient
    tasks: list[asyncio.Task[Any]]


@contextlib.asynccontextmanager
async def running_rooms(
    plane: Plane, broker: Broker, tmp_path: Path, *devices: str
) -> AsyncIterator[list[Room]]:
    """Real ControlServices with the privacy guard wired in before they connect; one plane client each."""
    root = tmp_path / "root.json"
    root.write_bytes(plane.root())
    rooms: list[Room] = []
    stack = contextlib.AsyncExitStack()
    try:
        for device in devices:
            state = tmp_path / device
            config = device_config(state, root, broker.url, device=device)
            state.mkdir(mode=0o700, parents=True, exist_ok=True)
            built = build_room(config, Runtime(config, state))  # wired as roomagent run wires it
            service, guard = built.control, built.guard
            client = await stack.enter_async_context(
                aiomqtt.Client(
                    broker.host,
                    broker.port,
                    identifier=f"plane-{device}",
                    protocol=aiomqtt.ProtocolVersion.V5,
                )
            )
            pc = PlaneClient(client, device)
            tasks = [asyncio.create_task(pc.listen(), name=f"plane.{device}")]
            await asyncio.sleep(0.05)  # subscribed before the device's first state
            tasks.append(asyncio.create_task(service.run(Beat()), name=f"control.{device}"))
            await pc.wait_for(lambda s, d=device: s.get("device") == d and s.get("online") is True, 5.0)
            rooms.append(Room(service, guard, pc, tasks))
        yield rooms
    finally:
        for room in rooms:
            for task in room.tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await stack.aclose()


def enroll(plane: Plane, tmp_path: Path, rooms: list[Room]) -> list[str]:
    """Record the rooms in a customer-signed roster, read from the rooms themselves (as
    ``roomagent identity --json`` would print them), never from the broker; returns roomctl's
    ``--roster``/``--root`` arguments (the root is the one ``running_rooms`` wrote)."""
    import datetime as dt

    from agent.control.roster import ATTESTATION_KIND, RosterBody, RosterRoom, roster_envelope

    entries = {}
    for room in rooms:
        device, hpke = room.service.device, room.guard.identity.public_keys()
        attestation = room.service.identity.sign_envelope(ATTESTATION_KIND, {"device": device, "hpke": hpke})
        entries[device] = RosterRoom(
            ed25519=room.service.identity.public_dict,
            hpke=hpke,
            hpke_attestation=attestation.to_dict(),
            groups=list(room.service.groups),
        )
    now = dt.datetime.now(dt.UTC)
    env = roster_envelope(
        RosterBody(customer="acme", rooms=entries),
        version=1,
        issued_at=now,
        expires=now + dt.timedelta(days=1),
        signers=[plane.customer],
    )
    path = tmp_path / "roster.env.json"
    path.write_bytes(env.to_json())
    return ["--roster", str(path), "--root", str(tmp_path / "root.json")]
