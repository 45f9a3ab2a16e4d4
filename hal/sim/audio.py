"""Simulated microphones and speakers, with fault switches and an acoustic echo path.

A :class:`SimMicrophone` delivers one 20 ms frame per wall-clock slot (``hal.audio_stamps``): the
frame's samples are the stamp tone of its slot plus whatever the room's air carries to it (an
:class:`EchoPath` from a speaker, a near-end talker). A :class:`SimSpeaker` plays frames on a virtual
output clock (a device buffer that drains in real time) and verifies what it plays: stamps read,
unreadable, slots missing, out of order, concealed frames and mouth-to-ear latency.

Fault switches (``device.faults``): ``unplug()``/``replug()``, ``stall(seconds)`` (no frames),
``silence(seconds)`` (zeros, like a muted or dead capsule), ``glitch(frames)`` (noise bursts).
"""

from __future__ import annotations

__all__ = [
    "EchoPath",
    "SimAudioFaults",
    "SimMicrophone",
    "SimSpeaker",
    "SpeakerReport",
    "speech_like",
]

import asyncio
import collections
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import numpy as np
import numpy.typing as npt
import structlog

from hal.audio_stamps import FRAME_NS, AudioStampReader, capture_ns_of, slot_of, stamp_tone
from hal.errors import DeviceGoneError, UnsupportedError
from hal.types import AUDIO_FRAME_SAMPLES, AUDIO_RATE, AudioFrame, AudioSpec, DeviceInfo

log = structlog.get_logger()

I16 = npt.NDArray[np.int16]
F64 = npt.NDArray[np.float64]
_N = AUDIO_FRAME_SAMPLES
_PLAUSIBLE = 500  # slots (10 s): a stamp farther from the previous one is taken as garbled


class SimAudioFaults:
    """Fault switches of one simulated audio device (thread-safe flags)."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.plugged = True
        self.stall_until = 0.0
        self.silent_until = 0.0
        self._glitches = 0
        self._lock = threading.Lock()

    def unplug(self) -> None:
        self.plugged = False
        log.info("sim_fault", device=self.device_id, fault="unplug")

    def replug(self) -> None:
        self.plugged = True
        log.info("sim_fault", device=self.device_id, fault="replug")

    def stall(self, seconds: float) -> None:
        self.stall_until = time.monotonic() + seconds
        log.info("sim_fault", device=self.device_id, fault="stall", seconds=seconds)

    def silence(self, seconds: float) -> None:
        self.silent_until = time.monotonic() + seconds
        log.info("sim_fault", device=self.device_id, fault="silence", seconds=seconds)

    def glitch(self, frames: int = 1) -> None:
        with self._lock:
            self._glitches += frames
        log.info("sim_fault", device=self.device_id, fault="glitch", frames=frames)

    def take_glitch(self) -> bool:
        with self._lock:
            if self._glitches > 0:
                self._glitches -= 1
                return True
            return False


def speech_like(seconds: float, *, seed: int = 1, level: float = 6000.0) -> I16:
    """A speech-like test signal: noise shaped by moving formants, voiced pitch pulses, and a
    syllable envelope with pauses (what an echo canceller must cope with: not a steady tone)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * AUDIO_RATE)
    t = np.arange(n) / AUDIO_RATE
    pitch = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = np.cumsum(pitch / AUDIO_RATE)
    voiced = (np.diff(np.floor(phase), prepend=0) > 0).astype(np.float64) * 8.0
    x = voiced + 0.3 * rng.standard_normal(n)
    out = np.zeros(n)
    for f0, bw, gain in ((700, 130, 1.0), (1200, 150, 0.6), (2600, 250, 0.3)):
        fc = f0 * (1 + 0.25 * np.sin(2 * np.pi * 0.9 * t + f0))
        r = np.exp(-np.pi * bw / AUDIO_RATE)
        y1 = y2 = 0.0
        y = np.empty(n)
        c = 2 * r * np.cos(2 * np.pi * fc / AUDIO_RATE)
        for i in range(n):  # a two-pole resonator with a moving centre frequency
            v = x[i] + c[i] * y1 - r * r * y2
            y[i] = v
            y2, y1 = y1, v
        out += gain * y
    syllables = np.clip(np.sin(2 * np.pi * 3.0 * t) + 0.3, 0, None) * (np.sin(2 * np.pi * 0.25 * t) > -0.6)
    out *= syllables
    out *= level / (np.sqrt(np.mean(out**2)) + 1e-9)
    result: I16 = np.clip(out, -32767, 32767).astype(np.int16)
    return result


@dataclass
class EchoPath:
    """The air between a room's speaker and its microphone: a delay, an attenuation and a short
    low-pass room response (a linear echo path, as echo cancellers model it)."""

    delay_ms: float = 30.0
    gain_db: float = -6.0
    taps: int = 64
    seed: int = 3
    _pending: collections.deque[I16] = field(default_factory=collections.deque)
    _history: F64 = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        decay = np.exp(-np.arange(self.taps) / (self.taps / 5))
        ir = rng.standard_normal(self.taps) * decay
        ir[0] = abs(ir[0]) + 1.0
        ir /= np.sqrt(np.sum(ir**2))
        self.response: F64 = ir * 10 ** (self.gain_db / 20)
        self._delay = int(self.delay_ms * AUDIO_RATE / 1000)
        self._history = np.zeros(self._delay + self.taps)

    def speaker_out(self, samples: npt.NDArray[Any]) -> None:
        """What the speaker put into the air (one frame)."""
        self._pending.append(np.asarray(samples, dtype=np.int16))

    def mic_in(self) -> F64:
        """The echo reaching the microphone during the next frame."""
        played = self._pending.popleft().astype(np.float64) if self._pending else np.zeros(_N)
        hist = np.concatenate((self._history, played))
        end = len(hist) - self._delay
        seg = hist[end - _N - self.taps + 1 : end]
        echo: F64 = np.convolve(seg, self.response, mode="valid")
        self._history = hist[-(self._delay + self.taps + _N) :]
        return echo


class SimMicrophone:
    """A simulated microphone (implements ``hal.protocols.Microphone``).

    Args:
        spec: a ``sim`` AudioSpec.
        air: extra sound reaching the capsule per frame (called with the slot; e.g. an echo path
            and a near-end talker), mixed over the stamp tone.
        stamps: carry the stamp tone (off: only ``air``, e.g. to measure an echo canceller).
    """

    def __init__(
        self, spec: AudioSpec, *, air: Callable[[int], F64] | None = None, stamps: bool = True
    ) -> None:
        if spec.backend != "sim":
            raise UnsupportedError(f"not a sim microphone (backend {spec.backend!r})", device=spec.id)
        self.spec = spec
        self.faults = SimAudioFaults(spec.id)
        self.air = air
        self.stamps = stamps
        self.frames_captured = 0
        self._open = False
        self._rng = np.random.default_rng(11)

    @property
    def info(self) -> DeviceInfo:
        return DeviceInfo(id=self.spec.id, kind="microphone", backend="sim", name="Simulated microphone")

    async def __aenter__(self) -> Self:
        if not self.faults.plugged:
            raise DeviceGoneError("microphone unplugged", device=self.spec.id)
        self._open = True
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._open = False

    def render(self, slot: int) -> AudioFrame:
        """The frame of one slot (no pacing: tests and benchmarks call it directly)."""
        x = stamp_tone(slot).astype(np.float64) if self.stamps else np.zeros(_N)
        if self.air is not None:
            x = x + self.air(slot)
        if time.monotonic() < self.faults.silent_until:
            x = np.zeros(_N)
        if self.faults.take_glitch():
            x = self._rng.integers(-20000, 20000, size=_N).astype(np.float64)
        self.frames_captured += 1
        samples = np.clip(x, -32768, 32767).astype(np.int16)
        return AudioFrame(device_id=self.spec.id, seq=slot, capture_ns=capture_ns_of(slot), samples=samples)

    async def frames(self) -> AsyncIterator[AudioFrame]:
        """One frame per 20 ms wall-clock slot, delivered when the slot has been captured (at its end);
        a consumer that falls behind loses slots, as a real capture buffer overruns."""
        if not self._open:
            raise UnsupportedError("microphone is not open (use `async with`)", device=self.spec.id)
        slot = slot_of(time.time_ns())
        while True:
            while time.monotonic() < self.faults.stall_until:
                self._check()
                await asyncio.sleep(0.02)
                slot = slot_of(time.time_ns())
            self._check()
            wait_ns = capture_ns_of(slot + 1) - time.time_ns()
            if wait_ns > 0:
                await asyncio.sleep(wait_ns / 1e9)
            self._check()
            now_slot = slot_of(time.time_ns())
            if now_slot - slot > 5:  # overrun: the oldest audio is gone
                slot = now_slot - 1
            yield self.render(slot)
            slot += 1

    def _check(self) -> None:
        if not self.faults.plugged:
            raise DeviceGoneError("microphone unplugged", device=self.spec.id)


@dataclass(slots=True)
class SpeakerReport:
    frames_played: int = 0
    frames_concealed: int = 0
    stamps_read: int = 0
    stamps_unreadable: int = 0
    slots_missing: int = 0
    out_of_order: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        from statistics import quantiles

        lat = sorted(self.latencies_ms)
        p50 = lat[len(lat) // 2] if lat else None
        p99 = quantiles(lat, n=100)[98] if len(lat) >= 2 else p50
        return {
            "frames_played": self.frames_played,
            "frames_concealed": self.frames_concealed,
            "stamps_read": self.stamps_read,
            "stamps_unreadable": self.stamps_unreadable,
            "slots_missing": self.slots_missing,
            "out_of_order": self.out_of_order,
            "latency_ms_p50": None if p50 is None else round(p50, 2),
            "latency_ms_p99": None if p99 is None else round(p99, 2),
        }


class SimSpeaker:
    """A simulated speaker that verifies what it plays (implements ``hal.protocols.Speaker``).

    Playback runs on a virtual device clock: a frame starts playing when the previous one ends, or
    now if the buffer ran dry; more than ``target_buffer_ms`` queued is played 10 % faster until it
    drains back; mouth-to-ear latency is the start of play minus the stamp's capture
    time. ``echo`` (an :class:`EchoPath`) receives every frame played, for echo tests. ``on_played``
    (if set) is called with (capture_ns, play_ns) of every stamp read, for A/V skew.
    """

    def __init__(
        self,
        spec: AudioSpec,
        *,
        echo: EchoPath | None = None,
        max_buffer_ms: int = 200,
        target_buffer_ms: int = 30,
    ) -> None:
        if spec.backend != "sim":
            raise UnsupportedError(f"not a sim speaker (backend {spec.backend!r})", device=spec.id)
        self.spec = spec
        self.faults = SimAudioFaults(spec.id)
        self.echo = echo
        self.report = SpeakerReport()
        self.on_played: Callable[[int, int], None] | None = None
        self._reader = AudioStampReader()
        self._playout_end_ns = 0
        self._max_buffer_ns = max_buffer_ms * 1_000_000
        self._target_ns = target_buffer_ms * 1_000_000
        self._last_slot: int | None = None
        self._lock = threading.Lock()

    @property
    def info(self) -> DeviceInfo:
        return DeviceInfo(id=self.spec.id, kind="speaker", backend="sim", name="Simulated speaker")

    async def __aenter__(self) -> Self:
        if not self.faults.plugged:
            raise DeviceGoneError("speaker unplugged", device=self.spec.id)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def queued_ns(self) -> int:
        """Audio queued in the device buffer now (what a frame played now waits before it sounds)."""
        with self._lock:
            return max(0, self._playout_end_ns - time.time_ns())

    def play(self, frame: AudioFrame, now_ns: int | None = None) -> None:
        if not self.faults.plugged:
            raise DeviceGoneError("speaker unplugged", device=self.spec.id)
        now = time.time_ns() if now_ns is None else now_ns
        with self._lock:
            start = max(now, self._playout_end_ns)
            if start - now > self._max_buffer_ns:
                start = now  # buffer overflow: the device drops what was queued
            elif start - now > self._target_ns:
                # More queued than needed (a burst after a stall): play 10 % faster until back at the
                # target, as a playout buffer's time compression does, so one delay spike does not
                # add latency for the rest of the call.
                start -= min(start - now - self._target_ns, FRAME_NS // 10)
            self._playout_end_ns = start + FRAME_NS
            rep = self.report
            rep.frames_played += 1
            if frame.concealed:
                rep.frames_concealed += 1
            if self.echo is not None:
                self.echo.speaker_out(frame.samples)
            # The reader lags by the codec's delay: it says where each stamped frame began, counted
            # back from the end of what was fed, and that end plays at start + 20 ms.
            end_ns = start + FRAME_NS
            for slot, back in self._reader.feed_with_offsets(frame.samples, now):
                if slot is None or (self._last_slot is not None and abs(slot - self._last_slot) > _PLAUSIBLE):
                    rep.stamps_unreadable += 1  # unreadable, or a garbled window that passed the CRC
                    continue
                rep.stamps_read += 1
                if self._last_slot is not None:
                    if slot <= self._last_slot:
                        rep.out_of_order += 1
                        continue
                    rep.slots_missing += slot - self._last_slot - 1
                self._last_slot = slot
                play_ns = end_ns - back * 1_000_000_000 // AUDIO_RATE
                rep.latencies_ms.append((play_ns - capture_ns_of(slot)) / 1e6)
                if self.on_played is not None:
                    self.on_played(capture_ns_of(slot), play_ns)
