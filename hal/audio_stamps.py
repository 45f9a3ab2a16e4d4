"""Audio stamps: each 20 ms frame of sim audio carries its own capture slot, readable after Opus.

The video stamps (``hal.stamps``) are barcodes; audio needs a code that survives a perceptual codec.
Each frame carries 24 bits as six simultaneous tones, one per 4-bit symbol (16-ary FSK, one of 16
frequencies per symbol, the symbols' frequencies interleaved on a 100 Hz grid from 400 Hz to 10 kHz),
inside a raised-cosine envelope that is silent at the frame edges, so a reader a few hundred samples
off the frame boundary (the codec's delay) still sees one whole symbol. The 24 bits are the frame's
*slot* modulo 2^16 and a CRC-8 of it; a garbled stamp reads as ``None``, never as a wrong slot.

The slot is the wall-clock time of the frame's first sample divided by 20 ms, so the stamp gives the
capture time exactly (``capture_ns = slot * 20 ms``) once the reader picks the slot nearest to its own
clock (unambiguous for latencies under 21 minutes): loss, order, mouth-to-ear latency and A/V skew
all follow from it. Measured through libopus at 48-64 kbit/s (VOIP, FEC, DTX) about 95-100 % of the
stamps read back; the rest read as ``None`` (unreadable). A garbled window passes the CRC-8 about
once in 256 times, so a reader also checks that a slot is plausible (near the previous one).
"""

from __future__ import annotations

__all__ = [
    "FRAME_NS",
    "AudioStampReader",
    "capture_ns_of",
    "read_audio_stamp",
    "slot_of",
    "stamp_tone",
]

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from hal.types import AUDIO_FRAME_SAMPLES, AUDIO_RATE

FRAME_NS = 20_000_000
_N = AUDIO_FRAME_SAMPLES
_WINDOW = 480  # samples read: the flat middle of the envelope
_RAMP = (_N - _WINDOW) // 2  # where the read window starts in a frame
_EDGE = 96  # the envelope's ramps: the flat part is wider than the window, so a reader may be off
_SYMBOLS = 6
_BITS = 4
_BASE_BIN = 4  # x 100 Hz
_LEVEL = 0.8 * 32767 / _SYMBOLS  # peaks never clip (clipping would mix the tones)
_SLOT_MOD = 1 << 16
_SYNC_FRAMES = 4

F64 = npt.NDArray[np.float64]
I16 = npt.NDArray[np.int16]


def _envelope() -> F64:
    env = np.ones(_N)
    r = np.arange(_EDGE)
    env[:_EDGE] = 0.5 - 0.5 * np.cos(np.pi * r / _EDGE)
    env[_N - _EDGE :] = 0.5 + 0.5 * np.cos(np.pi * r / _EDGE)
    return env


_ENV = _envelope()
_T = np.arange(_N)


def _bin(symbol: int, value: int) -> int:
    return _BASE_BIN + symbol + _SYMBOLS * value


def _crc8(value: int) -> int:
    crc = 0
    for byte in (value >> 8, value & 0xFF):
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def slot_of(capture_ns: int) -> int:
    """The 20 ms wall-clock slot of a time."""
    return capture_ns // FRAME_NS


def capture_ns_of(slot: int) -> int:
    return slot * FRAME_NS


def stamp_tone(slot: int) -> I16:
    """The 960 samples that carry ``slot`` (int16, peak well below full scale)."""
    low = slot % _SLOT_MOD
    word = low | (_crc8(low) << 16)
    x = np.zeros(_N)
    step = AUDIO_RATE / _WINDOW  # 100 Hz grid: whole periods in the read window
    for i in range(_SYMBOLS):
        k = _bin(i, (word >> (_BITS * i)) & 0xF)
        x += np.sin(2 * np.pi * k * step * _T / AUDIO_RATE + 1.3 * i)
    out: I16 = (x * _ENV * _LEVEL).astype(np.int16)
    return out


def read_audio_stamp(window: npt.NDArray[Any], near_slot: int) -> int | None:
    """The slot carried by ``window`` (480 samples, the middle of a stamped frame), or None.

    ``near_slot`` is the reader's own slot now: the 16 carried bits are extended to the full slot
    nearest to it (RFC 3550 A.1 style, for a clock instead of a sequence number).
    """
    if len(window) != _WINDOW:
        return None
    spectrum = np.abs(np.fft.rfft(np.asarray(window, dtype=np.float64)))
    if spectrum[_BASE_BIN : _BASE_BIN + 16 * _SYMBOLS].max() < 1e3:
        return None  # silence or nearly so
    word = 0
    for i in range(_SYMBOLS):
        bins = [_bin(i, v) for v in range(16)]
        word |= int(np.argmax(spectrum[bins])) << (_BITS * i)
    low, crc = word & 0xFFFF, word >> 16
    if _crc8(low) != crc:
        return None
    base = near_slot - (near_slot % _SLOT_MOD)
    slot = base + low
    if slot - near_slot > _SLOT_MOD // 2:
        slot -= _SLOT_MOD
    elif near_slot - slot > _SLOT_MOD // 2:
        slot += _SLOT_MOD
    return slot


@dataclass(slots=True)
class AudioStampReader:
    """Reads the stamps of a continuous played stream, whatever its delay against the frame grid.

    A codec delays audio by a constant number of samples; the reader finds that phase once (trying
    offsets until a stamp reads), then reads one window per 960 samples, and searches again after
    several unreadable windows in a row. ``feed`` returns the slots read (None for unreadable).
    """

    phase: int | None = None
    _buf: F64 = field(default_factory=lambda: np.zeros(0))
    _misses: int = 0

    def feed(self, samples: npt.NDArray[Any], now_ns: int) -> list[int | None]:
        """Append played samples; the slots of the frames completed (None: unreadable)."""
        return [slot for slot, _ in self.feed_with_offsets(samples, now_ns)]

    def feed_with_offsets(self, samples: npt.NDArray[Any], now_ns: int) -> list[tuple[int | None, int]]:
        """Like :meth:`feed`, with each frame's start as a count of samples before the end of
        everything fed so far (so a player knows when that frame started playing)."""
        self._buf = np.concatenate((self._buf, np.asarray(samples, dtype=np.float64)))
        near = slot_of(now_ns)
        out: list[tuple[int | None, int]] = []
        if self.phase is None:
            if len(self._buf) < (_SYNC_FRAMES + 1) * _N:
                return out
            # Score every phase over a few frames; the middle of the best-scoring run is farthest
            # from the envelope's edges (one frame alone may read at a marginal phase).
            scores = {
                phase: sum(
                    read_audio_stamp(self._buf[o + _RAMP : o + _RAMP + _WINDOW], near) is not None
                    for o in range(phase, phase + _SYNC_FRAMES * _N, _N)
                )
                for phase in range(0, _N, 16)
            }
            top = max(scores.values())
            good = [phase for phase, score in scores.items() if score == top and score > 0]
            if not good:
                self._buf = self._buf[-_N:]
                return out
            self.phase = _middle_of_longest_run(good)
        while self.phase is not None and len(self._buf) >= self.phase + _N:
            start = self.phase + _RAMP
            slot = read_audio_stamp(self._buf[start : start + _WINDOW], near)
            out.append((slot, len(self._buf) - self.phase))
            self._buf = self._buf[_N:]
            self._misses = 0 if slot is not None else self._misses + 1
            if self._misses >= 5:
                self.phase, self._misses = None, 0
        return out


def _middle_of_longest_run(phases: list[int], step: int = 16) -> int:
    """The middle of the longest run of consecutive phases, circularly (the phase grid wraps at a
    frame: a run may start near the end of one frame and go on at the start of the next)."""
    present = set(phases)
    best_start, best_len = phases[0], 0
    for start in phases:
        if (start - step) % _N in present and len(present) * step < _N:
            continue  # not the start of a run
        length = 0
        while (start + length * step) % _N in present and length * step < _N:
            length += 1
        if length > best_len:
            best_start, best_len = start, length
    return (best_start + (best_len // 2) * step) % _N
