"""The v4l2 backend against a fake sysfs tree and failing ioctls (the real driver is exercised by the
image test on the kernel's vivid driver)."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import linuxpy.ioctl
import pytest
from linuxpy.video import raw
from linuxpy.video.device import PixelFormat

from hal import open_inventory
from hal.errors import DeviceBusyError, DeviceGoneError, DeviceIOError, UnsupportedError
from hal.types import CameraSpec
from hal.v4l2 import V4l2Controls, V4l2Inventory, enumerate_nodes


def _add_node(sysfs: Path, node: str, name: str, index: int = 0, bus: str = "usb1/1-1/1-1:1.0") -> None:
    devices = sysfs.parent / "devices" / bus
    devices.mkdir(parents=True, exist_ok=True)
    base = sysfs / node
    base.mkdir(parents=True)
    (base / "name").write_text(name + "\n")
    (base / "index").write_text(f"{index}\n")
    os.symlink(devices, base / "device")


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    root = tmp_path / "sys" / "class" / "video4linux"
    _add_node(root, "video0", "HD Pro Webcam C920")
    _add_node(root, "video1", "HD Pro Webcam C920", index=1)  # UVC metadata node: not a camera
    _add_node(root, "video10", "vivid", bus="platform/vivid.0/x")
    _add_node(root, "video2", "PTZ Pro 2", bus="usb2/2-3/2-3:1.0")
    return root


def test_enumeration_lists_main_nodes_in_order(sysfs: Path) -> None:
    nodes = enumerate_nodes(sysfs, Path("/dev"))
    assert [n.node for n in nodes] == ["video0", "video2", "video10"]
    assert nodes[0].name == "HD Pro Webcam C920"
    assert nodes[0].path == Path("/dev/video0")
    assert nodes[0].bus == "usb1/1-1/1-1:1.0"


def test_no_v4l2_in_the_kernel_lists_nothing(tmp_path: Path) -> None:
    assert enumerate_nodes(tmp_path / "absent") == []


def test_configured_cameras_keep_their_ids(sysfs: Path) -> None:
    spec = CameraSpec(id="front", backend="v4l2", device=Path("/dev/video2"))
    inv = V4l2Inventory([spec], sysfs_root=sysfs, use_udev=False)
    listed = {d.id: d for d in inv.list_devices()}
    assert set(listed) == {"video0", "front", "video10"}
    assert listed["front"].name == "PTZ Pro 2"
    assert listed["front"].path == "/dev/video2"
    assert listed["front"].backend == "v4l2"


def test_open_inventory_auto_picks_v4l2_for_real_cameras() -> None:
    spec = CameraSpec(id="front", backend="v4l2", device=Path("/dev/video2"))
    assert isinstance(open_inventory([spec], backend="auto", presets_dir=None), V4l2Inventory)
    with pytest.raises(UnsupportedError):
        V4l2Inventory([CameraSpec(id="sim0")])


async def test_hotplug_by_polling_sysfs(sysfs: Path) -> None:
    inv = V4l2Inventory([], sysfs_root=sysfs, poll_s=0.05, use_udev=False)
    events = inv.events()
    _add_node(sysfs, "video4", "Conference Cam", bus="usb3/3-1/3-1:1.0")
    added = await asyncio.wait_for(anext(events), 2)
    assert (added.action, added.device.id, added.device.name) == ("added", "video4", "Conference Cam")
    for f in (sysfs / "video0").iterdir():
        f.unlink()
    (sysfs / "video0").rmdir()
    removed = await asyncio.wait_for(anext(events), 2)
    assert (removed.action, removed.device.id) == ("removed", "video0")


async def test_opening_a_vanished_camera_is_device_gone(sysfs: Path, tmp_path: Path) -> None:
    inv = V4l2Inventory([], sysfs_root=sysfs, dev_root=tmp_path / "dev", use_udev=False)
    with pytest.raises(DeviceGoneError):
        inv.open_camera("video7")  # not in sysfs
    cam = inv.open_camera("video0")  # in sysfs, but the /dev node is gone (unplugged meanwhile)
    with pytest.raises(DeviceGoneError):
        async with cam:
            pass


async def test_capture_from_something_that_is_not_a_camera(tmp_path: Path) -> None:
    fake = tmp_path / "video0"
    fake.write_bytes(b"\0" * 64)
    spec = CameraSpec(id="c", backend="v4l2", device=fake)
    from hal.types import DeviceInfo
    from hal.v4l2 import V4l2Camera

    cam = V4l2Camera(spec, DeviceInfo(id="c", kind="camera", backend="v4l2", name="x"), None)
    with pytest.raises((UnsupportedError, DeviceIOError)):
        async with cam:
            pass


def test_controls_on_a_non_v4l2_file_are_unsupported(tmp_path: Path) -> None:
    fake = tmp_path / "video0"
    fake.write_bytes(b"")
    with pytest.raises(UnsupportedError) as err:
        V4l2Controls(fake, "c").query()  # a real ioctl on a regular file: ENOTTY
    assert err.value.device == "c"


# --- a V4L2 control set behind the ioctl boundary, to drive the control code end to end ------------


class _FakeKernel:
    """Answers VIDIOC_QUERY_EXT_CTRL / G_CTRL / S_CTRL / S_EXT_CTRLS like a UVC PTZ camera's driver."""

    def __init__(self) -> None:
        cid = raw.ControlID
        self.controls = {
            int(cid.PAN_ABSOLUTE): [b"Pan, Absolute", -36000, 36000, 3600, 0, 0],
            int(cid.TILT_ABSOLUTE): [b"Tilt, Absolute", -36000, 36000, 3600, 0, 0],
            int(cid.ZOOM_ABSOLUTE): [b"Zoom, Absolute", 100, 500, 1, 100, 100],
            int(cid.PRIVACY): [b"Privacy", 0, 1, 1, 0, 0],
            0x00980900: [b"Brightness", 0, 255, 1, 128, 128],
        }
        self.fail: OSError | None = None
        self.formats = [PixelFormat.YUYV, PixelFormat.MJPEG]
        self.sizes = [(640, 480), (1280, 720)]
        self.rates = [15, 30]

    def ioctl(self, fd: int, request: int, arg: Any = None, *rest: Any) -> Any:
        if self.fail is not None:
            raise self.fail
        next_flag = int(raw.ControlFlag.NEXT_CTRL) | int(raw.ControlFlag.NEXT_COMPOUND)
        if request == raw.IOC.QUERY_EXT_CTRL:
            after = arg.id & ~next_flag
            later = sorted(c for c in self.controls if c > after)
            if not later:
                raise OSError(errno.EINVAL, "no more")
            c = later[0]
            name, lo, hi, step, default, _ = self.controls[c]
            arg.id, arg.name, arg.minimum, arg.maximum = c, name, lo, hi
            arg.step, arg.default_value, arg.type, arg.flags = step, default, 1, 0
        elif request == raw.IOC.G_CTRL:
            arg.value = self.controls[arg.id][5]
        elif request == raw.IOC.S_CTRL:
            self._set(arg.id, arg.value)
        elif request == raw.IOC.S_EXT_CTRLS:
            for i in range(arg.count):
                self._set(arg.controls[i].id, arg.controls[i].value)
        elif request == raw.IOC.ENUM_FMT:
            if arg.index >= len(self.formats):
                raise OSError(errno.EINVAL, "no more")
            arg.pixelformat, arg.description, arg.flags = int(self.formats[arg.index]), b"fmt", 0
        elif request == raw.IOC.ENUM_FRAMESIZES:
            if arg.index >= len(self.sizes):
                raise OSError(errno.EINVAL, "no more")
            arg.type = 1  # V4L2_FRMSIZE_TYPE_DISCRETE
            arg.discrete.width, arg.discrete.height = self.sizes[arg.index]
        elif request == raw.IOC.ENUM_FRAMEINTERVALS:
            if arg.index >= len(self.rates):
                raise OSError(errno.EINVAL, "no more")
            arg.type = 1  # V4L2_FRMIVAL_TYPE_DISCRETE
            arg.discrete.numerator, arg.discrete.denominator = 1, self.rates[arg.index]
        else:
            raise OSError(errno.ENOTTY, "unexpected ioctl")
        return 0

    def _set(self, cid: int, value: int) -> None:
        entry = self.controls[cid]
        if not entry[1] <= value <= entry[2]:
            raise OSError(errno.ERANGE, "out of range")
        entry[5] = value


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[_FakeKernel, Path]:
    fake = _FakeKernel()
    monkeypatch.setattr(linuxpy.ioctl.fcntl, "ioctl", fake.ioctl)
    node = tmp_path / "video0"
    node.write_bytes(b"")
    return fake, node


def test_controls_query_get_set(kernel: tuple[_FakeKernel, Path]) -> None:
    _fake, node = kernel
    controls = V4l2Controls(node, "ptz")
    infos = controls.query()
    assert set(infos) >= {"pan_absolute", "tilt_absolute", "zoom_absolute", "privacy", "brightness"}
    assert (infos["zoom_absolute"].minimum, infos["zoom_absolute"].maximum) == (100, 500)
    controls.set("pan_absolute", 7200)
    assert controls.get("pan_absolute") == 7200
    controls.set_many({"tilt_absolute": -3600, "zoom_absolute": 300})
    assert (controls.get("tilt_absolute"), controls.get("zoom_absolute")) == (-3600, 300)
    with pytest.raises(UnsupportedError):
        controls.set("zoom_absolute", 9999)  # refused before any ioctl
    with pytest.raises(UnsupportedError):
        controls.get("focus_absolute")


async def test_ptz_and_presets_through_controls(kernel: tuple[_FakeKernel, Path], tmp_path: Path) -> None:
    from hal.types import DeviceInfo, PtzPosition
    from hal.v4l2 import V4l2Camera

    _, node = kernel
    spec = CameraSpec(id="ptz", backend="v4l2", device=node)
    cam = V4l2Camera(spec, DeviceInfo(id="ptz", kind="camera", backend="v4l2", name="x"), tmp_path / "p")
    await cam.set_ptz(pan=3600, zoom=200)
    await cam.move_ptz(tilt=7200)
    assert await cam.get_ptz() == PtzPosition(3600, 7200, 200)
    await cam.store_preset("desk")
    await cam.set_ptz(pan=0, tilt=0, zoom=100)
    await cam.recall_preset("desk")
    assert await cam.get_ptz() == PtzPosition(3600, 7200, 200)
    await cam.set_shutter(True)
    assert cam.controls.get("privacy") == 1
    assert cam.capabilities().ptz


@pytest.mark.parametrize(
    ("code", "error"),
    [(errno.ENODEV, DeviceGoneError), (errno.EBUSY, DeviceBusyError), (errno.EIO, DeviceIOError)],
)
def test_failing_ioctls_become_typed_errors(
    kernel: tuple[_FakeKernel, Path], code: int, error: Callable[..., Exception]
) -> None:
    fake, node = kernel
    controls = V4l2Controls(node, "ptz")
    controls.query()
    fake.fail = OSError(code, os.strerror(code))
    with pytest.raises(error) as err:  # type: ignore[call-overload]
        controls.set("pan_absolute", 3600)
    assert "VIDIOC_S_CTRL" in str(err.value)
    fake.fail = None
    assert controls.get("pan_absolute") == 0  # the failed write changed nothing


async def test_auto_serves_sim_and_real_cameras_together(sysfs: Path, tmp_path: Path) -> None:
    from hal.composite import CompositeInventory
    from hal.sim import SimInventory

    sim = SimInventory([CameraSpec(id="sim0", width=320, height=240)])
    real = V4l2Inventory(
        [CameraSpec(id="front", backend="v4l2", device=Path("/dev/video2"))],
        sysfs_root=sysfs,
        poll_s=0.05,
        use_udev=False,
    )
    inv = CompositeInventory([sim, real])
    assert {d.id for d in inv.list_devices()} == {"sim0", "video0", "front", "video10"}
    assert inv.open_camera("sim0").info.backend == "sim"
    assert inv.open_camera("front").info.backend == "v4l2"
    with pytest.raises(DeviceGoneError):
        inv.open_camera("nowhere")
    events = inv.events()
    sim.faults("sim0").unplug()
    first = await asyncio.wait_for(anext(events), 2)
    assert (first.action, first.device.id) == ("removed", "sim0")
    _add_node(sysfs, "video5", "USB cam", bus="usb4/4-1/4-1:1.0")
    second = await asyncio.wait_for(anext(events), 2)
    assert (second.action, second.device.id) == ("added", "video5")
    await events.aclose()  # type: ignore[attr-defined]
    mixed = [CameraSpec(id="sim0"), CameraSpec(id="front", backend="v4l2", device=Path("/dev/video2"))]
    assert isinstance(open_inventory(mixed, backend="auto", presets_dir=None), CompositeInventory)


def test_capture_modes_are_enumerated(kernel: tuple[_FakeKernel, Path]) -> None:
    from hal.types import DeviceInfo, FrameMode
    from hal.v4l2 import V4l2Camera

    _, node = kernel
    spec = CameraSpec(id="ptz", backend="v4l2", device=node)
    cam = V4l2Camera(spec, DeviceInfo(id="ptz", kind="camera", backend="v4l2", name="x"), None)
    modes = cam.capabilities().modes
    assert FrameMode("yuyv422", 1280, 720, 30.0) in modes
    assert FrameMode("mjpeg", 640, 480, 30.0) in modes
    assert len(modes) == 4


# --- the capture thread: bounded, drop-oldest, typed errors ------------------------------------------


async def _wait_until(predicate: Callable[[], bool]) -> None:
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_a_slow_consumer_gets_the_newest_frames_then_the_unplug() -> None:
    from hal.v4l2.reader import FrameReader

    def unplugged_after_ten() -> Any:
        yield from range(10)
        raise OSError(errno.ENODEV, "No such device")

    reader = FrameReader(unplugged_after_ten(), "cam", depth=2)
    reader.start()
    await _wait_until(lambda: not reader.running)
    assert reader.dropped == 8
    assert [(await reader.get())[0] for _ in range(2)] == [8, 9]  # the newest two, oldest first
    with pytest.raises(DeviceGoneError):
        await reader.get()


@pytest.mark.parametrize(
    ("failure", "error"),
    [(OSError(errno.EIO, "I/O error"), DeviceIOError), (OSError(errno.EBUSY, "busy"), DeviceBusyError)],
)
async def test_capture_errors_are_typed(failure: OSError, error: type[Exception]) -> None:
    from hal.v4l2.reader import FrameReader

    def failing() -> Any:
        yield "frame"
        raise failure

    reader = FrameReader(failing(), "cam", depth=4)
    reader.start()
    assert (await asyncio.wait_for(reader.get(), 2))[0] == "frame"
    with pytest.raises(error):
        await asyncio.wait_for(reader.get(), 2)


async def test_a_wedged_driver_is_reported_not_waited_for_forever() -> None:
    import threading

    from hal.v4l2.reader import FrameReader

    release = threading.Event()

    def wedged() -> Any:
        yield "frame"
        release.wait(5)  # a read stuck in the driver

    reader = FrameReader(wedged(), "cam")
    reader.start()
    await asyncio.wait_for(reader.get(), 2)
    assert reader.stop(0.1) is False
    release.set()
    assert reader.stop(2) is True


@pytest.mark.parametrize(
    ("fmt", "shape"), [("yuyv422", (36, 64, 2)), ("yuv420p", (54, 64)), ("nv12", (54, 64))]
)
def test_a_raw_frame_owns_its_pixels(fmt: str, shape: tuple[int, ...]) -> None:
    # The demuxer's raw picture lives in a driver buffer that closing the camera unmaps: the copy must
    # not share it (a write to the original does not show in the copy).
    import av
    import numpy as np

    from hal.v4l2.camera import _owned

    pixels = np.arange(np.prod(shape), dtype=np.uint32).astype(np.uint8).reshape(shape)
    original = av.VideoFrame.from_ndarray(pixels, format=fmt)
    copy = _owned(original, "cam0")
    original.planes[0].update(bytes(original.planes[0].buffer_size))
    assert copy.format.name == fmt
    assert (copy.to_ndarray() == pixels).all()
    assert (original.to_ndarray() != pixels).any()  # the write did reach the original
