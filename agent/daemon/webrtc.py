"""The room's WebRTC meeting service, built from its typed collaborators (called by :mod:`agent.daemon.room`).

It connects the customer-signed meeting keys held by the privacy guard (sender key, receive context, the
``sfu`` place of the ``keys`` document) to :class:`agent.webrtc.service.WebRtcService`.

Camera: with no ``[media] sink`` (the RTP pipeline is the lab path) the WebRTC meeting opens the first
configured camera through the room's HAL inventory while it runs; when the RTP pipeline owns the cameras,
the room meets with audio only (and logs why).
"""

from __future__ import annotations

__all__ = ["build_webrtc", "meeting_of"]

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from agent.config import AgentConfig
from agent.media.service import Media
from agent.privacy.guard import PrivacyGuard
from agent.privacy.key_packages import KeySet
from agent.webrtc.joinkeys import SfuPlace
from agent.webrtc.service import Meeting, WebRtcService
from hal.protocols import Camera, Inventory

_log = structlog.get_logger()


def meeting_of(keys: KeySet) -> Meeting | None:
    """The WebRTC meeting these keys put the room in, or None."""
    # Only a room that holds its own sender key takes part: without it nothing could be sent sealed.
    if keys.sfu is None or keys.own is None or keys.meeting is None:
        return None
    return Meeting(keys.meeting, SfuPlace(keys.sfu.url, keys.sfu.room, keys.sfu.token))


def build_webrtc(
    *,
    device_id: str,
    config: AgentConfig,
    guard: PrivacyGuard,
    media: Media,
    inventory: Inventory | None,
    report: Callable[[dict[str, Any]], None],
) -> WebRtcService:
    """The WebRTC service of one room.

    Args:
        device_id: the room's name in the meeting (its display name at the SFU).
        config: the effective config (which cameras the room has).
        guard: the privacy guard: its key source, receive opener and installed meeting keys.
        media: the RTP media path; while it runs pipelines it owns the cameras (WebRTC goes audio only).
        inventory: the room's HAL inventory (None: no cameras).
        report: receives the ``webrtc`` state fragment (the device-state update).
    """
    changed = asyncio.Event()
    # Every key change publishes the guard's state fragment: use it as the wake-up.
    guard.add_state_sink(lambda _fragment: changed.set())
    open_camera: Callable[[], Camera] | None = None
    if media.pipelines:
        _log.warning("webrtc_audio_only", reason="the RTP pipeline ([media] sink) owns the cameras")
    elif inventory is not None and config.hal.cameras:
        first = config.hal.cameras[0].id

        def open_first() -> Camera:
            return inventory.open_camera(first)

        open_camera = open_first
    return WebRtcService(
        display=device_id,
        key_source=guard.key_source,
        opener=guard.sframe.opener,
        meeting=lambda: meeting_of(guard.keys.keys),
        changed=changed,
        open_camera=open_camera,
        report=report,
    )
