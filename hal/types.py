"""Value types shared by every HAL backend (frozen, slotted, keyword-only where it helps)."""

from __future__ import annotations

__all__ = [
    "AUDIO_FRAME_SAMPLES",
    "AUDIO_RATE",
    "AudioFrame",
    "AudioSpec",
    "CameraCapabilities",
    "CameraSpec",
    "ControlInfo",
    "DeviceInfo",
    "DisplaySpec",
    "EncodedPacket",
    "EncoderCapabilities",
    "EncoderConfig",
    "Frame",
    "FrameMode",
    "HotplugEvent",
    "IndicatorState",
    "PtzPosition",
    "Screen",
    "Tile",
]

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass(frozen=True, slots=True, kw_only=True)
class CameraSpec:
    """One configured camera, mirroring ``agent.config.CameraSpec`` (hal never imports agent).

    A ``sim`` camera is fully described here; a ``v4l2`` camera names its ``device`` node and the mode
    to negotiate (the nearest the device offers is used).
    """

    id: str
    backend: Literal["sim", "v4l2"] = "sim"
    device: Path | None = None
    width: int = 1280
    height: int = 720
    fps: int = 30
    pattern: Literal["bars", "gradient", "noise", "room"] = "bars"
    pixel_format: str | None = None

    def __post_init__(self) -> None:
        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            raise ValueError(f"camera {self.id!r}: width and height must be even and at least 16")
        if not 1 <= self.fps <= 120:
            raise ValueError(f"camera {self.id!r}: fps must be 1..120")
        if self.backend == "v4l2" and self.device is None:
            raise ValueError(f"camera {self.id!r}: a v4l2 camera needs device (e.g. /dev/video0)")


@dataclass(frozen=True, slots=True)
class FrameMode:
    pixel_format: str  # e.g. "yuv420p", "yuyv422", "mjpeg"
    width: int
    height: int
    fps: float


@dataclass(frozen=True, slots=True)
class ControlInfo:
    name: str  # "pan_absolute", "tilt_absolute", "zoom_absolute", "privacy", ...
    minimum: int
    maximum: int
    step: int
    default: int


@dataclass(frozen=True, slots=True)
class CameraCapabilities:
    modes: tuple[FrameMode, ...]
    controls: tuple[ControlInfo, ...] = ()
    ptz: bool = False
    privacy_shutter: bool = False
    indicator: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceInfo:
    id: str
    kind: Literal["camera", "encoder", "microphone", "speaker", "display"]
    backend: str  # "sim", "v4l2", "pyav"
    name: str
    path: str | None = None  # /dev/videoN for v4l2
    bus: str | None = None  # e.g. usb-0000:00:14.0-1
    capabilities: CameraCapabilities | EncoderCapabilities | None = None


@dataclass(frozen=True, slots=True)
class HotplugEvent:
    action: Literal["added", "removed"]
    device: DeviceInfo


@dataclass(frozen=True, slots=True)
class PtzPosition:
    pan: int = 0  # arc-seconds, as V4L2_CID_PAN_ABSOLUTE
    tilt: int = 0  # arc-seconds, as V4L2_CID_TILT_ABSOLUTE
    zoom: int = 100  # V4L2_CID_ZOOM_ABSOLUTE units; 100 = no zoom on the sim


class IndicatorState(enum.Enum):
    OFF = "off"
    ON = "on"  # in use: frames are leaving the device
    NOTICE = "notice"  # an announcement (e.g. an intervention) is being shown


@dataclass(frozen=True, slots=True, eq=False)
class Frame:
    """One captured picture.

    ``image`` is the backend-native picture (an ``av.VideoFrame`` for every backend here); the agent
    never looks inside it, it only hands it to an encoder or a HAL helper.
    """

    camera_id: str
    seq: int  # capture sequence number, from 0 at open
    capture_ns: int  # time.time_ns() at capture (wall clock, comparable across processes)
    width: int
    height: int
    pixel_format: str
    image: Any = field(repr=False)


@dataclass(frozen=True, slots=True)
class EncoderConfig:
    codec: str  # "h264", "h265", "vp8", "vp9", "av1" or an exact FFmpeg encoder name
    width: int
    height: int
    fps: int
    bitrate_kbps: int = 2500
    keyframe_interval: int = 60
    low_latency: bool = True
    # Speed preset for encoders that have one (libx264/libx265: "ultrafast" ... "medium");
    # None: the HAL's default for that encoder.
    preset: str | None = None


@dataclass(frozen=True, slots=True)
class EncoderCapabilities:
    name: str  # FFmpeg encoder name, e.g. "libx264"
    codec: str  # "h264", ...
    hardware: bool
    max_width: int | None = None
    max_height: int | None = None


@dataclass(frozen=True, slots=True, eq=False)
class EncodedPacket:
    data: bytes = field(repr=False)
    pts: int  # in 1/90000 s
    keyframe: bool
    frame_seq: int  # Frame.seq this packet came from
    capture_ns: int  # Frame.capture_ns, carried through for latency figures
    codec: str  # "h264", ...


# --- audio and display ---------------------------------------------------------------------------

AUDIO_RATE = 48_000  # Hz: Opus's native rate, and what every audio device here is opened at
AUDIO_FRAME_SAMPLES = 960  # 20 ms at 48 kHz: one Opus frame


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioSpec:
    """One configured microphone or speaker (mono, 48 kHz, 20 ms frames).

    A ``sim`` device is fully described here; an ``alsa`` device names its ALSA PCM (``default``,
    ``hw:1,0``, ``plughw:CARD=Loopback,DEV=0``, or a PCM defined in an asoundrc).
    """

    id: str
    backend: Literal["sim", "alsa"] = "sim"
    device: str | None = None  # ALSA PCM name
    sample_rate: int = AUDIO_RATE
    channels: int = 1

    def __post_init__(self) -> None:
        if self.sample_rate != AUDIO_RATE:
            raise ValueError(f"audio device {self.id!r}: only {AUDIO_RATE} Hz is supported")
        if self.channels != 1:
            raise ValueError(f"audio device {self.id!r}: only mono is supported")
        if self.backend == "alsa" and not self.device:
            raise ValueError(f"audio device {self.id!r}: an alsa device needs device (e.g. default)")


@dataclass(frozen=True, slots=True, eq=False)
class AudioFrame:
    """20 ms of mono 48 kHz audio, signed 16-bit samples (``samples``: int16 ndarray of 960).

    ``seq`` counts frames of the capturing device; ``capture_ns`` is the wall-clock time of the first
    sample. ``concealed`` marks audio a decoder made up for a lost packet (packet loss concealment).
    """

    device_id: str
    seq: int
    capture_ns: int
    samples: Any = field(repr=False)
    concealed: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class DisplaySpec:
    """One configured display. ``sdl`` opens SDL2 with ``driver`` (``kmsdrm`` on room hardware with no
    window system, ``x11``/``wayland`` on a desktop, ``offscreen``/``dummy`` in tests; None: SDL's
    choice); ``sim`` composes in memory only."""

    id: str
    backend: Literal["sim", "sdl"] = "sim"
    width: int = 1280
    height: int = 720
    fullscreen: bool = False
    driver: str | None = None

    def __post_init__(self) -> None:
        if self.width < 64 or self.height < 64 or self.width % 2 or self.height % 2:
            raise ValueError(f"display {self.id!r}: width and height must be even and at least 64")


@dataclass(frozen=True, slots=True, eq=False)
class Tile:
    """One picture on the screen: a remote room (or the self-view) with its name.

    ``image`` is an ``av.VideoFrame`` (None: nothing received yet, a placeholder is drawn).
    """

    name: str
    image: Any = field(repr=False, default=None)
    locked: bool = False


@dataclass(frozen=True, slots=True, eq=False)
class Screen:
    """What a display shows: remote rooms in a grid, the self-view small in a corner, and notices.

    ``encrypted`` False draws a red "NOT END-TO-END ENCRYPTED" banner (it should never be seen);
    ``locked`` draws a "ROOM LOCKED" banner.
    """

    remote: tuple[Tile, ...] = ()
    self_view: Tile | None = None
    encrypted: bool = True
    locked: bool = False
