"""WIRING for ``roomagent run``: the WebRTC meeting service (agent/webrtc) fed by the privacy guard.

The one place that connects the customer-signed meeting keys (``agent.privacy``: sender key, receive
context, the ``sfu`` place) to :class:`agent.webrtc.service.WebRtcService`. It belongs in the typed
composition root (``agent/daemon/room.py``) once that exists; nothing else refers to it.

Camera: with no ``[media] sink`` (the RTP pipeline is the lab path) the WebRTC meeting opens the first
configured camera while it runs; when the RTP pipeline owns the cameras, the room meets with audio only
(and logs why).
"""

from __future__ import annotations

__all__ = ["services"]

import asyncio
from typing import Any

import structlog

from agent.privacy.keys import KeySet
from agent.privacy.service import guard_of
from agent.webrtc.joinkeys import SfuPlace
from agent.webrtc.service import Meeting, WebRtcService

_log = structlog.get_logger()


def _meeting_of(keys: KeySet) -> Meeting | None:
    # Only a room that holds its own sender key takes part: without it nothing could be sent sealed.
    if keys.sfu is None or keys.own is None or keys.meeting is None:
        return None
    return Meeting(keys.meeting, SfuPlace(keys.sfu.url, keys.sfu.room, keys.sfu.token))


def services(runtime: Any) -> list[Any]:
    guard = guard_of(runtime)
    changed = asyncio.Event()
    # Every key change publishes the guard's state fragment: use it as the wake-up.
    guard.add_state_sink(lambda _fragment: changed.set())
    config = runtime.config
    media = None
    try:
        from agent.media.service import media_of

        media = media_of(runtime)
    except ModuleNotFoundError:
        pass
    open_camera = None
    specs = config.hal.camera_specs()
    if media is not None and media.pipelines:
        _log.warning("webrtc_audio_only", reason="the RTP pipeline ([media] sink) owns the cameras")
    elif specs:
        import hal

        inventory = hal.open_inventory(specs, backend=config.hal.backend, presets_dir=config.hal.presets_dir)
        first = specs[0].id

        def open_camera() -> Any:
            return inventory.open_camera(first)

    service = WebRtcService(
        display=runtime.device_id,
        key_source=guard.key_source,
        opener=guard.sframe.opener,
        meeting=lambda: _meeting_of(guard.keys.keys),
        changed=changed,
        open_camera=open_camera,
        report=lambda fragment: runtime.update_state(webrtc=fragment),
    )
    return [service]
