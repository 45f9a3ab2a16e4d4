"""The room's WebRTC meeting service for ``roomagent run``.

While the installed meeting keys name an SFU (the customer-signed ``sfu`` object of the ``keys``
document) and hold this room's sender key, the room is a participant of that Janus VideoRoom: it
publishes its camera and audio and subscribes to everyone else, with SFrame end to end through the
process-wide codec binding (:mod:`agent.webrtc.codecs`). When the keys go (meeting stop, expiry,
lock) or name another place, the room leaves; with new keys it joins again.

Typed collaborators only: ``meeting()`` returns the current :class:`Meeting` (or None), ``changed`` is
set whenever it may have changed, ``open_camera()`` gives a HAL camera (None: audio only) and
``report`` receives the ``webrtc`` state fragment.
"""

from __future__ import annotations

__all__ = ["Meeting", "WebRtcService"]

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from agent.media.key_source import FrameOpener, KeySource
from agent.webrtc.codecs import SFrameBinding, bind
from agent.webrtc.joinkeys import SfuPlace
from agent.webrtc.participant import CameraTrack, LowLayerTrack, Participant, ToneTrack
from hal.protocols import Camera

_log = structlog.get_logger()
_REPORT_S = 2.0
_BEAT_S = 0.1
_RETRY_S = 3.0


@dataclass(frozen=True, slots=True)
class Meeting:
    meeting: str
    place: SfuPlace


class WebRtcService:
    name = "webrtc"

    def __init__(
        self,
        *,
        display: str,
        key_source: KeySource,
        opener: FrameOpener,
        meeting: Callable[[], Meeting | None],
        changed: asyncio.Event,
        open_camera: Callable[[], Camera] | None,
        report: Callable[[dict[str, Any]], None],
    ) -> None:
        self._display = display
        self._meeting = meeting
        self._changed = changed
        self._open_camera = open_camera
        self._report = report
        self._binding = bind(SFrameBinding(key_source, opener))
        self._participant: Participant | None = None
        self._current: Meeting | None = None
        self._error: str | None = None

    def describe(self) -> dict[str, Any]:
        p, m = self._participant, self._current
        return {
            "meeting": None if m is None else m.meeting,
            "sfu": None if m is None else {"url": m.place.url, "room": m.place.room},
            "joined": p is not None and p.published.is_set(),
            "error": self._error,
            "sframe": self._binding.snapshot(),
            "received": {} if p is None else {str(k): v.as_dict() for k, v in p.received.items()},
            "sent": {} if p is None else p.sent_counts(),
        }

    async def run(self, progress: Any) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._report_loop(progress), name="webrtc_report")
            while True:
                want = self._meeting()
                self._current = want
                if want is None:
                    self._changed.clear()
                    if self._meeting() is None:
                        await self._changed.wait()
                    continue
                task = tg.create_task(self._attend(want), name="webrtc_meeting")
                while not task.done() and self._meeting() == want:
                    self._changed.clear()
                    waiter = asyncio.ensure_future(self._changed.wait())
                    try:
                        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiter.cancel()
                if not task.done():
                    task.cancel()
                    await asyncio.wait({task})  # (not `await task`: our own cancellation must propagate)
                    _log.info("webrtc_left", meeting=want.meeting)
                    self._participant = None
                else:
                    await asyncio.sleep(_RETRY_S)  # it failed (logged); try again unless the keys change

    async def _attend(self, want: Meeting) -> None:
        """Be in the meeting until cancelled; a failure is recorded and logged, never raised (it would
        end the service's task group)."""
        self._error = None
        _log.info("webrtc_joining", meeting=want.meeting, sfu=want.place.url, room=want.place.room)
        try:
            audio = ToneTrack()
            if self._open_camera is None:
                self._participant = Participant(want.place, self._display, None, audio)
                await self._participant.run()
                return
            async with self._open_camera() as camera:
                video = CameraTrack(camera.frames())
                self._participant = Participant(
                    want.place, self._display, video, audio, video_low=LowLayerTrack(video)
                )
                try:
                    await self._participant.run()
                finally:
                    video.stop()
        except Exception as exc:  # foreign errors (Janus, aiortc, HAL): reported in state, retried
            self._error = f"{type(exc).__name__}: {exc}"
            _log.warning("webrtc_meeting_failed", meeting=want.meeting, error=self._error)

    async def _report_loop(self, progress: Any) -> None:
        # Beats often (the supervisor's stall timeout may be well under a second); the state fragment
        # goes out at most every _REPORT_S, and only when it changed.
        last: dict[str, Any] | None = None
        next_report = 0.0
        loop = asyncio.get_running_loop()
        while True:
            progress.beat()
            if loop.time() >= next_report:
                now = self.describe()
                if now != last:
                    self._report(now)
                    last = now
                next_report = loop.time() + _REPORT_S
            await asyncio.sleep(_BEAT_S)
