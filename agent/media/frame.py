"""The RTP-independent media frame: a 4-byte frame header, then the SFrame ciphertext.

The frame header is the SFrame *metadata* (RFC 9605 §4.4.3: AAD = SFrame header || metadata), so
the codec and the keyframe flag travel in clear (a receiver needs them before decrypting) yet cannot
be altered without failing authentication::

    version (1) = 1 | codec (1) | flags (1) | reserved (1) = 0 | SFrame ciphertext (header, ct, tag)
    flags: bit 0 keyframe, bit 1 unprotected (a benchmark-only plain copy; receivers reject it)
"""

from __future__ import annotations

__all__ = [
    "CODEC_IDS",
    "FLAG_KEYFRAME",
    "FLAG_UNPROTECTED",
    "FRAME_HEADER_LEN",
    "FRAME_VERSION",
    "FrameHeader",
    "split_frame",
]

from dataclasses import dataclass

from agent.media.errors import MalformedFrameError

FRAME_VERSION = 1
FRAME_HEADER_LEN = 4
FLAG_KEYFRAME = 0x01
FLAG_UNPROTECTED = 0x02
_KNOWN_FLAGS = FLAG_KEYFRAME | FLAG_UNPROTECTED
CODEC_IDS: dict[str, int] = {"h264": 1, "h265": 2, "vp8": 3, "vp9": 4, "av1": 5, "opus": 6}
_CODEC_NAMES = {v: k for k, v in CODEC_IDS.items()}


@dataclass(frozen=True, slots=True)
class FrameHeader:
    codec: str
    keyframe: bool
    unprotected: bool = False

    def encode(self) -> bytes:
        codec_id = CODEC_IDS.get(self.codec)
        if codec_id is None:
            raise ValueError(f"unknown codec {self.codec!r}; known: {', '.join(CODEC_IDS)}")
        flags = (FLAG_KEYFRAME if self.keyframe else 0) | (FLAG_UNPROTECTED if self.unprotected else 0)
        return bytes((FRAME_VERSION, codec_id, flags, 0))

    @classmethod
    def decode(cls, data: bytes) -> FrameHeader:
        """Raises MalformedFrameError for anything but a well-formed version-1 header."""
        if len(data) < FRAME_HEADER_LEN:
            raise MalformedFrameError("shorter than the frame header")
        version, codec_id, flags, reserved = data[:FRAME_HEADER_LEN]
        if version != FRAME_VERSION:
            raise MalformedFrameError(f"frame version {version}")
        codec = _CODEC_NAMES.get(codec_id)
        if codec is None:
            raise MalformedFrameError(f"unknown codec id {codec_id}")
        if flags & ~_KNOWN_FLAGS or reserved:
            raise MalformedFrameError("reserved bits set")
        return cls(
            codec=codec, keyframe=bool(flags & FLAG_KEYFRAME), unprotected=bool(flags & FLAG_UNPROTECTED)
        )


def split_frame(payload: bytes) -> tuple[FrameHeader, bytes, bytes]:
    """(header, header bytes = SFrame metadata, body = SFrame ciphertext). Raises MalformedFrameError."""
    header = FrameHeader.decode(payload)
    body = payload[FRAME_HEADER_LEN:]
    if not body:
        raise MalformedFrameError("empty frame body")
    return header, payload[:FRAME_HEADER_LEN], body
