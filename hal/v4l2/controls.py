"""V4L2 camera controls through linuxpy's ioctl wrappers and kernel structs.

VIDIOC_QUERY_EXT_CTRL enumerates (the extended form of VIDIOC_QUERYCTRL, walked with
V4L2_CTRL_FLAG_NEXT_CTRL), VIDIOC_G_CTRL/S_CTRL read and write one control, VIDIOC_S_EXT_CTRLS writes
several atomically (pan, tilt and zoom of a preset in one call). Every ``OSError`` from an ioctl
becomes a typed ``HalError`` here, where it enters.
"""

from __future__ import annotations

__all__ = ["CONTROL_IDS", "V4l2Controls", "ffmpeg_pixel_format", "translate_oserror"]

import ctypes
import errno
import os
import re
import threading
from pathlib import Path

from linuxpy.ioctl import ioctl
from linuxpy.video import raw
from linuxpy.video.device import (
    BufferType,
    FrameSizeType,
    iter_read_formats,
    iter_read_frame_intervals,
    iter_read_frame_sizes,
)

from hal.errors import DeviceBusyError, DeviceGoneError, DeviceIOError, HalError, UnsupportedError
from hal.types import ControlInfo, FrameMode

# HAL control name -> V4L2 control id (linux/v4l2-controls.h, camera class).
CONTROL_IDS: dict[str, int] = {
    "pan_absolute": int(raw.ControlID.PAN_ABSOLUTE),
    "tilt_absolute": int(raw.ControlID.TILT_ABSOLUTE),
    "zoom_absolute": int(raw.ControlID.ZOOM_ABSOLUTE),
    "pan_relative": int(raw.ControlID.PAN_RELATIVE),
    "tilt_relative": int(raw.ControlID.TILT_RELATIVE),
    "zoom_relative": int(raw.ControlID.ZOOM_RELATIVE),
    "privacy": int(raw.ControlID.PRIVACY),
}
_NEXT = int(raw.ControlFlag.NEXT_CTRL) | int(raw.ControlFlag.NEXT_COMPOUND)
_DISABLED = int(raw.ControlFlag.DISABLED)
_CTRL_CLASS_TYPE = int(raw.CtrlType.CTRL_CLASS)
_MAX_CONTROLS = 512
_MAX_MODES = 256

# V4L2 fourcc names (linuxpy PixelFormat) -> FFmpeg names, as the video4linux2 demuxer's
# input_format option takes them.
_FFMPEG_FORMATS = {
    "YUYV": "yuyv422",
    "UYVY": "uyvy422",
    "YUV420": "yuv420p",
    "NV12": "nv12",
    "NV21": "nv21",
    "RGB24": "rgb24",
    "BGR24": "bgr24",
    "GREY": "gray",
    "MJPEG": "mjpeg",
    "JPEG": "mjpeg",
    "H264": "h264",
}


def ffmpeg_pixel_format(v4l2_name: str) -> str:
    """The FFmpeg name of a V4L2 pixel format (``YUYV`` -> ``yuyv422``); unknown ones lower-cased."""
    return _FFMPEG_FORMATS.get(v4l2_name, v4l2_name.lower())


def translate_oserror(exc: OSError, device: str, what: str) -> HalError:
    """The HAL error for an ``OSError`` raised by an ioctl or an open of ``device``."""
    code = exc.errno
    reason = f"{what}: {os.strerror(code) if code else exc}"
    if code in (errno.ENODEV, errno.ENOENT, errno.ENXIO):
        return DeviceGoneError(reason, device=device)
    if code == errno.EBUSY:
        return DeviceBusyError(reason, device=device)
    if code in (errno.EINVAL, errno.ENOTTY, errno.ERANGE, errno.EACCES, errno.EPERM):
        return UnsupportedError(reason, device=device)
    return DeviceIOError(reason, device=device)


def _snake(name: bytes) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.decode("ascii", "replace").lower()).strip("_")


class V4l2Controls:
    """The controls of one V4L2 device node (opened per call: a control never holds the device)."""

    def __init__(self, path: Path, device_id: str) -> None:
        self._path = Path(path)
        self._device = device_id
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[int, ControlInfo]] | None = None

    def _open(self) -> int:
        try:
            return os.open(self._path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise translate_oserror(exc, self._device, f"open {self._path}") from exc

    def query(self) -> dict[str, ControlInfo]:
        """Every enabled control, by HAL name (known ids) or by its snake_cased V4L2 name."""
        return {name: info for name, (_, info) in self._controls().items()}

    def _controls(self) -> dict[str, tuple[int, ControlInfo]]:
        with self._lock:
            if self._cache is not None:
                return self._cache
        by_id = {v: k for k, v in CONTROL_IDS.items()}
        found: dict[str, tuple[int, ControlInfo]] = {}
        fd = self._open()
        try:
            query = raw.v4l2_query_ext_ctrl()
            query.id = _NEXT
            for _ in range(_MAX_CONTROLS):
                try:
                    ioctl(fd, raw.IOC.QUERY_EXT_CTRL, query)
                except OSError as exc:
                    if exc.errno == errno.EINVAL:
                        break  # VIDIOC_QUERY_EXT_CTRL: EINVAL after the last control
                    raise translate_oserror(exc, self._device, "VIDIOC_QUERY_EXT_CTRL") from exc
                cid = int(query.id)
                if not query.flags & _DISABLED and query.type != _CTRL_CLASS_TYPE:
                    name = by_id.get(cid) or _snake(bytes(query.name))
                    info = ControlInfo(
                        name=name,
                        minimum=int(query.minimum),
                        maximum=int(query.maximum),
                        step=int(query.step),
                        default=int(query.default_value),
                    )
                    found[name] = (cid, info)
                query.id = cid | _NEXT
        finally:
            os.close(fd)
        with self._lock:
            self._cache = found
        return found

    def modes(self) -> list[FrameMode]:
        """Capture modes: VIDIOC_ENUM_FMT, then ENUM_FRAMESIZES and ENUM_FRAMEINTERVALS per format
        (discrete sizes; a stepwise range contributes its largest size). ``fps`` is the fastest rate."""
        fd = self._open()
        modes: list[FrameMode] = []
        try:
            for fmt in iter_read_formats(fd, BufferType.VIDEO_CAPTURE):
                name = ffmpeg_pixel_format(fmt.pixel_format.name)
                for size in iter_read_frame_sizes(fd, fmt.pixel_format):
                    if size.type == FrameSizeType.DISCRETE:
                        width, height = int(size.info.width), int(size.info.height)
                    else:
                        width, height = int(size.info.max_width), int(size.info.max_height)
                    rates = [
                        float(t.max_fps)
                        for t in iter_read_frame_intervals(fd, fmt.pixel_format, width, height)
                    ]
                    modes.append(FrameMode(name, width, height, max(rates, default=0.0)))
                    if len(modes) >= _MAX_MODES:
                        return modes
        except OSError as exc:
            raise translate_oserror(exc, self._device, "VIDIOC_ENUM_FMT") from exc
        finally:
            os.close(fd)
        return modes

    def _id(self, name: str) -> tuple[int, ControlInfo]:
        try:
            return self._controls()[name]
        except KeyError:
            raise UnsupportedError(f"no control {name!r}", device=self._device) from None

    def get(self, name: str) -> int:
        cid, _ = self._id(name)
        fd = self._open()
        try:
            ctrl = raw.v4l2_control(cid, 0)
            ioctl(fd, raw.IOC.G_CTRL, ctrl)
            return int(ctrl.value)
        except OSError as exc:
            raise translate_oserror(exc, self._device, f"VIDIOC_G_CTRL {name}") from exc
        finally:
            os.close(fd)

    def set(self, name: str, value: int) -> None:
        cid, info = self._id(name)
        if not info.minimum <= value <= info.maximum:
            raise UnsupportedError(
                f"{name} {value} outside {info.minimum}..{info.maximum}", device=self._device
            )
        fd = self._open()
        try:
            ioctl(fd, raw.IOC.S_CTRL, raw.v4l2_control(cid, value))
        except OSError as exc:
            raise translate_oserror(exc, self._device, f"VIDIOC_S_CTRL {name}") from exc
        finally:
            os.close(fd)

    def set_many(self, values: dict[str, int]) -> None:
        """Write several controls in one VIDIOC_S_EXT_CTRLS (all or nothing, as the kernel applies it)."""
        ids = [(self._id(n)[0], v) for n, v in values.items()]
        for name, value in values.items():
            info = self._id(name)[1]
            if not info.minimum <= value <= info.maximum:
                raise UnsupportedError(
                    f"{name} {value} outside {info.minimum}..{info.maximum}", device=self._device
                )
        ctrls = raw.v4l2_ext_controls()
        ctrls.which = raw.ControlWhichValue.CUR_VAL
        ctrls.count = len(ids)
        array = (len(ids) * raw.v4l2_ext_control)()
        for slot, (cid, value) in zip(array, ids, strict=True):
            slot.id = cid
            slot.value = value
        ctrls.controls = ctypes.cast(array, ctypes.POINTER(raw.v4l2_ext_control))
        fd = self._open()
        try:
            ioctl(fd, raw.IOC.S_EXT_CTRLS, ctrls)
        except OSError as exc:
            raise translate_oserror(exc, self._device, "VIDIOC_S_EXT_CTRLS") from exc
        finally:
            os.close(fd)
