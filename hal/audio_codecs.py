"""Opus through PyAV's libopus: 48 kHz mono, 20 ms frames, in-band FEC and DTX on.

The encoder turns each 20 ms :class:`hal.types.AudioFrame` into one Opus packet (an ``EncodedPacket``
with codec ``"opus"``, ``pts`` in 1/48000 s, and the frame's ``seq``/``capture_ns`` carried through).
With DTX a silent stretch produces (almost) no packets. FEC (``fec=1`` with an expected
``packet_loss``) makes libopus put a low-bitrate copy of each frame into the next packet; PyAV does
not expose libopus's ``decode_fec`` flag, so the receiver here conceals a lost frame instead
(:meth:`OpusDecoder.conceal`: fading noise at the last frame's level); a decoder with FEC access
can use the redundancy already in the stream.
"""

from __future__ import annotations

__all__ = ["OpusDecoder", "OpusEncoder"]

import collections
from fractions import Fraction
from typing import Any

import av
import av.error
import numpy as np

from hal.errors import DecoderError, EncoderError
from hal.types import AUDIO_FRAME_SAMPLES, AUDIO_RATE, AudioFrame, EncodedPacket


class OpusEncoder:
    """One libopus encoder. Not thread-safe: one caller."""

    def __init__(self, *, bitrate_kbps: int = 64, expected_loss_pct: int = 5) -> None:
        try:
            ctx: Any = av.CodecContext.create("libopus", "w")
            ctx.sample_rate = AUDIO_RATE
            ctx.layout = "mono"
            ctx.format = "s16"
            ctx.time_base = Fraction(1, AUDIO_RATE)
            ctx.bit_rate = bitrate_kbps * 1000
            ctx.options = {
                "application": "voip",
                "frame_duration": "20",
                "fec": "1",
                "packet_loss": str(expected_loss_pct),
                "dtx": "1",
            }
            ctx.open()
        except (av.error.FFmpegError, ValueError) as exc:
            raise EncoderError(f"libopus: failed to open: {exc}") from exc
        self._ctx = ctx
        self._pending: collections.deque[tuple[int, int, int]] = collections.deque(maxlen=64)
        self._pts = 0

    def encode(self, frame: AudioFrame) -> list[EncodedPacket]:
        samples = np.asarray(frame.samples, dtype=np.int16)
        if samples.shape != (AUDIO_FRAME_SAMPLES,):
            raise EncoderError(f"libopus: frames must be {AUDIO_FRAME_SAMPLES} samples")
        av_frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        av_frame.sample_rate = AUDIO_RATE
        av_frame.time_base = Fraction(1, AUDIO_RATE)
        av_frame.pts = self._pts
        self._pending.append((self._pts, frame.seq, frame.capture_ns))
        self._pts += AUDIO_FRAME_SAMPLES
        try:
            packets = self._ctx.encode(av_frame)
        except av.error.FFmpegError as exc:
            raise EncoderError(f"libopus: encode failed: {exc}") from exc
        out = []
        for packet in packets:
            data = bytes(packet)
            # One packet per 20 ms input frame, in order (its pts is shifted back by libopus's
            # lookahead, so it is matched by order, not by pts).
            pts, seq, capture_ns = (
                self._pending.popleft() if self._pending else (self._pts, frame.seq, frame.capture_ns)
            )
            if len(data) <= 2:
                continue  # DTX: a comfort-noise-only packet carries nothing worth sending
            out.append(
                EncodedPacket(
                    data=data, pts=pts, keyframe=True, frame_seq=seq, capture_ns=capture_ns, codec="opus"
                )
            )
        return out

    def close(self) -> None:
        self._pending.clear()


class OpusDecoder:
    """One libopus decoder; :meth:`conceal` makes up a frame for a lost packet."""

    def __init__(self) -> None:
        try:
            ctx: Any = av.CodecContext.create("libopus", "r")
            ctx.sample_rate = AUDIO_RATE
            ctx.layout = "mono"
            ctx.open()
        except (av.error.FFmpegError, ValueError) as exc:
            raise DecoderError(f"libopus: failed to open decoder: {exc}") from exc
        self._ctx = ctx
        self._last = np.zeros(AUDIO_FRAME_SAMPLES, dtype=np.int16)
        self._concealed_run = 0
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_RATE)
        self._rng = np.random.default_rng(5)

    def decode(self, data: bytes) -> AudioFrame:
        try:
            frames = self._ctx.decode(av.Packet(data))
            chunks = [f2.to_ndarray().reshape(-1) for f in frames for f2 in self._resampler.resample(f)]
        except (av.error.FFmpegError, ValueError) as exc:
            raise DecoderError(f"opus packet undecodable: {exc}") from exc
        samples = np.concatenate(chunks).astype(np.int16) if chunks else np.zeros(0, np.int16)
        if len(samples) != AUDIO_FRAME_SAMPLES:
            samples = (
                np.resize(samples, AUDIO_FRAME_SAMPLES)
                if len(samples)
                else np.zeros(AUDIO_FRAME_SAMPLES, np.int16)
            )
        self._last = samples
        self._concealed_run = 0
        return AudioFrame(device_id="opus", seq=0, capture_ns=0, samples=samples)

    def conceal(self) -> AudioFrame:
        """A frame for a lost packet: noise at the level of the last frame, fading out over three
        frames (a gap filled with sound of the same loudness is heard as less of a break than
        silence; noise rather than a repeat, so nothing that was said is heard twice)."""
        self._concealed_run += 1
        gain = max(0.0, 1.0 - self._concealed_run / 3)
        level = float(np.sqrt(np.mean(self._last.astype(np.float64) ** 2))) * gain * 0.5
        noise = self._rng.standard_normal(AUDIO_FRAME_SAMPLES) * level
        samples = np.clip(noise, -32768, 32767).astype(np.int16)
        return AudioFrame(device_id="opus", seq=0, capture_ns=0, samples=samples, concealed=True)
