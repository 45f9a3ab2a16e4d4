"""Video encoders and decoders through PyAV (FFmpeg).

Encoders are opened along a preference list of FFmpeg encoder names (hardware first, typically):
each candidate is really opened and made to encode one frame before it is chosen, because hardware
encoders (``h264_nvenc``, ``h264_v4l2m2m``, ``h264_vaapi``) are compiled in everywhere but work only where
their device is. Each candidate that fails is logged (``encoder_fallback``) with the reason.

Packet timestamps (``pts``) are in 1/90000 s (the RTP video clock) and follow the frames' capture
times, so dropped frames leave a gap instead of stretching time.
"""

from __future__ import annotations

__all__ = [
    "CODEC_FAMILIES",
    "KNOWN_ENCODERS",
    "DecodedFrame",
    "Decoder",
    "PyAvDecoder",
    "PyAvEncoder",
    "PyAvEncoderFactory",
    "family_of",
    "open_decoder",
    "quiet_codec_libraries",
]

import collections
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any, Protocol

import av
import av.error
import structlog

from hal.errors import DecoderError, EncoderError, UnsupportedError
from hal.sim.faults import SimEncoderFaults
from hal.stamps import Stamp, read_stamp
from hal.types import EncodedPacket, EncoderCapabilities, EncoderConfig, Frame


def quiet_codec_libraries() -> None:
    """Keep codec libraries' own chatter (SVT-AV1's banner, FFmpeg's info lines) off the terminal.

    Command-line tools print results on stdout and our logs on stderr; a 20-line library banner on
    every encoder open buries both. SVT-AV1 logs to stderr itself, past FFmpeg's log level, and reads
    ``SVT_LOG`` when an encoder is created (1 = errors only). FFmpeg's own messages stay off unless
    someone turned PyAV's logging on. Call it before any codec opens; an ``SVT_LOG`` the user set wins.
    """
    os.environ.setdefault("SVT_LOG", "1")

log = structlog.get_logger()

CLOCK = 90_000
CODEC_FAMILIES = ("h264", "h265", "vp8", "vp9", "av1")

# FFmpeg encoder name -> (codec family, hardware?)
KNOWN_ENCODERS: dict[str, tuple[str, bool]] = {
    "h264_v4l2m2m": ("h264", True),
    "h264_vaapi": ("h264", True),
    "h264_nvenc": ("h264", True),
    "h264_qsv": ("h264", True),
    "libx264": ("h264", False),
    "libopenh264": ("h264", False),
    "hevc_v4l2m2m": ("h265", True),
    "hevc_vaapi": ("h265", True),
    "hevc_nvenc": ("h265", True),
    "libx265": ("h265", False),
    "libvpx": ("vp8", False),
    "vp8_v4l2m2m": ("vp8", True),
    "vp8_vaapi": ("vp8", True),
    "libvpx-vp9": ("vp9", False),
    "vp9_vaapi": ("vp9", True),
    "libsvtav1": ("av1", False),
    "libaom-av1": ("av1", False),
    "av1_nvenc": ("av1", True),
    "av1_vaapi": ("av1", True),
}

# Default candidates per family when the caller gives no preference list.
_DEFAULT_ORDER: dict[str, tuple[str, ...]] = {
    "h264": ("h264_v4l2m2m", "h264_vaapi", "h264_nvenc", "libx264", "libopenh264"),
    "h265": ("hevc_v4l2m2m", "hevc_vaapi", "hevc_nvenc", "libx265"),
    "vp8": ("vp8_v4l2m2m", "libvpx"),
    "vp9": ("vp9_vaapi", "libvpx-vp9"),
    "av1": ("av1_nvenc", "libsvtav1", "libaom-av1"),
}

_DECODERS: dict[str, tuple[str, ...]] = {
    "h264": ("h264",),
    "h265": ("hevc",),
    "vp8": ("vp8", "libvpx"),
    "vp9": ("vp9", "libvpx-vp9"),
    "av1": ("libdav1d", "av1", "libaom-av1"),
}

_PROBE_SIZE = (320, 240)
# Encoders that may read an input picture after encode() returned (libsvtav1 copies it in its own
# threads; hardware encoders map it): the last few input frames stay referenced so their buffers are
# neither freed nor reused by the camera's pool meanwhile.
_HOLD_INPUT = 8


def family_of(codec: str) -> str:
    """The codec family ("h264", ...) of a family name or an FFmpeg encoder name.

    Raises:
        UnsupportedError: unknown codec.
    """
    if codec in CODEC_FAMILIES:
        return codec
    if codec in ("hevc", "h.265"):
        return "h265"
    known = KNOWN_ENCODERS.get(codec)
    if known is None:
        raise UnsupportedError(f"unknown codec {codec!r}; families: {', '.join(CODEC_FAMILIES)}")
    return known[0]


def _options(name: str, config: EncoderConfig) -> dict[str, str]:
    """Encoder private options: low latency means no B-frames, no lookahead, fast presets."""
    ll = config.low_latency
    if name == "libx264":
        opts = {"preset": config.preset or "veryfast", "forced-idr": "1"}
        if ll:
            opts["tune"] = "zerolatency"
        return opts
    if name == "libx265":
        # repeat-headers: VPS/SPS/PPS before every keyframe, so a receiver can join at any of them.
        params = "log-level=error:repeat-headers=1"
        opts = {"preset": config.preset or "ultrafast", "forced-idr": "1", "x265-params": params}
        if ll:
            opts["tune"] = "zerolatency"
        return opts
    if name in ("libvpx", "libvpx-vp9"):
        opts = {
            "deadline": "realtime" if ll else "good",
            "cpu-used": "8",
            "lag-in-frames": "0" if ll else "16",
        }
        if name == "libvpx-vp9":
            opts["row-mt"] = "1"
        return opts
    if name == "libsvtav1":
        opts = {"preset": "8"}  # faster presets skip superblocks and garble stamps
        if ll:
            opts["svtav1-params"] = "pred-struct=1:rc=2"  # low-delay prediction structure needs CBR
        return opts
    if name.endswith("_nvenc"):
        return {"preset": "p1", "tune": "ll" if ll else "hq", "zerolatency": "1" if ll else "0"}
    return {}


def _open_context(name: str, config: EncoderConfig) -> Any:
    """Create and open an FFmpeg encoder context, translating every failure to EncoderError."""
    try:
        codec = av.codec.Codec(name, "w")
    except (av.error.FFmpegError, ValueError) as exc:
        raise EncoderError(f"{name}: not available in this FFmpeg build ({exc})") from exc
    try:
        ctx: Any = av.CodecContext.create(codec)
        ctx.width = config.width
        ctx.height = config.height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = Fraction(1, CLOCK)
        ctx.framerate = Fraction(config.fps, 1)
        ctx.bit_rate = config.bitrate_kbps * 1000
        ctx.gop_size = config.keyframe_interval
        if config.low_latency:
            ctx.max_b_frames = 0
        ctx.options = _options(name, config)
        ctx.open()
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise EncoderError(f"{name}: failed to open: {exc}") from exc
    return ctx


class PyAvEncoder:
    """One open FFmpeg encoder (implements ``hal.protocols.Encoder``). Not thread-safe: one caller."""

    def __init__(
        self, name: str, config: EncoderConfig, faults: SimEncoderFaults | None = None, *, context: Any = None
    ) -> None:
        family, hardware = KNOWN_ENCODERS.get(name, (family_of(config.codec), False))
        self._name = name
        self._caps = EncoderCapabilities(name=name, codec=family, hardware=hardware)
        self._config = replace(config, codec=family)
        self._faults = faults
        self._ctx = context if context is not None else _open_context(name, config)
        self._first_ns: int | None = None
        self._last_pts = -1
        self._keyframe_requested = False
        self._pending: dict[int, tuple[int, int]] = {}  # pts -> (frame seq, capture ns)
        self._closed = False
        hold = _HOLD_INPUT if (hardware or name == "libsvtav1") else 0
        self._held: collections.deque[Any] = collections.deque(maxlen=max(hold, 1))
        self._hold = hold > 0

    @property
    def capabilities(self) -> EncoderCapabilities:
        return self._caps

    @property
    def config(self) -> EncoderConfig:
        return self._config

    def request_keyframe(self) -> None:
        self._keyframe_requested = True

    def _pts(self, capture_ns: int) -> int:
        if self._first_ns is None:
            self._first_ns = capture_ns
        pts = (capture_ns - self._first_ns) * CLOCK // 1_000_000_000
        pts = max(pts, self._last_pts + 1)  # strictly increasing even if the clock stepped back
        self._last_pts = pts
        return pts

    def encode(self, frame: Frame) -> list[EncodedPacket]:
        """Encode one frame (blocking: call it off the event loop).

        Raises:
            EncoderError: the encoder failed (the caller may reopen or fall back).
        """
        if self._closed:
            raise EncoderError(f"{self._name}: encoder is closed")
        if self._faults is not None:
            self._faults.before_encode(self._name)
        image = frame.image
        if not isinstance(image, av.VideoFrame):
            raise EncoderError(f"{self._name}: frame image is a {type(image).__name__}, not an av.VideoFrame")
        cfg = self._config
        try:
            if image.format.name != "yuv420p" or image.width != cfg.width or image.height != cfg.height:
                image = image.reformat(width=cfg.width, height=cfg.height, format="yuv420p")
            pts = self._pts(frame.capture_ns)
            image.pts = pts
            image.time_base = Fraction(1, CLOCK)
            if self._keyframe_requested:
                image.pict_type = av.video.frame.PictureType.I
                self._keyframe_requested = False
            else:
                image.pict_type = av.video.frame.PictureType.NONE
            self._pending[pts] = (frame.seq, frame.capture_ns)
            if self._hold:
                self._held.append(image)
            packets = self._ctx.encode(image)
        except (av.error.FFmpegError, ValueError) as exc:
            raise EncoderError(f"{self._name}: encode failed: {exc}") from exc
        return self._convert(packets)

    def flush(self) -> list[EncodedPacket]:
        if self._closed:
            return []
        try:
            packets = self._ctx.encode(None)
        except (av.error.FFmpegError, ValueError) as exc:
            raise EncoderError(f"{self._name}: flush failed: {exc}") from exc
        return self._convert(packets)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pending.clear()
            self._held.clear()
            self._ctx = None

    def _convert(self, packets: Sequence[Any]) -> list[EncodedPacket]:
        out = []
        for packet in packets:
            pts = packet.pts if packet.pts is not None else self._last_pts
            seq, capture_ns = self._pending.pop(pts, (-1, 0))
            out.append(
                EncodedPacket(
                    data=bytes(packet),
                    pts=int(pts),
                    keyframe=bool(packet.is_keyframe),
                    frame_seq=seq,
                    capture_ns=capture_ns,
                    codec=self._caps.codec,
                )
            )
        if len(self._pending) > 256:  # an encoder that drops frames must not grow this forever
            for stale in sorted(self._pending)[:-64]:
                del self._pending[stale]
        return out


def _trial(name: str, config: EncoderConfig) -> None:
    """Open ``name`` and encode one black frame: the only proof that a (hardware) encoder works here.

    Raises:
        EncoderError: why it does not.
    """
    ctx = _open_context(name, config)
    frame = av.VideoFrame(config.width, config.height, "yuv420p")
    for plane, value in zip(frame.planes, (16, 128, 128), strict=True):
        plane.update(bytes([value]) * plane.buffer_size)
    frame.pts = 0
    frame.time_base = Fraction(1, CLOCK)
    try:
        ctx.encode(frame)
        ctx.encode(None)
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise EncoderError(f"{name}: failed to encode a test frame: {exc}") from exc


class PyAvEncoderFactory:
    """Opens PyAV encoders along a preference list (implements ``hal.protocols.EncoderFactory``).

    ``faults`` (a :class:`hal.sim.SimEncoderFaults`) applies to every encoder this factory opens.
    """

    def __init__(self, faults: SimEncoderFaults | None = None) -> None:
        self.faults = faults if faults is not None else SimEncoderFaults()
        self._lock = threading.Lock()
        self._probed: list[EncoderCapabilities] | None = None
        self._trials: dict[tuple[str, int, int], str | None] = {}  # -> None (works) or the reason

    def _trial_cached(self, name: str, config: EncoderConfig) -> None:
        key = (name, config.width, config.height)
        with self._lock:
            known = self._trials.get(key, "")
        if known == "":
            try:
                _trial(name, config)
                known = None
            except EncoderError as exc:
                known = str(exc)
            with self._lock:
                self._trials[key] = known
        if known is not None:
            raise EncoderError(known)

    def probe(self) -> list[EncoderCapabilities]:
        """Every known encoder that really opens and encodes a frame here (cached after the first call)."""
        with self._lock:
            if self._probed is not None:
                return list(self._probed)
        found = []
        width, height = _PROBE_SIZE
        for name, (family, hardware) in KNOWN_ENCODERS.items():
            if name not in av.codecs_available:
                continue
            try:
                self._trial_cached(name, EncoderConfig(codec=family, width=width, height=height, fps=30))
            except EncoderError as exc:
                log.info("encoder_unavailable", encoder=name, reason=str(exc))
                continue
            found.append(EncoderCapabilities(name=name, codec=family, hardware=hardware))
        with self._lock:
            self._probed = found
        return list(found)

    def candidates(self, config: EncoderConfig, preference: Sequence[str]) -> list[str]:
        """The encoder names ``open`` would try, in order."""
        if preference:
            return list(dict.fromkeys(preference))
        if config.codec in KNOWN_ENCODERS:
            return [config.codec]
        return list(_DEFAULT_ORDER[family_of(config.codec)])

    def open(self, config: EncoderConfig, preference: Sequence[str] = ()) -> PyAvEncoder:
        """Open the first encoder of ``preference`` (or of ``config.codec``'s defaults) that works.

        The preference list is authoritative: it may mix families (e.g. hardware H.264, then VP8);
        the opened encoder's ``capabilities.codec`` and ``config.codec`` say which family it produces.

        Raises:
            EncoderError: none opened (the message lists each candidate's reason).
        """
        reasons: list[str] = []
        for name in self.candidates(config, preference):
            if name not in KNOWN_ENCODERS:
                reason = f"{name}: unknown encoder name"
            else:
                family = KNOWN_ENCODERS[name][0]
                try:
                    self._trial_cached(name, config)
                    encoder = PyAvEncoder(name, replace(config, codec=family), self.faults)
                except EncoderError as exc:
                    reason = str(exc)
                else:
                    if reasons:
                        log.info("encoder_selected", encoder=name, after_fallbacks=len(reasons))
                    return encoder
            log.warning("encoder_fallback", encoder=name, reason=reason)
            reasons.append(reason)
        raise EncoderError("no encoder opened: " + "; ".join(reasons))


# --- decoding -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class DecodedFrame:
    """A decoded picture and the stamp read from it (``None`` when unreadable)."""

    image: Any = field(repr=False)  # av.VideoFrame
    width: int
    height: int
    pts: int | None
    keyframe: bool
    stamp: Stamp | None


class Decoder(Protocol):
    def decode(self, data: bytes) -> list[DecodedFrame]: ...
    def flush(self) -> list[DecodedFrame]: ...


class PyAvDecoder:
    """Decodes one codec's packets (as produced by :class:`PyAvEncoder`) and reads their stamps."""

    def __init__(self, codec: str) -> None:
        try:
            family: str | None = family_of(codec)
        except UnsupportedError:
            family = None  # an exact FFmpeg decoder name
        names = _DECODERS[family] if family is not None else (codec,)
        errors = []
        for name in names:
            try:
                self._ctx: Any = av.CodecContext.create(name, "r")
                self._ctx.open()
                self.name = name
                break
            except (av.error.FFmpegError, ValueError) as exc:
                errors.append(f"{name}: {exc}")
        else:
            raise UnsupportedError(f"no decoder for {codec!r}: " + "; ".join(errors))

    def decode(self, data: bytes) -> list[DecodedFrame]:
        """Decode one packet (an access unit); returns the pictures it completed.

        Raises:
            DecoderError: the data is not decodable.
        """
        try:
            frames = self._ctx.decode(av.Packet(data))
        except (av.error.FFmpegError, ValueError) as exc:
            raise DecoderError(f"{self.name}: cannot decode packet: {exc}") from exc
        return [self._convert(f) for f in frames]

    def flush(self) -> list[DecodedFrame]:
        try:
            frames = self._ctx.decode(None)
        except (av.error.FFmpegError, ValueError) as exc:
            raise DecoderError(f"{self.name}: flush failed: {exc}") from exc
        return [self._convert(f) for f in frames]

    @staticmethod
    def _convert(frame: Any) -> DecodedFrame:
        return DecodedFrame(
            image=frame,
            width=frame.width,
            height=frame.height,
            pts=frame.pts,
            keyframe=bool(frame.key_frame),
            stamp=read_stamp(frame),
        )


def open_decoder(codec: str) -> PyAvDecoder:
    """A decoder for ``codec`` (a family such as "h264", or an FFmpeg decoder name).

    Raises:
        UnsupportedError: no decoder for it.
    """
    return PyAvDecoder(codec)
