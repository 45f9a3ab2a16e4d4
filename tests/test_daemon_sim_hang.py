"""A hung pipeline on the simulated HAL stops systemd's watchdog pings, so systemd restarts a hung agent.

The whole daemon stack in process: the real service providers (media pipeline on the sim camera,
libx264, SFrame with a lab key, file sink), the supervisor and a real notify socket. The sim camera's
``stall`` fault switch makes capture hang; the pipeline stops beating and the pings stop until frames
flow again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agent.config import parse_config
from agent.daemon.room import build_room
from agent.daemon.runtime import Runtime
from agent.daemon.sdnotify import Notifier
from agent.daemon.supervisor import EXIT_OK, Supervisor
from tests.sdnotify_listener import NotifyListener

# Written against the sim HAL (branch hal) and the media service (branch media); runs once both land.
pytest.importorskip("hal.sim", reason="the simulated HAL (hal.sim) is not importable")
media_service = pytest.importorskip("agent.media.service", reason="the media pipeline is not importable")


def pings(notes: list[Any]) -> int:
    return sum(1 for n in notes if "WATCHDOG" in n.fields)


@pytest.mark.slow
async def test_stalled_sim_camera_stops_the_watchdog_until_frames_flow_again(tmp_path: Path) -> None:
    from agent.media.key_source import write_lab_key

    lab_key = tmp_path / "lab.key"
    write_lab_key(lab_key)
    config = parse_config(
        {
            "device": {"id": "room-hang"},
            "state": {"dir": str(tmp_path / "state")},
            "hal": {"cameras": [{"id": "cam0", "width": 320, "height": 240, "fps": 15}]},
            "media": {"sink": f"file://{tmp_path / 'cam0.sframe'}"},
            "e2ee": {"lab_key_file": str(lab_key)},
            "supervisor": {"stall_timeout_s": 0.6},
        }
    )
    runtime = Runtime(config, tmp_path / "state")
    room = build_room(config, runtime)
    services = room.services
    others = ("control", "privacy", "power", "webrtc")  # the room's other services
    assert [s.name for s in services if s.name not in others] == ["state_reporter", "media[cam0]"]
    media = room.media
    assert media.inventory is not None
    faults = media.inventory.faults("cam0")

    with NotifyListener() as listener:
        notifier = Notifier({"NOTIFY_SOCKET": listener.address})
        supervisor = Supervisor(runtime, services, notifier=notifier, watchdog_interval=0.1)
        task = asyncio.create_task(supervisor.run())
        await asyncio.to_thread(listener.wait_for, "READY", 10)
        healthy = await asyncio.to_thread(listener.collect, 1.0)

        faults.stall(2500)  # the camera stops delivering frames for 2.5 s
        await asyncio.sleep(0.9)  # past the 0.6 s stall timeout and a watchdog turn
        listener.drain()
        hung = await asyncio.to_thread(listener.collect, 1.0)
        health = supervisor.health()["media[cam0]"]

        recovered = await asyncio.to_thread(listener.collect, 1.5)  # the stall ends within this window
        runtime.request_stop("test")
        assert await asyncio.wait_for(task, 5) == EXIT_OK

    assert pings(healthy) >= 5
    assert pings(hung) == 0
    assert health["state"] == "stalled"
    assert pings(recovered) >= 3
    assert any("stalled: media[cam0]" in n.fields.get("STATUS", "") for n in listener.received)
