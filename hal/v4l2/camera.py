"""A real V4L2 camera: capture through PyAV's ``video4linux2`` demuxer, controls through linuxpy.

Capture negotiates the configured pixel format, size and frame rate (``input_format``,
``video_size``, ``framerate`` demuxer options; the driver may adjust, and the frames say what it
chose). Demuxing and decoding block, so they run in a worker thread. The privacy shutter is enforced
in software (black frames) whether or not the camera has V4L2_CID_PRIVACY, which is set too when
present. Presets are kept on the host (``hal.presets``): UVC has no standard preset storage.
"""

from __future__ import annotations

__all__ = ["V4l2Camera"]

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import av
import av.error
import structlog

from hal.errors import DeviceIOError, HalError, UnsupportedError
from hal.indicator import IndicatorLatch
from hal.presets import PresetStore
from hal.types import (
    CameraCapabilities,
    CameraSpec,
    DeviceInfo,
    Frame,
    FrameMode,
    IndicatorState,
    PtzPosition,
)
from hal.v4l2.controls import V4l2Controls, translate_oserror
from hal.v4l2.reader import FrameReader

log = structlog.get_logger()

_CLOSE_WAIT_S = 2.0
_RELATIVE = {"pan": "pan_relative", "tilt": "tilt_relative", "zoom": "zoom_relative"}
_ABSOLUTE = {"pan": "pan_absolute", "tilt": "tilt_absolute", "zoom": "zoom_absolute"}


def _av_error(exc: Exception, device: str, what: str) -> HalError:
    code = getattr(exc, "errno", None)
    if isinstance(code, int):
        return translate_oserror(OSError(code, str(exc)), device, what)
    return DeviceIOError(f"{what}: {exc}", device=device)


def _owned(picture: Any, device: str) -> Any:
    """A copy of a raw ``av.VideoFrame`` in buffers of its own (the demuxer's buffer is released)."""
    try:
        copy = av.VideoFrame.from_ndarray(picture.to_ndarray(), format=picture.format.name)
    except (ValueError, TypeError) as exc:
        # A layout numpy cannot express: convert to what the encoders take (a conversion copies).
        if picture.format.name == "yuv420p":
            raise DeviceIOError(
                f"capture: cannot copy a {picture.width}x{picture.height} picture: {exc}", device=device
            ) from exc
        copy = picture.reformat(format="yuv420p")
    copy.color_range = picture.color_range
    copy.colorspace = picture.colorspace
    return copy


class V4l2Camera:
    """One opening of a V4L2 capture node (implements ``hal.protocols.Camera``)."""

    def __init__(self, spec: CameraSpec, info: DeviceInfo, presets_dir: Path | None) -> None:
        assert spec.device is not None
        self._spec = spec
        self._info = info
        self._path = spec.device
        self.controls = V4l2Controls(spec.device, spec.id)
        self._presets = PresetStore(spec.id, presets_dir)
        self._container: Any = None
        self._reader: FrameReader | None = None
        self._seq = 0
        self._shutter = False
        self._led = IndicatorLatch()  # no LED control on UVC: the state is kept for the agent
        self.notices: list[tuple[int, str]] = []

    @property
    def info(self) -> DeviceInfo:
        return self._info

    # --- open / close ---------------------------------------------------------------------------
    def _open_container(self) -> Any:
        s = self._spec
        options = {"video_size": f"{s.width}x{s.height}", "framerate": str(s.fps)}
        if s.pixel_format:
            options["input_format"] = s.pixel_format
        try:
            return av.open(str(self._path), format="video4linux2", options=options)
        except av.error.FFmpegError as exc:
            raise _av_error(exc, s.id, f"open {self._path}") from exc
        except OSError as exc:
            raise translate_oserror(exc, s.id, f"open {self._path}") from exc

    async def __aenter__(self) -> Self:
        self._container = await asyncio.to_thread(self._open_container)
        stream = self._container.streams.video[0]
        log.info(
            "camera_opened",
            camera=self._spec.id,
            backend="v4l2",
            path=str(self._path),
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            pixel_format=stream.codec_context.pix_fmt,
        )
        pictures = self._container.decode(video=0)
        if stream.codec_context.name == "rawvideo":
            # A raw picture points into the driver's mmap()ed buffer, which closing the camera unmaps:
            # a frame still queued for (or inside) an encoder then reads unmapped memory (SIGSEGV).
            # Copied in the reader thread, every frame owns its pixels and may outlive the camera.
            pictures = (_owned(picture, self._spec.id) for picture in pictures)
        self._reader = FrameReader(pictures, self._spec.id)
        self._reader.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        container, self._container = self._container, None
        reader, self._reader = self._reader, None
        if container is not None:
            await asyncio.to_thread(self._close, container, reader)
        self._led.set(IndicatorState.OFF)

    def _close(self, container: Any, reader: FrameReader | None) -> None:
        # Closing the demuxer under the reader thread would free FFmpeg state it still uses.
        if reader is None or reader.stop(_CLOSE_WAIT_S):
            container.close()
        else:
            # A read is stuck in the driver (a wedged camera): leaking the handle beats a crash.
            log.warning("camera_close_abandoned", camera=self._spec.id, waited_s=_CLOSE_WAIT_S)
        if reader is not None and reader.dropped:
            log.info("capture_frames_dropped", camera=self._spec.id, dropped=reader.dropped)

    def capabilities(self) -> CameraCapabilities:
        controls: tuple[Any, ...] = ()
        try:
            controls = tuple(self.controls.query().values())
        except HalError as exc:
            log.warning("controls_unavailable", camera=self._spec.id, error=str(exc))
        names = {c.name for c in controls}
        s = self._spec
        modes: tuple[FrameMode, ...] = ()
        try:
            modes = tuple(self.controls.modes())
        except HalError as exc:
            log.warning("modes_unavailable", camera=s.id, error=str(exc))
        return CameraCapabilities(
            # the device's modes; the configured one when it cannot say
            modes=modes or (FrameMode(s.pixel_format or "auto", s.width, s.height, float(s.fps)),),
            controls=controls,
            ptz=bool(names & {"pan_absolute", "tilt_absolute", "zoom_absolute"}),
            privacy_shutter=True,  # enforced in software; V4L2_CID_PRIVACY too when present
            indicator=False,
        )

    # --- capture --------------------------------------------------------------------------------
    async def frames(self) -> AsyncIterator[Frame]:
        """Frames as the driver delivers them (the newest kept when the consumer is slower).

        Raises DeviceGoneError when the camera is unplugged, other HalErrors on capture failures.
        """
        reader = self._reader
        if reader is None:
            raise UnsupportedError("camera is not open (use `async with`)", device=self._spec.id)
        while True:
            image, capture_ns = await reader.get()
            if self._shutter:
                image = _black_like(image)
            seq, self._seq = self._seq, self._seq + 1
            yield Frame(
                camera_id=self._spec.id,
                seq=seq,
                capture_ns=capture_ns,
                width=image.width,
                height=image.height,
                pixel_format=image.format.name,
                image=image,
            )

    # --- PTZ ------------------------------------------------------------------------------------
    async def get_ptz(self) -> PtzPosition:
        def read() -> PtzPosition:
            known = self.controls.query()
            values = {k: self.controls.get(n) for k, n in _ABSOLUTE.items() if n in known}
            return PtzPosition(
                pan=values.get("pan", 0), tilt=values.get("tilt", 0), zoom=values.get("zoom", 100)
            )

        return await asyncio.to_thread(read)

    async def set_ptz(
        self, *, pan: int | None = None, tilt: int | None = None, zoom: int | None = None
    ) -> None:
        wanted = {_ABSOLUTE[k]: v for k, v in (("pan", pan), ("tilt", tilt), ("zoom", zoom)) if v is not None}
        if wanted:
            await asyncio.to_thread(self.controls.set_many, wanted)

    async def move_ptz(self, *, pan: int = 0, tilt: int = 0, zoom: int = 0) -> None:
        def move() -> None:
            known = self.controls.query()
            for axis, delta in (("pan", pan), ("tilt", tilt), ("zoom", zoom)):
                if not delta:
                    continue
                if _RELATIVE[axis] in known:
                    self.controls.set(_RELATIVE[axis], delta)
                elif _ABSOLUTE[axis] in known:
                    info = known[_ABSOLUTE[axis]]
                    target = min(max(self.controls.get(_ABSOLUTE[axis]) + delta, info.minimum), info.maximum)
                    self.controls.set(_ABSOLUTE[axis], target)
                else:
                    raise UnsupportedError(f"camera cannot {axis}", device=self._spec.id)

        await asyncio.to_thread(move)

    async def store_preset(self, name: str) -> None:
        pos = await self.get_ptz()
        await asyncio.to_thread(self._presets.store, name, pos)

    async def recall_preset(self, name: str) -> None:
        pos = self._presets.get(name)
        await self.set_ptz(pan=pos.pan, tilt=pos.tilt, zoom=pos.zoom)

    async def list_presets(self) -> dict[str, PtzPosition]:
        return self._presets.list()

    # --- shutter, indicator ---------------------------------------------------------------------
    @property
    def shutter_closed(self) -> bool:
        return self._shutter

    async def set_shutter(self, closed: bool) -> None:
        self._shutter = closed
        try:
            if "privacy" in self.controls.query():
                await asyncio.to_thread(self.controls.set, "privacy", int(closed))
        except HalError as exc:
            # The software shutter already holds: nothing of the picture leaves either way.
            log.warning("privacy_control_failed", camera=self._spec.id, error=str(exc))
        log.info("privacy_shutter", camera=self._spec.id, closed=closed)

    @property
    def indicator(self) -> IndicatorState:
        return self._led.shown

    async def set_indicator(self, state: IndicatorState) -> None:
        self._led.set(state)

    async def announce(self, message: str) -> None:
        self.notices.append((time.time_ns(), message))
        self._led.notice()  # hal.indicator: NOTICE for its hold wherever the LED is not ON
        log.info("camera_announce", camera=self._spec.id, length=len(message))


def _black_like(image: Any) -> Any:
    black = av.VideoFrame(image.width, image.height, "yuv420p")
    for plane, value in zip(black.planes, (16, 128, 128), strict=True):
        plane.update(bytes([value]) * plane.buffer_size)
    return black
