"""The device interfaces the agent programs against. Every backend implements these."""

from __future__ import annotations

__all__ = ["Camera", "Display", "Encoder", "EncoderFactory", "Inventory", "Microphone", "Speaker"]

from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from hal.types import (
    AudioFrame,
    CameraCapabilities,
    DeviceInfo,
    EncodedPacket,
    EncoderCapabilities,
    EncoderConfig,
    Frame,
    HotplugEvent,
    IndicatorState,
    PtzPosition,
    Screen,
)


@runtime_checkable
class Camera(Protocol):
    """A camera, opened with ``async with``. Errors: subclasses of ``hal.errors.HalError``."""

    @property
    def info(self) -> DeviceInfo: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def capabilities(self) -> CameraCapabilities: ...

    def frames(self) -> AsyncIterator[Frame]:
        """Captured frames, paced by the device. Raises DeviceGoneError when unplugged."""
        ...

    # PTZ
    async def get_ptz(self) -> PtzPosition: ...
    async def set_ptz(
        self, *, pan: int | None = None, tilt: int | None = None, zoom: int | None = None
    ) -> None: ...
    async def move_ptz(self, *, pan: int = 0, tilt: int = 0, zoom: int = 0) -> None: ...

    # presets (persisted by the backend)
    async def store_preset(self, name: str) -> None: ...
    async def recall_preset(self, name: str) -> None: ...
    async def list_presets(self) -> dict[str, PtzPosition]: ...

    # privacy shutter: while closed, no image leaves the camera object (black frames)
    @property
    def shutter_closed(self) -> bool: ...
    async def set_shutter(self, closed: bool) -> None: ...

    # in-use indicator (LED) and in-room announcements
    @property
    def indicator(self) -> IndicatorState: ...
    async def set_indicator(self, state: IndicatorState) -> None: ...
    async def announce(self, message: str) -> None: ...


class Encoder(Protocol):
    """A configured video encoder. ``encode`` blocks: call it off the event loop."""

    @property
    def capabilities(self) -> EncoderCapabilities: ...

    @property
    def config(self) -> EncoderConfig: ...

    def encode(self, frame: Frame) -> list[EncodedPacket]: ...
    def request_keyframe(self) -> None: ...
    def flush(self) -> list[EncodedPacket]: ...
    def close(self) -> None: ...


class EncoderFactory(Protocol):
    def probe(self) -> Sequence[EncoderCapabilities]:
        """Encoders that really open on this machine."""
        ...

    def open(self, config: EncoderConfig, preference: Sequence[str]) -> Encoder:
        """Open the first encoder of ``preference`` that works for ``config``, logging each fallback.

        Raises:
            EncoderError: none of them opened.
        """
        ...


class Inventory(Protocol):
    """The devices of one backend, and their comings and goings."""

    def list_devices(self) -> list[DeviceInfo]: ...
    def events(self) -> AsyncIterator[HotplugEvent]: ...
    def open_camera(self, device_id: str) -> Camera: ...


@runtime_checkable
class Microphone(Protocol):
    """A microphone, opened with ``async with``: mono 48 kHz in 20 ms frames (``AudioFrame``)."""

    @property
    def info(self) -> DeviceInfo: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def frames(self) -> AsyncIterator[AudioFrame]:
        """Captured frames, paced by the device. Raises DeviceGoneError when unplugged."""
        ...


@runtime_checkable
class Speaker(Protocol):
    """A speaker, opened with ``async with``. ``play`` queues 20 ms frames and never blocks for long:
    the device's own buffer paces them (a full buffer drops the oldest audio, as a late frame is
    worth less than a fresh one)."""

    @property
    def info(self) -> DeviceInfo: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def play(self, frame: AudioFrame) -> None: ...


@runtime_checkable
class Display(Protocol):
    """A screen, opened with ``async with``; ``show`` draws a whole :class:`hal.types.Screen`
    (blocking: call it off the event loop)."""

    @property
    def info(self) -> DeviceInfo: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def show(self, screen: Screen) -> None: ...
