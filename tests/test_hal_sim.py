"""The sim backend as testers use it: paced, stamped frames; PTZ that moves the picture; persisted
presets; shutter; indicator; and every fault switch."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from hal import encoder_factory, open_inventory
from hal.errors import DeviceBusyError, DeviceGoneError, EncoderError, PresetNotFoundError, UnsupportedError
from hal.sim import SimCamera, SimInventory
from hal.sim.scene import PTZ_STEP
from hal.stamps import read_stamp
from hal.types import CameraSpec, EncoderConfig, Frame, HotplugEvent, IndicatorState, PtzPosition

W, H = 320, 240


def _inventory(tmp_path: Path, fps: int = 60, pattern: str = "bars") -> SimInventory:
    spec = CameraSpec(id="cam0", width=W, height=H, fps=fps, pattern=pattern)  # type: ignore[arg-type]
    inv = open_inventory([spec], backend="sim", presets_dir=tmp_path / "presets")
    assert isinstance(inv, SimInventory)
    return inv


async def _take(camera: SimCamera, n: int) -> list[Frame]:
    out = []
    async for frame in camera.frames():
        out.append(frame)
        if len(out) == n:
            break
    return out


def _planes(frame: Frame) -> tuple[np.ndarray, np.ndarray]:
    arr = frame.image.to_ndarray()  # yuv420p: (h*3/2, w)
    y = arr[:H]
    u = arr[H : H + H // 4].reshape(H // 2, W // 2)
    return y, u


async def test_frames_are_paced_stamped_and_described(tmp_path: Path) -> None:
    inv = _inventory(tmp_path, fps=30)
    [info] = inv.list_devices()
    assert info.id == "cam0"
    assert info.kind == "camera"
    assert info.backend == "sim"
    async with inv.open_camera("cam0") as cam:
        caps = cam.capabilities()
        assert caps.ptz
        assert caps.privacy_shutter
        assert caps.indicator
        assert (caps.modes[0].width, caps.modes[0].height, caps.modes[0].fps) == (W, H, 30.0)
        start = time.monotonic()
        frames = await _take(cam, 10)
        elapsed = time.monotonic() - start
    assert elapsed >= 9 / 30 * 0.9
    assert [f.seq for f in frames] == list(range(10))
    for f in frames:
        assert (f.width, f.height, f.pixel_format) == (W, H, "yuv420p")
        assert f.image.format.name == "yuv420p"
        assert f.image.width == W
        stamp = read_stamp(f.image)
        assert stamp is not None
        assert (stamp.seq, stamp.capture_ns) == (f.seq, f.capture_ns)
    assert all(b.capture_ns > a.capture_ns for a, b in itertools.pairwise(frames))


async def test_a_frame_never_changes_after_it_left_the_camera(tmp_path: Path) -> None:
    async with _inventory(tmp_path, fps=120).open_camera("cam0") as cam:
        frames = await _take(cam, 20)
    for f in frames:  # all held at once: none was redrawn for a later frame
        stamp = read_stamp(f.image)
        assert stamp is not None
        assert stamp.seq == f.seq


async def test_the_picture_moves(tmp_path: Path) -> None:
    async with _inventory(tmp_path, fps=120).open_camera("cam0") as cam:
        a, b = await _take(cam, 2)
    assert not np.array_equal(a.image.to_ndarray(), b.image.to_ndarray())


async def test_pan_and_tilt_move_the_view(tmp_path: Path) -> None:
    async with _inventory(tmp_path, fps=120).open_camera("cam0") as cam:
        [before] = await _take(cam, 1)
        await cam.set_ptz(pan=PTZ_STEP)  # +1 degree: the window moves right by w/20 = 16 px
        [panned] = await _take(cam, 1)
        await cam.set_ptz(pan=0, tilt=PTZ_STEP)  # +1 degree up: the window moves up by h/20 = 12 px
        [tilted] = await _take(cam, 1)
        assert await cam.get_ptz() == PtzPosition(pan=0, tilt=PTZ_STEP, zoom=100)
    y0, _ = _planes(before)
    y1, _ = _planes(panned)
    y2, _ = _planes(tilted)
    rows = slice(H - 40, H)  # below the moving box and the stamp
    assert np.array_equal(y1[rows, : W - 16], y0[rows, 16:])
    assert np.array_equal(y2[H - 40 : H, :], y0[H - 52 : H - 12, :])


async def test_zoom_magnifies(tmp_path: Path) -> None:
    def bars_seen(u: np.ndarray) -> int:
        row = u[-4]  # chroma row near the bottom: bar edges only (grid lines are luma)
        return int(np.count_nonzero(np.diff(row.astype(int)))) + 1

    async with _inventory(tmp_path, fps=120).open_camera("cam0") as cam:
        [wide] = await _take(cam, 1)
        await cam.set_ptz(zoom=200)
        [zoomed] = await _take(cam, 1)
    wide_bars, zoomed_bars = bars_seen(_planes(wide)[1]), bars_seen(_planes(zoomed)[1])
    assert wide_bars >= 7
    assert zoomed_bars <= wide_bars // 2 + 1


async def test_ptz_limits(tmp_path: Path) -> None:
    async with _inventory(tmp_path).open_camera("cam0") as cam:
        with pytest.raises(UnsupportedError):
            await cam.set_ptz(pan=10**6)
        assert await cam.get_ptz() == PtzPosition(0, 0, 100)  # unchanged
        await cam.move_ptz(pan=10**6, zoom=-50)  # relative moves stop at the end of the range
        assert await cam.get_ptz() == PtzPosition(36_000, 0, 100)


async def test_presets_survive_a_restart(tmp_path: Path) -> None:
    async with _inventory(tmp_path).open_camera("cam0") as cam:
        await cam.set_ptz(pan=7200, tilt=-3600, zoom=150)
        await cam.store_preset("door")
        await cam.set_ptz(pan=0, tilt=0, zoom=100)
    stored = json.loads((tmp_path / "presets" / "cam0.json").read_text())
    assert stored["presets"]["door"] == {"pan": 7200, "tilt": -3600, "zoom": 150}
    # A new process: new inventory over the same directory.
    async with _inventory(tmp_path).open_camera("cam0") as cam:
        assert await cam.list_presets() == {"door": PtzPosition(7200, -3600, 150)}
        await cam.recall_preset("door")
        assert await cam.get_ptz() == PtzPosition(7200, -3600, 150)
        with pytest.raises(PresetNotFoundError) as err:
            await cam.recall_preset("window")
        assert err.value.preset == "window"
        with pytest.raises(UnsupportedError):
            await cam.store_preset("../../etc/passwd")


async def test_a_corrupt_preset_file_is_moved_aside_not_lost(tmp_path: Path) -> None:
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "cam0.json").write_text("{not json")
    async with _inventory(tmp_path).open_camera("cam0") as cam:
        assert await cam.list_presets() == {}
        await cam.store_preset("home")
    [aside] = presets.glob("cam0.json.corrupt-*")
    assert aside.read_text() == "{not json"


async def test_shutter_gives_black_unstamped_frames(tmp_path: Path) -> None:
    async with _inventory(tmp_path, fps=120).open_camera("cam0") as cam:
        await cam.set_shutter(True)
        assert cam.shutter_closed
        closed = await _take(cam, 3)
        await cam.set_shutter(False)
        [opened] = await _take(cam, 1)
    for f in closed:
        y, u = _planes(f)
        assert int(y.max()) == 16
        assert int(y.min()) == 16
        assert int(u.min()) == int(u.max()) == 128
        assert read_stamp(f.image) is None
    assert read_stamp(opened.image) is not None


async def test_indicator_and_announcements(tmp_path: Path) -> None:
    inv = _inventory(tmp_path)
    async with inv.open_camera("cam0") as cam:
        assert cam.indicator is IndicatorState.OFF
        await cam.set_indicator(IndicatorState.ON)
        assert cam.indicator is IndicatorState.ON
        await cam.announce("This room is under a lawful intercept order")
        assert cam.indicator is IndicatorState.ON  # frames leaving always show in-use (hal.indicator)
        assert [n.message for n in cam.notices] == ["This room is under a lawful intercept order"]
    assert inv.device("cam0").indicator is IndicatorState.NOTICE  # closed: the notice shows (held)
    inv.device("cam0").acknowledge_notice()
    assert inv.device("cam0").indicator is IndicatorState.OFF  # closing the camera turns it off


async def test_a_camera_opens_once(tmp_path: Path) -> None:
    inv = _inventory(tmp_path)
    async with inv.open_camera("cam0"):
        with pytest.raises(DeviceBusyError):
            async with inv.open_camera("cam0"):
                pass
    async with inv.open_camera("cam0"):
        pass


async def _next_event(events: AsyncIterator[HotplugEvent]) -> HotplugEvent:
    return await asyncio.wait_for(anext(events), 2)


async def test_unplug_ends_the_stream_and_replug_brings_it_back(tmp_path: Path) -> None:
    inv = _inventory(tmp_path, fps=60)
    events = inv.events()
    async with inv.open_camera("cam0") as cam:
        await _take(cam, 2)
        cam.faults.unplug()
        start = time.monotonic()
        with pytest.raises(DeviceGoneError) as err:
            await _take(cam, 100)
        assert time.monotonic() - start < 0.5
        assert err.value.device == "cam0"
    removed = await _next_event(events)
    assert (removed.action, removed.device.id) == ("removed", "cam0")
    assert inv.list_devices() == []
    with pytest.raises(DeviceGoneError):
        inv.open_camera("cam0")
    inv.faults("cam0").replug()
    added = await _next_event(events)
    assert (added.action, added.device.id) == ("added", "cam0")
    async with inv.open_camera("cam0") as cam:
        [frame] = await _take(cam, 1)
        assert frame.seq == 0  # a fresh opening counts from zero


async def test_stall_gap_is_visible_in_capture_times(tmp_path: Path) -> None:
    async with _inventory(tmp_path, fps=60).open_camera("cam0") as cam:
        [before] = await _take(cam, 1)
        cam.faults.stall(250)
        [after] = await _take(cam, 1)
    assert after.seq == before.seq + 1
    assert (after.capture_ns - before.capture_ns) / 1e9 >= 0.24


async def test_drop_every_nth_frame(tmp_path: Path) -> None:
    async with _inventory(tmp_path, fps=120).open_camera("cam0") as cam:
        cam.faults.drop_every(3)
        frames = await _take(cam, 8)
        cam.faults.drop_every(0)
    seqs = [f.seq for f in frames]
    assert all((s + 1) % 3 for s in seqs)
    assert seqs[:4] == [0, 1, 3, 4]
    with pytest.raises(ValueError, match="drop_every"):
        cam.faults.drop_every(1)


async def test_corrupt_next_garbles_exactly_one_frame(tmp_path: Path) -> None:
    async with _inventory(tmp_path, fps=120).open_camera("cam0") as cam:
        await _take(cam, 1)
        cam.faults.corrupt_next()
        bad, good = await _take(cam, 2)
    assert read_stamp(bad.image) is None
    assert read_stamp(good.image) is not None


async def test_encoder_faults_slow_and_fail(tmp_path: Path) -> None:
    factory = encoder_factory()
    encoder = factory.open(EncoderConfig(codec="h264", width=W, height=H, fps=30), ["libx264"])
    async with _inventory(tmp_path, fps=120).open_camera("cam0") as cam:
        frames = await _take(cam, 3)
    factory.faults.slow(80)
    start = time.monotonic()
    encoder.encode(frames[0])
    assert time.monotonic() - start >= 0.08
    factory.faults.clear()
    factory.faults.fail()
    with capture_logs(), pytest.raises(EncoderError):
        encoder.encode(frames[1])
    assert encoder.encode(frames[2]) is not None  # one failure, then it works again


def test_sim_refuses_what_it_cannot_simulate(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedError):
        SimInventory([CameraSpec(id="c", pixel_format="mjpeg")])
    with pytest.raises(UnsupportedError):
        open_inventory([], backend="gstreamer", presets_dir=None)
    with pytest.raises(ValueError, match="even"):
        CameraSpec(id="c", width=321)


async def test_a_notice_outlasts_the_media_path_switching_the_led_off_for_its_hold_only(
    tmp_path: Path,
) -> None:
    """An intervention is announced, then the media path stops and turns the LED OFF: the room must still
    see the notice, for a bounded time; while frames leave (ON) the LED shows in-use, never NOTICE."""
    inv = _inventory(tmp_path)
    device = inv.device("cam0")
    now = [1000.0]
    device.led.clock = lambda: now[0]
    async with inv.open_camera("cam0") as cam:
        await cam.set_indicator(IndicatorState.ON)  # a meeting: frames leave
        await cam.announce("This room has been locked by the customer.")
        assert cam.indicator is IndicatorState.ON  # in-use outranks the notice
        await cam.set_indicator(IndicatorState.OFF)  # the lock stopped media
        assert cam.indicator is IndicatorState.NOTICE  # the notice outranks OFF
        now[0] += 5.0
        await cam.set_indicator(IndicatorState.OFF)  # the pipeline's indicator watch, again
        assert cam.indicator is IndicatorState.NOTICE
        await cam.set_indicator(IndicatorState.ON)  # frames leave again (unlocked, new meeting)
        assert cam.indicator is IndicatorState.ON
        await cam.set_indicator(IndicatorState.OFF)
        now[0] += 5.0  # the 10 s hold ran on while ON masked it
        assert cam.indicator is IndicatorState.OFF
        await cam.announce("A remote snapshot of this room was taken at the customer's request.")
        assert cam.indicator is IndicatorState.NOTICE
        device.acknowledge_notice()  # someone in the room pressed the button
        assert cam.indicator is IndicatorState.OFF
