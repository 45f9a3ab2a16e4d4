"""HAL errors: one root, grouped by origin, with data as attributes.

Foreign exceptions (PyAV's ``av.error.FFmpegError``, ``OSError`` from ioctls) are translated where
they enter a backend, with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "DecoderError",
    "DeviceBusyError",
    "DeviceGoneError",
    "DeviceIOError",
    "EncoderError",
    "HalError",
    "PresetNotFoundError",
    "UnsupportedError",
]


class HalError(Exception):
    """Root of all HAL errors. ``device`` names the device concerned, when there is one."""

    def __init__(self, message: str, *, device: str | None = None) -> None:
        self.device = device
        super().__init__(f"{device}: {message}" if device else message)


class DeviceGoneError(HalError):
    """The device was unplugged or vanished; the caller may wait for it to come back."""


class UnsupportedError(HalError):
    """The device or codec cannot do what was asked (format, size, control, codec)."""


class DeviceBusyError(HalError):
    """Another process holds the device."""


class DeviceIOError(HalError):
    """An I/O error talking to the device (failed ioctl, read error, stalled stream)."""


class EncoderError(HalError):
    """The encoder failed to open or to encode; the caller may fall back to another codec."""


class PresetNotFoundError(HalError):
    """No PTZ preset of that name is stored for the camera. ``preset`` names it."""

    def __init__(self, preset: str, *, device: str | None = None) -> None:
        self.preset = preset
        super().__init__(f"no preset named {preset!r}", device=device)


class DecoderError(HalError):
    """A received packet could not be decoded (corrupt or truncated data)."""
