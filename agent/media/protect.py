"""The only producer of frames a sink accepts: SFrame-sealed frames (and benchmark plain copies).

A :class:`ProtectedFrame` cannot be built outside this module (its constructor checks a private
token), so a sink holding one knows it came through :func:`protect_frame`, i.e. its payload is the
frame header followed by an SFrame ciphertext (RFC 9605 §4.2: the whole encoded frame is encrypted;
the frame header is the authenticated metadata). :func:`plain_copy_frame` exists for the pipeline
benchmark only (``plain_copy=True``); it marks the frame unprotected and sinks refuse it while E2EE is
required, so a benchmark path can never leak plaintext into a real sink.
"""

from __future__ import annotations

__all__ = ["ProtectedFrame", "plain_copy_frame", "protect_frame"]

from dataclasses import dataclass, field
from typing import Protocol

from agent.media.errors import MalformedFrameError
from agent.media.frame import FrameHeader
from agent.media.key_source import FrameSealer
from agent.media.rtp import ticks_from_ns

_TOKEN = object()


class _Packet(Protocol):
    """What an encoded packet offers (``hal.types.EncodedPacket``)."""

    @property
    def data(self) -> bytes: ...
    @property
    def keyframe(self) -> bool: ...
    @property
    def frame_seq(self) -> int: ...
    @property
    def capture_ns(self) -> int: ...
    @property
    def codec(self) -> str: ...


@dataclass(frozen=True, slots=True)
class ProtectedFrame:
    """A frame ready for a sink: ``payload`` = frame header + SFrame ciphertext (or a plain copy)."""

    payload: bytes = field(repr=False)
    keyframe: bool
    ticks: int  # 90 kHz, from the capture time
    capture_ns: int
    frame_seq: int
    protected: bool
    kid: int | None
    _token: object = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._token is not _TOKEN:
            raise TypeError("ProtectedFrame is made only by agent.media.protect (protect_frame)")
        # dataclasses.replace() passes the token on: at least keep the flag and the header honest.
        try:
            header = FrameHeader.decode(self.payload)
        except MalformedFrameError as exc:
            raise TypeError(f"ProtectedFrame payload has no valid frame header: {exc.reason}") from exc
        if header.unprotected == self.protected:
            raise TypeError("ProtectedFrame.protected disagrees with its frame header")


def protect_frame(sealer: FrameSealer, packet: _Packet) -> ProtectedFrame:
    """Seal one encoded frame with the sender's key.

    Raises:
        agent.e2ee.sframe.SFrameError: sealing failed; nothing is produced.
        ValueError: unknown codec for the frame header.
    """
    header = FrameHeader(codec=packet.codec, keyframe=packet.keyframe).encode()
    ciphertext = sealer.seal(header, packet.data)  # RFC 9605 §4.4.3, metadata = frame header
    return ProtectedFrame(
        payload=header + ciphertext,
        keyframe=packet.keyframe,
        ticks=ticks_from_ns(packet.capture_ns),
        capture_ns=packet.capture_ns,
        frame_seq=packet.frame_seq,
        protected=True,
        kid=sealer.kid,
        _token=_TOKEN,
    )


def plain_copy_frame(packet: _Packet) -> ProtectedFrame:
    """Benchmark only: the same framing with a copy instead of encryption (marked unprotected)."""
    header = FrameHeader(codec=packet.codec, keyframe=packet.keyframe, unprotected=True).encode()
    return ProtectedFrame(
        payload=header + bytes(packet.data),
        keyframe=packet.keyframe,
        ticks=ticks_from_ns(packet.capture_ns),
        capture_ns=packet.capture_ns,
        frame_seq=packet.frame_seq,
        protected=False,
        kid=None,
        _token=_TOKEN,
    )
