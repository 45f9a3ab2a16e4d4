"""SFrame inside aiortc's codecs: frames are sealed after encoding and opened before decoding.

aiortc has no encoded-frame transform API (the browser's ``RTCRtpScriptTransform``). Its senders get
their encoder from ``aiortc.rtcrtpsender.get_encoder`` and its receivers their decoder from
``aiortc.rtcrtpreceiver.get_decoder``; :func:`bind` points both names at factories that return the
subclasses below, once per process. The seam sits exactly where RFC 9605 §4.2 puts SFrame: the VP8
encoder's whole frame is sealed before ``_packetize`` splits it into RTP payloads, and the receiver's
reassembled frame (after the jitter buffer) is opened before libvpx sees it. So no aiortc code, no SRTP
layer and nothing in the SFU ever handles a decrypted frame.

One room is one process with one sender key (:class:`agent.media.key_source.KeySource`) and one receive
context that picks keys by KID, so a process-wide binding is the natural shape. Without a sender key
nothing is sent (the frame is dropped, as the RTP pipeline does): media never leaves unencrypted.
"""

from __future__ import annotations

__all__ = ["FrameCounters", "SFrameBinding", "bind", "binding", "unbind"]

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiortc import rtcrtpreceiver, rtcrtpsender
from aiortc.codecs import get_decoder as _plain_decoder
from aiortc.codecs import get_encoder as _plain_encoder
from aiortc.codecs.base import Decoder, Encoder
from aiortc.codecs.opus import OpusDecoder, OpusEncoder
from aiortc.codecs.vpx import Vp8Decoder, Vp8Encoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av.frame import Frame

from agent.e2ee.errors import SFrameError
from agent.media.key_source import FrameOpener, KeySource
from agent.webrtc.errors import FrameRuleError
from agent.webrtc.frames import OPUS, VP8, FrameRule, protect, unprotect

_log = structlog.get_logger()


@dataclass
class FrameCounters:
    """Per-kind counts, read by the participant's report (thread-safe via the binding's lock)."""

    sealed: Counter[str] = field(default_factory=Counter)
    opened: Counter[str] = field(default_factory=Counter)
    dropped_no_key: Counter[str] = field(default_factory=Counter)
    open_failed: Counter[str] = field(default_factory=Counter)  # "<kind>:<reason>"


class SFrameBinding:
    """The keys and counters the codecs use. ``opener`` may be None (send-only)."""

    def __init__(self, key_source: KeySource, opener: FrameOpener | None) -> None:
        self.key_source = key_source
        self.opener = opener
        self.counters = FrameCounters()
        self._lock = threading.Lock()

    def seal(self, rule: FrameRule, frame: bytes) -> bytes | None:
        sealer, _epoch, _gen = self.key_source.current()
        if sealer is None:
            with self._lock:
                self.counters.dropped_no_key[rule.codec] += 1
            return None
        try:
            out = protect(rule, sealer, frame)
        except (SFrameError, FrameRuleError) as exc:
            _log.warning("webrtc_seal_failed", codec=rule.codec, error=str(exc))
            return None
        with self._lock:
            self.counters.sealed[rule.codec] += 1
        return out

    def open(self, rule: FrameRule, data: bytes) -> bytes | None:
        if self.opener is None:
            return None
        try:
            out = unprotect(rule, self.opener, data)
        except SFrameError as exc:
            with self._lock:
                self.counters.open_failed[f"{rule.codec}:{exc.reason}"] += 1
            return None
        except FrameRuleError:
            with self._lock:
                self.counters.open_failed[f"{rule.codec}:short"] += 1
            return None
        with self._lock:
            self.counters.opened[rule.codec] += 1
        return out

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            c = self.counters
            return {
                "sealed": dict(c.sealed),
                "opened": dict(c.opened),
                "dropped_no_key": dict(c.dropped_no_key),
                "open_failed": dict(c.open_failed),
            }


_binding: SFrameBinding | None = None


class SFrameVp8Encoder(Vp8Encoder):
    """libvpx through aiortc; each whole encoded frame is sealed before packetization (§4.2)."""

    def __init__(self, binding: SFrameBinding) -> None:
        super().__init__()
        self._sframe = binding

    def _packetize(self, buffer: bytes, picture_id: int) -> list[bytes]:  # type: ignore[override]
        if not buffer:
            return []
        sealed = self._sframe.seal(VP8, buffer)
        if sealed is None:
            return []
        return Vp8Encoder._packetize(sealed, picture_id)


class SFrameVp8Decoder(Vp8Decoder):
    def __init__(self, binding: SFrameBinding) -> None:
        super().__init__()
        self._sframe = binding

    def decode(self, encoded_frame: JitterFrame) -> list[Frame]:
        plain = self._sframe.open(VP8, encoded_frame.data)
        if plain is None:
            return []
        return super().decode(JitterFrame(plain, encoded_frame.timestamp))


class SFrameOpusEncoder(OpusEncoder):
    def __init__(self, binding: SFrameBinding) -> None:
        super().__init__()
        self._sframe = binding

    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        payloads, timestamp = super().encode(frame, force_keyframe)
        sealed = [s for p in payloads if (s := self._sframe.seal(OPUS, p)) is not None]
        return sealed, timestamp


class SFrameOpusDecoder(OpusDecoder):
    def __init__(self, binding: SFrameBinding) -> None:
        super().__init__()
        self._sframe = binding

    def decode(self, encoded_frame: JitterFrame) -> list[Frame]:
        plain = self._sframe.open(OPUS, encoded_frame.data)
        if plain is None:
            return []
        return super().decode(JitterFrame(plain, encoded_frame.timestamp))


def _encoder(codec: RTCRtpCodecParameters) -> Encoder:
    b = _binding
    mime = codec.mimeType.lower()
    if b is None:
        return _plain_encoder(codec)
    if mime == "video/vp8":
        return SFrameVp8Encoder(b)
    if mime == "audio/opus":
        return SFrameOpusEncoder(b)
    # No SFrame rule for this codec: refuse rather than send it in the clear.
    raise ValueError(f"no SFrame rule for {mime}; the room sends VP8 and Opus only")


def _decoder(codec: RTCRtpCodecParameters) -> Decoder:
    b = _binding
    mime = codec.mimeType.lower()
    if b is None:
        return _plain_decoder(codec)
    if mime == "video/vp8":
        return SFrameVp8Decoder(b)
    if mime == "audio/opus":
        return SFrameOpusDecoder(b)
    raise ValueError(f"no SFrame rule for {mime}")


def bind(new: SFrameBinding) -> SFrameBinding:
    """Make every aiortc sender and receiver of this process seal/open with ``new``'s keys."""
    global _binding
    _binding = new
    sender_mod: Any = rtcrtpsender
    receiver_mod: Any = rtcrtpreceiver
    sender_mod.get_encoder = _encoder
    receiver_mod.get_decoder = _decoder
    return new


def unbind() -> None:
    """Plain codecs again (only for the benchmark's no-SFrame baseline)."""
    global _binding
    _binding = None


def binding() -> SFrameBinding | None:
    return _binding
