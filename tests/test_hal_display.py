"""Displays: layout and notices, the sim display's stamp verification and PNGs, SDL2 offscreen."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import av
import numpy as np

from hal.display import SimDisplay, compose, layout
from hal.images import decode_png
from hal.protocols import Display
from hal.stamps import write_stamp
from hal.types import DisplaySpec, Screen, Tile


def _picture(seq: int | None, capture_ns: int, luma: int = 120) -> av.VideoFrame:
    frame = av.VideoFrame(640, 360, "yuv420p")
    y = np.frombuffer(frame.planes[0], np.uint8).reshape(360, frame.planes[0].line_size)[:, :640]
    y[:] = luma
    for plane in frame.planes[1:]:
        np.frombuffer(plane, np.uint8)[:] = 128  # grey: no colour of its own
    if seq is not None:
        write_stamp(y, seq, capture_ns)
    return frame


def test_layout_grid_and_self_view() -> None:
    boxes, self_box = layout(3, 1280, 720)
    assert len(boxes) == 3
    for x, y, w, h in [*boxes, self_box]:
        assert x >= 0
        assert x + w <= 1280
        assert y >= 0
        assert y + h <= 720
        assert abs(w / h - 16 / 9) < 0.05
    assert self_box[2] < boxes[0][2]  # the self-view is small


def test_notices_are_visible() -> None:
    tiles = (Tile("ROOM B", _picture(1, time.time_ns())),)
    safe = compose(Screen(remote=tiles), 640, 360)
    unsafe = compose(Screen(remote=tiles, encrypted=False, locked=True), 640, 360)
    red = (unsafe[:, :, 0] > 180) & (unsafe[:, :, 1] < 40)
    amber = (unsafe[:, :, 0] > 200) & (unsafe[:, :, 1] > 120) & (unsafe[:, :, 2] < 30)
    assert red[:10].all(axis=1).any(), "a full-width red banner at the top"
    assert amber.any(axis=1).sum() >= 10, "an amber locked banner"
    assert not ((safe[:, :, 0] > 180) & (safe[:, :, 1] < 40)).any(), "no red when encrypted"
    green = (safe[:, :, 1] > 130) & (safe[:, :, 0] < 40)
    assert green.any(), "the end-to-end encrypted badge"


def test_sim_display_reads_stamps_counts_order_latency_freeze(tmp_path: Path) -> None:
    display = SimDisplay(DisplaySpec(id="d", width=640, height=360))
    assert isinstance(display, Display)
    t0 = time.time_ns() - 50_000_000
    pics = [_picture(i, t0 + i * 33_000_000) for i in range(6)]
    for i in (0, 1, 2, 4, 3):  # 3 shown after 4: out of order
        display.show(Screen(remote=(Tile("B", pics[i]),), self_view=Tile("SELF", pics[0])))
    display.show(Screen(remote=(Tile("B", pics[3]),)))  # same picture again: not new
    time.sleep(0.25)
    display.show(Screen(remote=(Tile("B", pics[5]),)))
    display.show(Screen(remote=(Tile("B", _picture(None, 0)),)))  # no stamp
    rep = display.tiles["B"].as_dict()
    assert rep["shown"] == 5
    assert rep["out_of_order"] == 1
    assert rep["stamps_missing"] == 1
    assert rep["freeze_ms"] >= 50
    assert rep["latency_ms_p50"] is not None
    assert rep["latency_ms_p50"] > 0
    png = display.save_png(tmp_path / "screen.png")
    image = decode_png(png.read_bytes())
    assert (image.width, image.height) == (640, 360)


def test_sdl_display_offscreen(tmp_path: Path) -> None:
    """SDL2 (pysdl2 + Debian libsdl2) with the offscreen video driver: what the renderer holds after
    present is the composed screen (compared pixel for pixel with the in-memory composition)."""
    script = textwrap.dedent(
        """
        import asyncio, time, numpy as np, av
        from hal.display import SdlDisplay, compose
        from hal.stamps import write_stamp
        from hal.types import DisplaySpec, Screen, Tile
        async def main():
            frame = av.VideoFrame(640, 360, "yuv420p")
            y = np.frombuffer(frame.planes[0], np.uint8).reshape(360, frame.planes[0].line_size)[:, :640]
            y[:] = 200
            for plane in frame.planes[1:]:
                np.frombuffer(plane, np.uint8)[:] = 128
            write_stamp(y, 7, time.time_ns())
            screen = Screen(remote=(Tile("ROOM A", frame),), locked=True)
            spec = DisplaySpec(id="d", backend="sdl", width=320, height=180, driver="offscreen")
            async with SdlDisplay(spec) as d:
                d.show(screen)
                got = await asyncio.to_thread(d.read_back)
                want = compose(screen, 320, 180)
                diff = int(np.abs(got.astype(int) - want).max())
                print("RESULT", diff, d.frames_presented, d.verifier.tiles["ROOM A"].shown)
        asyncio.run(main())
        """
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    _, diff, presented, shown = line.split()
    assert int(diff) <= 2
    assert int(presented) >= 1
    assert int(shown) == 1
