"""ALSA microphones and speakers through PyAV's ``alsa`` input and output devices (FFmpeg libavdevice).

PyAV is already the HAL's media library, so ALSA needs no other binding. Capture reads the PCM in
FFmpeg's periods and re-cuts them into 20 ms frames; playback writes 20 ms frames as ``pcm_s16le``.
The blocking reads and writes run in a worker thread; capture hands frames to the event loop through
a bounded drop-oldest queue, playback takes them from one (a late frame is dropped, not queued up).
"""

from __future__ import annotations

__all__ = ["AlsaMicrophone", "AlsaSpeaker"]

import asyncio
import collections
import threading
import time
from collections.abc import AsyncIterator
from fractions import Fraction
from types import TracebackType
from typing import Any, Self

import av
import av.error
import numpy as np
import structlog

from hal.errors import DeviceGoneError, UnsupportedError
from hal.types import AUDIO_FRAME_SAMPLES, AUDIO_RATE, AudioFrame, AudioSpec, DeviceInfo

log = structlog.get_logger()
_QUEUE = 10  # frames (200 ms)


def _check(spec: AudioSpec) -> str:
    if spec.backend != "alsa" or not spec.device:
        raise UnsupportedError(f"not an alsa device (backend {spec.backend!r})", device=spec.id)
    return spec.device


class AlsaMicrophone:
    """An ALSA capture PCM (implements ``hal.protocols.Microphone``)."""

    def __init__(self, spec: AudioSpec) -> None:
        self.spec = spec
        self._pcm = _check(spec)
        self._container: Any = None
        self._queue: collections.deque[AudioFrame] = collections.deque(maxlen=_QUEUE)
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.frames_dropped = 0

    @property
    def info(self) -> DeviceInfo:
        return DeviceInfo(id=self.spec.id, kind="microphone", backend="alsa", name=self._pcm, path=self._pcm)

    async def __aenter__(self) -> Self:
        try:
            self._container = await asyncio.to_thread(
                av.open,
                self._pcm,
                format="alsa",
                mode="r",
                options={"sample_rate": str(AUDIO_RATE), "channels": "1"},
            )
        except (av.error.FFmpegError, OSError) as exc:
            raise DeviceGoneError(f"cannot open ALSA capture PCM: {exc}", device=self.spec.id) from exc
        self._stop.clear()
        self._thread = threading.Thread(target=self._read, name=f"alsa-capture[{self.spec.id}]", daemon=True)
        self._thread.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2.0)
            self._thread = None
        if self._container is not None:
            self._container.close()
            self._container = None

    def _read(self) -> None:
        pending = np.zeros(0, dtype=np.int16)
        seq = 0
        start_ns: int | None = None
        resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_RATE)
        try:
            stream = self._container.streams.audio[0]
            for packet in self._container.demux(stream):
                if self._stop.is_set():
                    return
                for decoded in packet.decode():
                    for frame in resampler.resample(decoded):
                        pending = np.concatenate((pending, frame.to_ndarray().reshape(-1)))
                while len(pending) >= AUDIO_FRAME_SAMPLES:
                    if start_ns is None:
                        start_ns = time.time_ns()
                    chunk, pending = pending[:AUDIO_FRAME_SAMPLES], pending[AUDIO_FRAME_SAMPLES:]
                    if len(self._queue) == self._queue.maxlen:
                        self.frames_dropped += 1
                    self._queue.append(
                        AudioFrame(
                            device_id=self.spec.id,
                            seq=seq,
                            capture_ns=start_ns + seq * 20_000_000,
                            samples=chunk.copy(),
                        )
                    )
                    seq += 1
                    self._ready.set()
        except (av.error.FFmpegError, OSError) as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def frames(self) -> AsyncIterator[AudioFrame]:
        """Captured frames. Raises DeviceGoneError when the PCM fails or ends (unplugged card)."""
        if self._container is None:
            raise UnsupportedError("microphone is not open (use `async with`)", device=self.spec.id)
        while True:
            while self._queue:
                yield self._queue.popleft()
            if self._thread is None or not self._thread.is_alive():
                raise DeviceGoneError(
                    f"ALSA capture ended: {self._error or 'end of stream'}", device=self.spec.id
                )
            self._ready.clear()
            if not self._queue:
                await asyncio.to_thread(self._ready.wait, 0.1)


class AlsaSpeaker:
    """An ALSA playback PCM (implements ``hal.protocols.Speaker``)."""

    def __init__(self, spec: AudioSpec) -> None:
        self.spec = spec
        self._pcm = _check(spec)
        self._container: Any = None
        self._stream: Any = None
        self._queue: collections.deque[AudioFrame] = collections.deque(maxlen=_QUEUE)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._pts = 0
        self.frames_played = 0
        self.frames_dropped = 0

    @property
    def info(self) -> DeviceInfo:
        return DeviceInfo(id=self.spec.id, kind="speaker", backend="alsa", name=self._pcm, path=self._pcm)

    async def __aenter__(self) -> Self:
        def open_() -> tuple[Any, Any]:
            container = av.open(self._pcm, format="alsa", mode="w")
            stream = container.add_stream("pcm_s16le", rate=AUDIO_RATE, layout="mono")
            return container, stream

        try:
            self._container, self._stream = await asyncio.to_thread(open_)
        except (av.error.FFmpegError, OSError) as exc:
            raise DeviceGoneError(f"cannot open ALSA playback PCM: {exc}", device=self.spec.id) from exc
        self._stop.clear()
        self._thread = threading.Thread(target=self._write, name=f"alsa-play[{self.spec.id}]", daemon=True)
        self._thread.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2.0)
            self._thread = None
        if self._container is not None:
            try:
                self._container.close()
            except (av.error.FFmpegError, OSError) as exc:
                log.warning("alsa_close_failed", device=self.spec.id, error=str(exc))
            self._container = None

    def queued_ns(self) -> int:
        """Audio waiting in this object's queue (ALSA's own buffer is not reported through PyAV)."""
        return len(self._queue) * 20_000_000

    def play(self, frame: AudioFrame) -> None:
        if self._error is not None or self._thread is None:
            raise DeviceGoneError(f"ALSA playback failed: {self._error or 'not open'}", device=self.spec.id)
        if len(self._queue) == self._queue.maxlen:
            self.frames_dropped += 1
        self._queue.append(frame)
        self._wake.set()

    def _write(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._queue:
                    self._wake.wait(0.1)
                    self._wake.clear()
                    continue
                frame = self._queue.popleft()
                out = av.AudioFrame.from_ndarray(
                    np.asarray(frame.samples, dtype=np.int16).reshape(1, -1), format="s16", layout="mono"
                )
                out.sample_rate = AUDIO_RATE
                out.time_base = Fraction(1, AUDIO_RATE)
                out.pts = self._pts
                self._pts += AUDIO_FRAME_SAMPLES
                for packet in self._stream.encode(out):
                    self._container.mux(packet)
                self.frames_played += 1
        except (av.error.FFmpegError, OSError) as exc:
            self._error = exc
            log.warning("alsa_playback_failed", device=self.spec.id, error=str(exc))
