"""The room's WebRTC service joins the SFU while its meeting keys name one, and leaves when they go.

A real Janus in a private network namespace; the service runs in this process with the sim camera.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
from collections.abc import Callable
from typing import Any

import pytest

from agent.e2ee.context import ReceiverContext, SenderContext
from agent.media.key_source import ContextOpener, KeySource
from agent.service import Progress
from agent.webrtc.janus import JanusSession
from agent.webrtc.joinkeys import SfuPlace
from agent.webrtc.service import Meeting, WebRtcService
from hal.sim.camera import SimInventory
from hal.types import CameraSpec
from tests.webrtc_env import Janus, janus_in_netns, netns_available

__all__ = ["janus_in_netns"]  # the fixture, used by name

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("janus") is None, reason="needs Debian's janus (make test installs it)"),
    pytest.mark.skipif(not netns_available(), reason="needs root for a private network namespace"),
]


class _Sealer:
    def __init__(self) -> None:
        self.ctx = SenderContext(4, secrets.token_bytes(32), 0x401)

    @property
    def kid(self) -> int:
        return self.ctx.kid

    def seal(self, metadata: bytes, plaintext: bytes) -> bytes:
        return self.ctx.encrypt(metadata, plaintext)


async def _until(check: Callable[[], Any], within_s: float) -> None:
    """Poll ``check`` (a coroutine function): Janus's participant list has no change notification."""
    async with asyncio.timeout(within_s):
        while not await check():  # noqa: ASYNC110 - polling an external API, no event to wait on
            await asyncio.sleep(0.3)


async def test_service_joins_while_keys_name_an_sfu_and_leaves_when_they_go(janus_in_netns: Janus) -> None:
    janus = janus_in_netns
    source = KeySource()
    source.set_sender(_Sealer(), 1)
    place = SfuPlace(janus.url, janus.room, janus.pin)
    current: list[Meeting | None] = [Meeting("m-svc", place)]
    changed = asyncio.Event()
    reports: list[dict[str, Any]] = []
    inventory = SimInventory([CameraSpec(id="cam0", width=320, height=240, fps=30)])
    service = WebRtcService(
        display="room-a",
        key_source=source,
        opener=ContextOpener(ReceiverContext()),
        meeting=lambda: current[0],
        changed=changed,
        open_camera=lambda: inventory.open_camera("cam0"),
        report=reports.append,
    )
    task = asyncio.create_task(service.run(Progress("webrtc")))
    async with JanusSession(janus.url) as admin:
        handle = await admin.attach()

        async def participants() -> list[dict[str, Any]]:
            reply = await handle.message({"request": "listparticipants", "room": janus.room})
            return list(reply["plugindata"]["data"]["participants"])

        async def joined() -> bool:
            return service.describe()["joined"] and [p["display"] for p in await participants()] == ["room-a"]

        await _until(joined, 30)
        await asyncio.sleep(2)
        assert service.describe()["sframe"]["sealed"].get("vp8", 0) > 10
        # The meeting keys go (meeting stop, expiry, lock): the room leaves the SFU.
        current[0] = None
        changed.set()

        async def left() -> bool:
            return service.describe()["meeting"] is None and not await participants()

        await _until(left, 20)
        # And the camera is free again (the meeting held it only while it ran).
        async with inventory.open_camera("cam0"):
            pass
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert any(r["joined"] for r in reports)
