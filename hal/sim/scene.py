"""The simulated camera's world: a still scene twice the view in each direction, seen through PTZ.

The scene is rendered once per camera (numpy, YUV 4:2:0). Pan and tilt move a window across it, zoom
shrinks the window (nearest-neighbour scaling to the view size), so PTZ really changes the picture.
The rendered view for the current PTZ position is cached: per frame only the moving box and the stamp
are drawn, which keeps a 4K frame well inside a 30 fps frame interval.
"""

from __future__ import annotations

__all__ = ["PAN_RANGE", "TILT_RANGE", "ZOOM_MAX", "ZOOM_MIN", "Scene", "View"]

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

U8Array = npt.NDArray[np.uint8]

# PTZ ranges in V4L2 units: arc-seconds for pan/tilt (±10 degrees), zoom 100 (wide) .. 400 (4x).
PAN_RANGE = 36_000
TILT_RANGE = 36_000
PTZ_STEP = 3_600
ZOOM_MIN = 100
ZOOM_MAX = 400

# (Y, U, V) of the colour bars: white, yellow, cyan, green, magenta, red, blue, grey, black ... (BT.601)
_BARS = (
    (235, 128, 128),
    (210, 16, 146),
    (170, 166, 16),
    (145, 54, 34),
    (106, 202, 222),
    (81, 90, 240),
    (41, 240, 110),
    (126, 128, 128),
    (16, 128, 128),
    (180, 100, 160),
    (60, 170, 90),
    (200, 140, 60),
    (95, 60, 200),
    (150, 200, 100),
    (30, 150, 150),
    (220, 110, 120),
)


@dataclass(frozen=True, slots=True)
class View:
    """The background seen at one PTZ position: contiguous Y (h x w) and U, V (h/2 x w/2) planes."""

    y: U8Array
    u: U8Array
    v: U8Array


class Scene:
    """A still world of ``2*width x 2*height`` pixels in one of the sim patterns."""

    def __init__(self, width: int, height: int, pattern: str, *, seed: int = 1) -> None:
        self.width = width
        self.height = height
        self.pattern = pattern
        world_w, world_h = 2 * width, 2 * height
        self._y, self._u, self._v = _render_world(world_w, world_h, pattern, seed)
        self._cache_key: tuple[int, int, int] | None = None
        self._cache: View | None = None

    def view(self, pan: int, tilt: int, zoom: int) -> View:
        """The background at this PTZ position (cached for the last position asked)."""
        key = (pan, tilt, zoom)
        if key != self._cache_key or self._cache is None:
            self._cache = self._render_view(pan, tilt, zoom)
            self._cache_key = key
        return self._cache

    def _render_view(self, pan: int, tilt: int, zoom: int) -> View:
        w, h = self.width, self.height
        world_h, world_w = self._y.shape
        scale = 100.0 / zoom
        win_w, win_h = w * scale, h * scale
        # Pan right (positive) moves the window right; tilt up (positive) moves it up.
        cx = world_w / 2 + (pan / PAN_RANGE) * (world_w - win_w) / 2
        cy = world_h / 2 - (tilt / TILT_RANGE) * (world_h - win_h) / 2
        x0, y0 = cx - win_w / 2, cy - win_h / 2
        if zoom == ZOOM_MIN:
            xi, yi = round(x0) & ~1, round(y0) & ~1
            xi = min(max(xi, 0), world_w - w)
            yi = min(max(yi, 0), world_h - h)
            return View(
                y=np.ascontiguousarray(self._y[yi : yi + h, xi : xi + w]),
                u=np.ascontiguousarray(self._u[yi // 2 : (yi + h) // 2, xi // 2 : (xi + w) // 2]),
                v=np.ascontiguousarray(self._v[yi // 2 : (yi + h) // 2, xi // 2 : (xi + w) // 2]),
            )
        rows = np.clip((y0 + (np.arange(h) + 0.5) * scale).astype(np.intp), 0, world_h - 1)
        cols = np.clip((x0 + (np.arange(w) + 0.5) * scale).astype(np.intp), 0, world_w - 1)
        crows, ccols = rows[::2] // 2, cols[::2] // 2
        return View(
            y=np.ascontiguousarray(self._y.take(rows, axis=0).take(cols, axis=1)),
            u=np.ascontiguousarray(self._u.take(crows, axis=0).take(ccols, axis=1)),
            v=np.ascontiguousarray(self._v.take(crows, axis=0).take(ccols, axis=1)),
        )


def _planes(world_w: int, world_h: int) -> tuple[U8Array, U8Array, U8Array]:
    return (
        np.empty((world_h, world_w), np.uint8),
        np.empty((world_h // 2, world_w // 2), np.uint8),
        np.empty((world_h // 2, world_w // 2), np.uint8),
    )


def _render_world(world_w: int, world_h: int, pattern: str, seed: int) -> tuple[U8Array, U8Array, U8Array]:
    y, u, v = _planes(world_w, world_h)
    cw, ch = world_w // 2, world_h // 2
    if pattern == "bars":
        # Vertical colour bars with a grid of lines, so both pan and tilt visibly move the picture.
        bar = (np.arange(world_w) * len(_BARS) // world_w).astype(np.intp)
        table = np.array(_BARS, dtype=np.uint8)
        y[:] = table[bar, 0][None, :]
        u[:] = table[bar[::2], 1][None, :]
        v[:] = table[bar[::2], 2][None, :]
        pitch = max(16, world_w // 48) & ~1
        y[::pitch, :] = 16
        y[:, ::pitch] = 16
        y[1::pitch, :] = 16
        y[:, 1::pitch] = 16
    elif pattern == "gradient":
        xs = np.linspace(0.0, 1.0, world_w, dtype=np.float32)
        ys = np.linspace(0.0, 1.0, world_h, dtype=np.float32)
        y[:] = (16 + 219 * (0.6 * xs[None, :] + 0.4 * ys[:, None])).astype(np.uint8)
        u[:] = (16 + 224 * np.linspace(0.0, 1.0, cw, dtype=np.float32))[None, :].astype(np.uint8)
        v[:] = (16 + 224 * np.linspace(0.0, 1.0, ch, dtype=np.float32))[:, None].astype(np.uint8)
    elif pattern == "noise":
        # Blocky noise (16 px cells): hard for encoders, but still deterministic per seed.
        rng = np.random.default_rng(seed)
        cells_y = rng.integers(16, 236, size=(world_h // 16 + 1, world_w // 16 + 1), dtype=np.uint8)
        cells_u = rng.integers(16, 241, size=(ch // 8 + 1, cw // 8 + 1), dtype=np.uint8)
        cells_v = rng.integers(16, 241, size=(ch // 8 + 1, cw // 8 + 1), dtype=np.uint8)
        y[:] = np.repeat(np.repeat(cells_y, 16, axis=0), 16, axis=1)[:world_h, :world_w]
        u[:] = np.repeat(np.repeat(cells_u, 8, axis=0), 8, axis=1)[:ch, :cw]
        v[:] = np.repeat(np.repeat(cells_v, 8, axis=0), 8, axis=1)[:ch, :cw]
    elif pattern == "room":
        _render_room(y, u, v)
    else:
        raise ValueError(f"unknown sim pattern {pattern!r}; known: bars, gradient, noise, room")
    return y, u, v


def _fill(
    y: U8Array, u: U8Array, v: U8Array, x0: float, y0: float, x1: float, y1: float, yuv: tuple[int, int, int]
) -> None:
    """Fill a rectangle given as fractions of the world."""
    h, w = y.shape
    ax, ay, bx, by = int(x0 * w) & ~1, int(y0 * h) & ~1, int(x1 * w) & ~1, int(y1 * h) & ~1
    y[ay:by, ax:bx] = yuv[0]
    u[ay // 2 : by // 2, ax // 2 : bx // 2] = yuv[1]
    v[ay // 2 : by // 2, ax // 2 : bx // 2] = yuv[2]


def _render_room(y: U8Array, u: U8Array, v: U8Array) -> None:
    """A meeting room: wall, floor, window, whiteboard, table, and a few seated figures."""
    _fill(y, u, v, 0, 0, 1, 0.62, (176, 120, 138))  # wall
    _fill(y, u, v, 0, 0.62, 1, 1, (92, 112, 150))  # floor
    _fill(y, u, v, 0.06, 0.12, 0.30, 0.45, (210, 160, 110))  # window (sky)
    _fill(y, u, v, 0.70, 0.15, 0.94, 0.40, (230, 128, 128))  # whiteboard
    for i, cx in enumerate((0.30, 0.42, 0.58, 0.70)):
        _fill(y, u, v, cx - 0.035, 0.38, cx + 0.035, 0.48, (150 - 15 * i, 105, 160))  # heads
        _fill(y, u, v, cx - 0.05, 0.48, cx + 0.05, 0.66, (60 + 20 * i, 150 - 10 * i, 110 + 12 * i))  # bodies
    _fill(y, u, v, 0.18, 0.60, 0.82, 0.74, (70, 120, 142))  # table
    # Mullions on the window and lines on the whiteboard, to give encoders some edges.
    h, w = y.shape
    for frac in (0.14, 0.22):
        x = int(frac * w) & ~1
        y[int(0.12 * h) : int(0.45 * h), x : x + 4] = 235
    for frac in (0.20, 0.25, 0.30, 0.35):
        row = int(frac * h) & ~1
        y[row : row + 2, int(0.72 * w) : int(0.92 * w)] = 40
