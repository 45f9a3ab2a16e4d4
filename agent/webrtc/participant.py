"""The room as a WebRTC participant: publishes its camera (VP8) and audio (Opus) to a Janus VideoRoom
and subscribes to every other publisher, with SFrame end to end (:mod:`agent.webrtc.codecs`).

Janus VideoRoom flow (HTTP API): ``join`` as publisher -> ``publish`` with an offer marked
``e2ee: true`` (a room created with ``require_e2ee`` refuses others) -> answer; for each publisher in
the room (listed in ``joined`` and later ``event``s) a subscriber handle ``join``s with
``streams: [{feed}]``, gets Janus's offer and answers with ``start``.
"""

from __future__ import annotations

__all__ = ["CameraTrack", "LowLayerTrack", "Participant", "ReceiveCounts", "ToneTrack"]

import asyncio
import collections
import contextlib
import fractions
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
import structlog
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from agent.webrtc.janus import JanusHandle, JanusSession
from agent.webrtc.joinkeys import SfuPlace
from hal.errors import HalError
from hal.stamps import write_stamp
from hal.types import Frame

_log = structlog.get_logger()
VIDEO_CLOCK = 90_000
_VIDEO_TB = fractions.Fraction(1, VIDEO_CLOCK)
_AUDIO_RATE = 48_000
_AUDIO_SAMPLES = 960  # 20 ms


class CameraTrack(MediaStreamTrack):
    """HAL camera frames as an aiortc video track (pts from the capture clock, 90 kHz)."""

    kind = "video"

    def __init__(self, frames: AsyncIterator[Frame]) -> None:
        super().__init__()
        self._frames = frames
        self.low: LowLayerTrack | None = None
        self._t0: int | None = None
        self._last_seq: int | None = None
        self.sent = 0
        # (seq after which, how many) camera frames never reached the encoder (the sim sensor drops
        # frames a slow consumer misses), so a receiver can tell them from frames lost on the way.
        self.gaps: list[tuple[int, int]] = []

    async def recv(self) -> av.VideoFrame:
        try:
            frame = await anext(self._frames)
        except StopAsyncIteration as exc:
            self.stop()
            raise MediaStreamError from exc
        if self._t0 is None:
            self._t0 = frame.capture_ns
        if self._last_seq is not None and frame.seq > self._last_seq + 1:
            self.gaps.append((self._last_seq, frame.seq - self._last_seq - 1))
        self._last_seq = frame.seq
        image: av.VideoFrame = frame.image
        image.pts = (frame.capture_ns - self._t0) * VIDEO_CLOCK // 1_000_000_000
        image.time_base = _VIDEO_TB
        self.sent += 1
        if self.low is not None:
            self.low.offer(frame, image.pts)
        return image


class LowLayerTrack(MediaStreamTrack):
    """A second, half-size layer of a :class:`CameraTrack` (aiortc has no simulcast: the SFU gets two
    separately encoded streams and each subscriber picks one). The stamp is written again at the small
    size so a receiver of this layer can read it too."""

    kind = "video"

    def __init__(self, high: CameraTrack) -> None:
        super().__init__()
        high.low = self
        self._queue: collections.deque[tuple[Frame, int]] = collections.deque(maxlen=2)
        self._ready = asyncio.Event()
        self.sent = 0

    def offer(self, frame: Frame, pts: int) -> None:
        self._queue.append((frame, pts))  # drop-oldest: the low layer never holds the camera back
        self._ready.set()

    async def recv(self) -> av.VideoFrame:
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        frame, pts = self._queue.popleft()
        small: av.VideoFrame = frame.image.reformat(
            width=frame.width // 2 // 2 * 2, height=frame.height // 2 // 2 * 2
        )
        with contextlib.suppress(HalError):
            write_stamp(small, frame.seq, frame.capture_ns)  # too small for a stamp: none
        small.pts = pts
        small.time_base = _VIDEO_TB
        self.sent += 1
        return small


class ToneTrack(MediaStreamTrack):
    """48 kHz mono 20 ms frames of a quiet 440 Hz tone, paced in real time (the room's microphone
    stand-in until the HAL microphone is wired to this transport)."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._n = 0
        self._start: float | None = None
        self.sent = 0

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._n * _AUDIO_SAMPLES / _AUDIO_RATE
        if (delay := due - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        t = (np.arange(_AUDIO_SAMPLES) + self._n * _AUDIO_SAMPLES) / _AUDIO_RATE
        pcm = (np.sin(2 * math.pi * 440 * t) * 3000).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = _AUDIO_RATE
        frame.pts = self._n * _AUDIO_SAMPLES
        frame.time_base = fractions.Fraction(1, _AUDIO_RATE)
        self._n += 1
        self.sent += 1
        return frame


@dataclass
class ReceiveCounts:
    """What this room received from one remote publisher (decrypted and decoded)."""

    display: str
    video_frames: int = 0
    audio_frames: int = 0
    video_size: tuple[int, int] | None = None
    first_frame_s: float | None = None
    layers: dict[str, int] = field(default_factory=dict)  # "WxH" -> decoded frames

    def as_dict(self) -> dict[str, Any]:
        return {
            "display": self.display,
            "video_frames": self.video_frames,
            "audio_frames": self.audio_frames,
            "video_size": None if self.video_size is None else list(self.video_size),
            "layers": dict(self.layers),
        }


def _prefer(pc: RTCPeerConnection, kind: str, mime: str) -> None:
    caps = RTCRtpSender.getCapabilities(kind)
    codecs = [c for c in caps.codecs if c.mimeType.lower() == mime]
    for t in pc.getTransceivers():
        if t.kind == kind:
            t.setCodecPreferences(codecs)


@dataclass
class Participant:
    """One room in one Janus VideoRoom. ``run`` publishes and subscribes until cancelled."""

    place: SfuPlace
    display: str
    video: MediaStreamTrack | None
    audio: MediaStreamTrack | None
    video_low: MediaStreamTrack | None = None
    layer: str = "high"  # which video layer to take from each publisher ("all": every layer)
    received: dict[int, ReceiveCounts] = field(default_factory=dict)
    publisher_id: int | None = None
    published: asyncio.Event = field(default_factory=asyncio.Event)

    def sent_counts(self) -> dict[str, Any]:
        """Frames handed to the encoders, and camera frames dropped before them (``[after_seq, n]``)."""
        video, audio = self.video, self.audio
        low = self.video_low
        return {
            "video_frames": video.sent if isinstance(video, CameraTrack) else 0,
            "video_frames_low": low.sent if isinstance(low, LowLayerTrack) else 0,
            "audio_frames": audio.sent if isinstance(audio, ToneTrack) else 0,
            "camera_gaps": [list(g) for g in video.gaps[-100:]] if isinstance(video, CameraTrack) else [],
        }

    async def run(self) -> None:
        async with JanusSession(self.place.url) as session, asyncio.TaskGroup() as tg:
            pub = await session.attach()
            joined = await pub.message(
                {
                    "request": "join",
                    "ptype": "publisher",
                    "room": self.place.room,
                    "display": self.display,
                    "pin": self.place.token,
                }
            )
            data = joined["plugindata"]["data"]
            self.publisher_id = int(data["id"])
            pcs: list[RTCPeerConnection] = []
            try:
                pc = RTCPeerConnection()
                pcs.append(pc)
                layers = []
                if self.video is not None:
                    layers.append((pc.addTransceiver(self.video, direction="sendonly"), "high"))
                if self.video_low is not None:
                    layers.append((pc.addTransceiver(self.video_low, direction="sendonly"), "low"))
                _prefer(pc, "video", "video/vp8")
                if self.audio is not None:
                    pc.addTransceiver(self.audio, direction="sendonly")
                    _prefer(pc, "audio", "audio/opus")
                await pc.setLocalDescription(await pc.createOffer())
                offer = {"type": "offer", "sdp": pc.localDescription.sdp, "e2ee": True}
                # Subscribers choose a layer by its description (aiortc cannot send simulcast).
                descriptions = [{"mid": t.mid, "description": d} for t, d in layers]
                reply = await pub.message(
                    {"request": "publish", "display": self.display, "descriptions": descriptions}, offer
                )
                answer = reply.get("jsep")
                if not isinstance(answer, dict):
                    raise RuntimeError("janus publish: no answer")
                await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
                self.published.set()
                _log.info("webrtc_published", room=self.place.room, publisher=self.publisher_id)
                for p in data.get("publishers", []):
                    tg.create_task(self._subscribe(session, p, pcs), name=f"subscribe_{p.get('id')}")
                while True:
                    event = await pub.events.get()
                    pdata = event.get("plugindata", {}).get("data", {})
                    for p in pdata.get("publishers", []) or []:
                        if int(p["id"]) not in self.received:
                            tg.create_task(self._subscribe(session, p, pcs), name=f"subscribe_{p['id']}")
            finally:
                for c in pcs:
                    with contextlib.suppress(Exception):
                        await c.close()

    async def _subscribe(
        self, session: JanusSession, publisher: dict[str, Any], pcs: list[RTCPeerConnection]
    ) -> None:
        feed = int(publisher["id"])
        counts = self.received.setdefault(feed, ReceiveCounts(str(publisher.get("display", feed))))
        handle: JanusHandle = await session.attach()
        reply = await handle.message(
            {
                "request": "join",
                "ptype": "subscriber",
                "room": self.place.room,
                "pin": self.place.token,
                "streams": _choose_streams(publisher, self.layer),
            }
        )
        offer = reply.get("jsep")
        if not isinstance(offer, dict):
            raise RuntimeError("janus subscribe: no offer")
        pc = RTCPeerConnection()
        pcs.append(pc)
        done: list[asyncio.Task[None]] = []

        @pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            done.append(asyncio.ensure_future(_consume(track, counts)))

        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], offer["type"]))
        await pc.setLocalDescription(await pc.createAnswer())
        await handle.message({"request": "start"}, {"type": "answer", "sdp": pc.localDescription.sdp})
        _log.info("webrtc_subscribed", feed=feed, display=counts.display)
        try:
            await asyncio.Event().wait()
        finally:
            for t in done:
                t.cancel()


def _choose_streams(publisher: dict[str, Any], layer: str) -> list[dict[str, Any]]:
    """Janus ``streams`` to subscribe to: the audio and the video layer asked for (by description)."""
    feed = int(publisher["id"])
    streams = [s for s in publisher.get("streams") or [] if isinstance(s, dict) and not s.get("disabled")]
    videos = [s for s in streams if s.get("type") == "video"]
    if layer == "all" or not streams:
        return [{"feed": feed}]
    pick = next((s for s in videos if s.get("description") == layer), videos[0] if videos else None)
    out = [{"feed": feed, "mid": s["mid"]} for s in streams if s.get("type") == "audio"]
    if pick is not None:
        out.append({"feed": feed, "mid": pick["mid"]})
    return out


async def _consume(track: MediaStreamTrack, counts: ReceiveCounts) -> None:
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        if counts.first_frame_s is None:
            counts.first_frame_s = time.monotonic()
        if isinstance(frame, av.VideoFrame):
            counts.video_frames += 1
            counts.video_size = (frame.width, frame.height)
            size = f"{frame.width}x{frame.height}"
            counts.layers[size] = counts.layers.get(size, 0) + 1
        else:
            counts.audio_frames += 1
