"""Simulated cameras and their inventory: a full backend described by config, with fault switches.

A :class:`SimDevice` is the simulated hardware (it keeps PTZ position, shutter, indicator, presets
and faults across openings, like a real camera); :class:`SimCamera` is one opening of it, the object
that implements :class:`hal.protocols.Camera`.

Frames are ``av.VideoFrame`` (yuv420p) paced at the spec's fps on the monotonic clock, each stamped
(``hal.stamps``) with its sequence number and capture time. If the consumer falls behind, the frames it
missed are lost as on a real sensor: the sequence number jumps.
"""

from __future__ import annotations

__all__ = ["Notice", "SimCamera", "SimDevice", "SimInventory"]

import asyncio
import collections
import contextlib
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import av
import numpy as np
import structlog

from hal.errors import DeviceBusyError, DeviceGoneError, UnsupportedError
from hal.indicator import IndicatorLatch
from hal.presets import PresetStore
from hal.sim.faults import SimCameraFaults
from hal.sim.scene import PAN_RANGE, PTZ_STEP, TILT_RANGE, ZOOM_MAX, ZOOM_MIN, Scene, View
from hal.stamps import stamp_region, write_stamp
from hal.types import (
    CameraCapabilities,
    CameraSpec,
    ControlInfo,
    DeviceInfo,
    Frame,
    FrameMode,
    HotplugEvent,
    IndicatorState,
    PtzPosition,
)

log = structlog.get_logger()

_POOL_SIZE = 6
_NOTICES_KEPT = 100
_CONTROLS = (
    ControlInfo("pan_absolute", -PAN_RANGE, PAN_RANGE, PTZ_STEP, 0),
    ControlInfo("tilt_absolute", -TILT_RANGE, TILT_RANGE, PTZ_STEP, 0),
    ControlInfo("zoom_absolute", ZOOM_MIN, ZOOM_MAX, 1, ZOOM_MIN),
    ControlInfo("privacy", 0, 1, 1, 0),
)


@dataclass(frozen=True, slots=True)
class Notice:
    """An in-room announcement shown by the camera (``Camera.announce``)."""

    time_ns: int
    message: str


class SimDevice:
    """The simulated hardware behind one configured sim camera."""

    def __init__(
        self, spec: CameraSpec, presets_dir: Path | None, inventory: SimInventory | None = None
    ) -> None:
        if spec.backend != "sim":
            raise UnsupportedError(f"not a sim camera (backend {spec.backend!r})", device=spec.id)
        if spec.pixel_format not in (None, "yuv420p"):
            raise UnsupportedError(f"sim cameras produce yuv420p, not {spec.pixel_format}", device=spec.id)
        self.spec = spec
        self.faults = SimCameraFaults(spec.id, self._plug_changed)
        self.presets = PresetStore(spec.id, presets_dir)
        self.ptz = PtzPosition(pan=0, tilt=0, zoom=ZOOM_MIN)
        self.shutter_closed = False
        self.led = IndicatorLatch()  # what the LED shows (hal.indicator rules)
        self.notices: collections.deque[Notice] = collections.deque(maxlen=_NOTICES_KEPT)
        self.in_use = False
        self._inventory = inventory
        self._scene: Scene | None = None
        self._scene_lock = threading.Lock()

    @property
    def indicator(self) -> IndicatorState:
        """What the LED shows now: ON while frames leave, else a pending notice, else OFF."""
        return self.led.shown

    @indicator.setter
    def indicator(self, state: IndicatorState) -> None:
        self.led.set(state)

    def acknowledge_notice(self) -> None:
        """Someone in the room acknowledged the notice (the sim's button)."""
        self.led.acknowledge()

    @property
    def info(self) -> DeviceInfo:
        return DeviceInfo(
            id=self.spec.id,
            kind="camera",
            backend="sim",
            name=f"Simulated camera ({self.spec.pattern})",
            path=None,
            bus="sim",
            capabilities=self.capabilities(),
        )

    def capabilities(self) -> CameraCapabilities:
        s = self.spec
        return CameraCapabilities(
            modes=(FrameMode("yuv420p", s.width, s.height, float(s.fps)),),
            controls=_CONTROLS,
            ptz=True,
            privacy_shutter=True,
            indicator=True,
        )

    def scene(self) -> Scene:
        """The scene, built on first use (it can take a few hundred ms at 4K: call from a thread)."""
        with self._scene_lock:
            if self._scene is None:
                self._scene = Scene(self.spec.width, self.spec.height, self.spec.pattern)
            return self._scene

    def _plug_changed(self, plugged: bool) -> None:
        if self._inventory is not None:
            self._inventory.emit(HotplugEvent("added" if plugged else "removed", self.info))


def _plane_view(plane: Any, rows: int, cols: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
    flat: np.ndarray[Any, np.dtype[np.uint8]] = np.frombuffer(plane, dtype=np.uint8)
    return flat.reshape(rows, plane.line_size)[:, :cols]


class _Slot:
    """A pooled frame buffer and a note of what is drawn in it, so a reuse redraws only what moved."""

    __slots__ = ("box", "frame", "free_refs", "key", "u", "v", "y")

    def __init__(self, width: int, height: int) -> None:
        self.frame = av.VideoFrame(width, height, "yuv420p")
        planes = self.frame.planes
        self.y = _plane_view(planes[0], height, width)
        self.u = _plane_view(planes[1], height // 2, width // 2)
        self.v = _plane_view(planes[2], height // 2, width // 2)
        self.key: object = None  # the background drawn: a PTZ tuple, "black", or None (unknown)
        self.box: tuple[int, int, int] | None = None  # (x, y, side) of the moving box drawn
        # The plane views reference the frame too: this is its count when nobody else holds it.
        self.free_refs = sys.getrefcount(self.frame)


class _Renderer:
    """Draws frames for one camera opening (from one thread at a time).

    Buffers are pooled like a V4L2 driver's: a buffer is drawn into again only when no Python object
    but the pool holds its frame (so a frame the consumer still holds never changes). Encoders that
    read input asynchronously after ``encode`` returned (libsvtav1, hardware encoders) keep their recent
    input frames referenced for that reason (``hal.codecs``). A reused buffer that already shows the
    current PTZ view only gets the moving box and the stamp redrawn, which keeps 4K inside budget.
    """

    def __init__(self, device: SimDevice) -> None:
        self._device = device
        self._w, self._h = device.spec.width, device.spec.height
        self._pool: list[_Slot] = []
        self._rng = np.random.default_rng(7)
        self._stamp = stamp_region(self._w, self._h)
        side = max(8, self._h // 6) & ~1
        self._box_side = side
        self._box_step = max(2, (self._w - side) // 60) & ~1

    def _slot(self) -> _Slot:
        for slot in self._pool:
            if sys.getrefcount(slot.frame) <= slot.free_refs:
                return slot
        slot = _Slot(self._w, self._h)
        if len(self._pool) < _POOL_SIZE:
            self._pool.append(slot)
        return slot

    def _box(self, seq: int) -> tuple[int, int, int]:
        side = self._box_side
        span = max(2, self._w - side)
        pos = (seq * self._box_step) % (2 * span)
        x = (pos if pos < span else 2 * span - pos) & ~1
        y = ((self._h - side) // 2) & ~1
        return x, y, side

    def render(self, seq: int, capture_ns: int, *, black: bool, corrupt: bool) -> av.VideoFrame:
        slot = self._slot()
        if black:
            if slot.key != "black":
                slot.y[:] = 16
                slot.u[:] = 128
                slot.v[:] = 128
                slot.key, slot.box = "black", None
            # No stamp either: while the shutter is closed nothing of the picture leaves.
            return slot.frame
        ptz = self._device.ptz
        key = (ptz.pan, ptz.tilt, ptz.zoom)
        view = self._device.scene().view(*key)
        if slot.key != key:
            slot.y[:] = view.y
            slot.u[:] = view.u
            slot.v[:] = view.v
        elif slot.box is not None:
            _paint(slot, slot.box, view)
        box = self._box(seq)
        _paint(slot, box, None)
        slot.key, slot.box = key, box
        if self._stamp is not None:
            sw, sh = self._stamp
            slot.u[: sh // 2, : sw // 2] = 128
            slot.v[: sh // 2, : sw // 2] = 128
            write_stamp(slot.y, seq, capture_ns)
        if corrupt:
            # A torn USB transfer: the top half of the picture (stamp included) is garbage.
            half = self._h // 2
            slot.y[:half] = self._rng.integers(0, 256, size=(half, self._w), dtype=np.uint8)
            slot.key = None
        return slot.frame


def _paint(slot: _Slot, box: tuple[int, int, int], view: View | None) -> None:
    """Draw the moving box at ``box``, or restore the background under it from ``view``."""
    x, y, s = box
    cy, cx = slice(y // 2, (y + s) // 2), slice(x // 2, (x + s) // 2)
    if view is None:
        slot.y[y : y + s, x : x + s] = 235
        slot.u[cy, cx] = 90
        slot.v[cy, cx] = 200
    else:
        slot.y[y : y + s, x : x + s] = view.y[y : y + s, x : x + s]
        slot.u[cy, cx] = view.u[cy, cx]
        slot.v[cy, cx] = view.v[cy, cx]


class SimCamera:
    """One opening of a simulated camera (implements ``hal.protocols.Camera``)."""

    def __init__(self, device: SimDevice) -> None:
        self._device = device
        self._open = False
        self._seq = 0
        self._renderer: _Renderer | None = None

    @property
    def info(self) -> DeviceInfo:
        return self._device.info

    @property
    def faults(self) -> SimCameraFaults:
        return self._device.faults

    @property
    def device(self) -> SimDevice:
        return self._device

    @property
    def notices(self) -> tuple[Notice, ...]:
        return tuple(self._device.notices)

    def _check_present(self) -> None:
        if not self._device.faults.plugged:
            raise DeviceGoneError("camera unplugged", device=self._device.spec.id)

    async def __aenter__(self) -> Self:
        self._check_present()
        if self._device.in_use:
            raise DeviceBusyError("camera already open", device=self._device.spec.id)
        self._device.in_use = True
        try:
            await asyncio.to_thread(self._device.scene)
        except BaseException:
            self._device.in_use = False
            raise
        self._renderer = _Renderer(self._device)
        self._open = True
        log.debug("camera_opened", camera=self._device.spec.id, backend="sim")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._open:
            self._open = False
            self._device.in_use = False
            self._device.indicator = IndicatorState.OFF
            self._renderer = None
            log.debug("camera_closed", camera=self._device.spec.id, backend="sim")

    def _require_open(self) -> _Renderer:
        self._check_present()
        if not self._open or self._renderer is None:
            raise UnsupportedError("camera is not open (use `async with`)", device=self._device.spec.id)
        return self._renderer

    def capabilities(self) -> CameraCapabilities:
        return self._device.capabilities()

    async def frames(self) -> AsyncIterator[Frame]:
        """Frames at the spec's rate. Raises DeviceGoneError when the camera is unplugged."""
        renderer = self._require_open()
        spec, faults = self._device.spec, self._device.faults
        interval = 1.0 / spec.fps
        next_t = time.monotonic()
        while True:
            # Stalled: nothing is captured until the stall ends, then the schedule restarts.
            while (stall_left := faults.stall_until - time.monotonic()) > 0:
                self._check_present()
                await asyncio.sleep(min(stall_left, 0.05))
                next_t = time.monotonic()
            self._check_present()
            delay = next_t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
                self._check_present()
                if faults.stall_until > time.monotonic():
                    continue
            late = time.monotonic() - next_t
            if late > interval:
                # The consumer fell behind: the sensor kept going and those frames are lost.
                missed = int(late / interval)
                self._seq += missed
                next_t += missed * interval
            seq = self._seq
            self._seq += 1
            next_t += interval
            if faults.dropped(seq):
                continue
            capture_ns = time.time_ns()
            corrupt = faults.take_corrupt()
            image = await asyncio.to_thread(
                renderer.render, seq, capture_ns, black=self._device.shutter_closed, corrupt=corrupt
            )
            if self._device.shutter_closed:
                # The shutter closed while this frame was drawn: it must not leave either.
                image = await asyncio.to_thread(renderer.render, seq, capture_ns, black=True, corrupt=False)
            self._check_present()
            yield Frame(
                camera_id=spec.id,
                seq=seq,
                capture_ns=capture_ns,
                width=spec.width,
                height=spec.height,
                pixel_format="yuv420p",
                image=image,
            )

    # --- PTZ ------------------------------------------------------------------------------------
    async def get_ptz(self) -> PtzPosition:
        self._check_present()
        return self._device.ptz

    async def set_ptz(
        self, *, pan: int | None = None, tilt: int | None = None, zoom: int | None = None
    ) -> None:
        self._check_present()
        cur = self._device.ptz
        new = PtzPosition(
            pan=cur.pan if pan is None else pan,
            tilt=cur.tilt if tilt is None else tilt,
            zoom=cur.zoom if zoom is None else zoom,
        )
        for name, value, lo, hi in (
            ("pan", new.pan, -PAN_RANGE, PAN_RANGE),
            ("tilt", new.tilt, -TILT_RANGE, TILT_RANGE),
            ("zoom", new.zoom, ZOOM_MIN, ZOOM_MAX),
        ):
            if not lo <= value <= hi:
                raise UnsupportedError(f"{name} {value} outside {lo}..{hi}", device=self._device.spec.id)
        self._device.ptz = new
        log.debug("ptz_set", camera=self._device.spec.id, pan=new.pan, tilt=new.tilt, zoom=new.zoom)

    async def move_ptz(self, *, pan: int = 0, tilt: int = 0, zoom: int = 0) -> None:
        """Relative move; like a motor, it stops at the end of its range."""
        self._check_present()
        cur = self._device.ptz
        await self.set_ptz(
            pan=min(max(cur.pan + pan, -PAN_RANGE), PAN_RANGE),
            tilt=min(max(cur.tilt + tilt, -TILT_RANGE), TILT_RANGE),
            zoom=min(max(cur.zoom + zoom, ZOOM_MIN), ZOOM_MAX),
        )

    # --- presets --------------------------------------------------------------------------------
    async def store_preset(self, name: str) -> None:
        self._check_present()
        await asyncio.to_thread(self._device.presets.store, name, self._device.ptz)

    async def recall_preset(self, name: str) -> None:
        self._check_present()
        pos = self._device.presets.get(name)
        await self.set_ptz(pan=pos.pan, tilt=pos.tilt, zoom=pos.zoom)

    async def list_presets(self) -> dict[str, PtzPosition]:
        return self._device.presets.list()

    # --- shutter, indicator, announcements ------------------------------------------------------
    @property
    def shutter_closed(self) -> bool:
        return self._device.shutter_closed

    async def set_shutter(self, closed: bool) -> None:
        self._check_present()
        self._device.shutter_closed = closed
        log.info("privacy_shutter", camera=self._device.spec.id, closed=closed)

    @property
    def indicator(self) -> IndicatorState:
        return self._device.indicator

    async def set_indicator(self, state: IndicatorState) -> None:
        self._check_present()
        self._device.indicator = state
        log.debug("indicator_set", camera=self._device.spec.id, state=state.value)

    async def announce(self, message: str) -> None:
        """Show an in-room notice: recorded, and the indicator shows NOTICE for ``hal.indicator``'s hold
        (10 s or until acknowledged) wherever it is not ON (frames leaving always show in-use)."""
        self._check_present()
        self._device.notices.append(Notice(time.time_ns(), message))
        self._device.led.notice()
        log.info("camera_announce", camera=self._device.spec.id, length=len(message))


class SimInventory:
    """The sim backend's inventory (implements ``hal.protocols.Inventory``)."""

    def __init__(self, specs: Sequence[CameraSpec], *, presets_dir: Path | None = None) -> None:
        ids = [s.id for s in specs]
        if len(ids) != len(set(ids)):
            raise UnsupportedError("camera ids must be unique")
        self._devices = {s.id: SimDevice(s, presets_dir, self) for s in specs}
        self._subscribers: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[HotplugEvent]]] = []
        self._lock = threading.Lock()

    def list_devices(self) -> list[DeviceInfo]:
        return [d.info for d in self._devices.values() if d.faults.plugged]

    def device(self, device_id: str) -> SimDevice:
        try:
            return self._devices[device_id]
        except KeyError:
            raise DeviceGoneError("no such sim camera", device=device_id) from None

    def faults(self, device_id: str) -> SimCameraFaults:
        return self.device(device_id).faults

    def open_camera(self, device_id: str) -> SimCamera:
        device = self.device(device_id)
        if not device.faults.plugged:
            raise DeviceGoneError("camera unplugged", device=device_id)
        return SimCamera(device)

    def emit(self, event: HotplugEvent) -> None:
        """Deliver ``event`` to every ``events()`` iterator (callable from any thread)."""
        log.info("hotplug", action=event.action, device=event.device.id, backend="sim")
        with self._lock:
            subscribers = list(self._subscribers)
        for loop, queue in subscribers:
            with contextlib.suppress(RuntimeError):  # that loop is closed: its iterator is gone
                loop.call_soon_threadsafe(queue.put_nowait, event)

    def events(self) -> AsyncIterator[HotplugEvent]:
        """Hotplug events from now on (subscribed at this call; call it inside the event loop)."""
        return _EventStream(self)

    def _subscribe(self, entry: tuple[asyncio.AbstractEventLoop, asyncio.Queue[HotplugEvent]]) -> None:
        with self._lock:
            self._subscribers.append(entry)

    def _unsubscribe(self, entry: tuple[asyncio.AbstractEventLoop, asyncio.Queue[HotplugEvent]]) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._subscribers.remove(entry)


class _EventStream:
    """An ``events()`` iterator: subscribed when created, so no event between creation and the first
    ``anext`` is lost; unsubscribed by ``aclose()`` or garbage collection."""

    def __init__(self, inventory: SimInventory) -> None:
        self._inventory = inventory
        self._queue: asyncio.Queue[HotplugEvent] = asyncio.Queue()
        self._entry = (asyncio.get_running_loop(), self._queue)
        inventory._subscribe(self._entry)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> HotplugEvent:
        return await self._queue.get()

    async def aclose(self) -> None:
        self._inventory._unsubscribe(self._entry)

    def __del__(self) -> None:
        self._inventory._unsubscribe(self._entry)
