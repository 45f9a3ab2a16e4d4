"""The per-codec SFrame rule for WebRTC: which bytes of an encoded frame stay clear, and sealing.

RFC 9605 §4.2 protects whole encoded frames before packetization. Over WebRTC two parties on the path
must still read the first bytes of a frame (draft-ietf-avtcore-rtp-sframe, "SFrame per frame"):

- the SFU (Janus) reads VP8's payload header to tell keyframes (it answers subscribers' PLIs and
  marks recordings with them), and
- the browser's depacketizer and jitter buffer read the keyframe bit and, on keyframes, the picture
  size (VP8 §9.1 / RFC 6386: 3-byte frame tag, then on keyframes the start code 9d 01 2a and 4 bytes of
  width/height).

So, as Jitsi's and LiveKit's end-to-end encryption do, a VP8 frame keeps its first **10 bytes clear on a
keyframe and 3 otherwise**; the keyframe bit is bit 0 of byte 0 (0 = keyframe). The clear bytes are the
SFrame *metadata* (§4.4.3: AAD = SFrame header || metadata), so changing any of them makes the frame
fail authentication: nobody on the path can turn a delta frame into a "keyframe" or resize a picture.
The protected frame on the wire is ``clear || SFrame header || ciphertext || tag``.

Opus has nothing an SFU or depacketizer reads: the whole frame is protected (no metadata).
H.264 is not sent by the room (its rule needs NAL-unit-aware protection with emulation prevention;
see docs/webrtc.md): the room offers VP8 only, so no frame ever leaves under a rule it lacks.
"""

from __future__ import annotations

__all__ = ["OPUS", "VP8", "FrameRule", "clear_bytes", "protect", "unprotect"]

from dataclasses import dataclass

from agent.media.key_source import FrameOpener, FrameSealer
from agent.webrtc.errors import FrameRuleError

VP8_KEYFRAME_CLEAR = 10
VP8_DELTA_CLEAR = 3


@dataclass(frozen=True, slots=True)
class FrameRule:
    codec: str  # "vp8" or "opus"


VP8 = FrameRule("vp8")
OPUS = FrameRule("opus")


def clear_bytes(rule: FrameRule, frame: bytes) -> int:
    """How many leading bytes of ``frame`` stay clear (and are authenticated as SFrame metadata).

    Raises:
        FrameRuleError: a VP8 frame shorter than its clear header (no valid VP8 frame is).
    """
    if rule is OPUS:
        return 0
    if not frame:
        raise FrameRuleError(rule.codec, "empty")
    # RFC 6386 §9.1: frame tag bit 0 is the inverse keyframe flag.
    n = VP8_KEYFRAME_CLEAR if frame[0] & 0x01 == 0 else VP8_DELTA_CLEAR
    if len(frame) <= n:
        raise FrameRuleError(rule.codec, f"{len(frame)} bytes, shorter than its {n} clear bytes")
    return n


def protect(rule: FrameRule, sealer: FrameSealer, frame: bytes) -> bytes:
    """``clear || SFrame(metadata=clear, plaintext=rest)`` (RFC 9605 §4.4.3 with metadata)."""
    n = clear_bytes(rule, frame)
    head = bytes(frame[:n])
    return head + sealer.seal(head, bytes(frame[n:]))


def unprotect(rule: FrameRule, opener: FrameOpener, data: bytes) -> bytes:
    """The encoded frame back from :func:`protect`'s output.

    Raises:
        FrameRuleError: too short for its clear header.
        agent.e2ee.sframe.SFrameError: unknown KID, bad tag, replay (RFC 9605 §4.4.4).
    """
    n = clear_bytes(rule, data)
    head = bytes(data[:n])
    return head + opener.open(head, bytes(data[n:]))
