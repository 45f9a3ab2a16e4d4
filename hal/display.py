"""Displays: the room's screen layout, a simulated display that verifies what it shows, and SDL2.

:func:`compose` draws a :class:`hal.types.Screen` into an RGB picture with numpy and PyAV's scaler
only (no GUI toolkit): the remote rooms in a grid, each with its name, the self-view small in the
bottom-right corner, a green "END-TO-END ENCRYPTED" badge, and a red banner when media is not
end-to-end encrypted (it never should be) or an amber one when the room is locked.

:class:`SimDisplay` reads the stamp (``hal.stamps``) of every remote picture it shows: pictures shown,
stamps missing, out of order, glass-to-glass latency (capture to display) and freeze time per tile,
and it can save PNGs. :class:`SdlDisplay` shows the same composition through SDL2 (pysdl2 and
Debian's libsdl2): KMS/DRM full screen on room hardware without a window system
(``driver="kmsdrm"``), a window on a desktop, ``offscreen``/``dummy`` in tests.
"""

from __future__ import annotations

__all__ = ["SdlDisplay", "SimDisplay", "TileReport", "compose", "layout"]

import asyncio
import ctypes
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import numpy.typing as npt
import structlog

from hal.errors import DeviceGoneError, UnsupportedError
from hal.stamps import read_stamp
from hal.types import DeviceInfo, DisplaySpec, Screen, Tile

log = structlog.get_logger()

RGB = npt.NDArray[np.uint8]
Box = tuple[int, int, int, int]  # x, y, width, height

_BG = (24, 24, 28)
_PLACEHOLDER = (30, 40, 70)
_RED = (200, 20, 20)
_AMBER = (230, 150, 0)
_GREEN = (20, 150, 60)
_WHITE = (255, 255, 255)

# A 3x5 pixel font (rows of 3 bits), enough for room names and notices.
_FONT_ROWS = {
    "A": "010 101 111 101 101", "B": "110 101 110 101 110", "C": "011 100 100 100 011",
    "D": "110 101 101 101 110", "E": "111 100 110 100 111", "F": "111 100 110 100 100",
    "G": "011 100 101 101 011", "H": "101 101 111 101 101", "I": "111 010 010 010 111",
    "J": "001 001 001 101 010", "K": "101 101 110 101 101", "L": "100 100 100 100 111",
    "M": "101 111 111 101 101", "N": "110 101 101 101 101", "O": "010 101 101 101 010",
    "P": "110 101 110 100 100", "Q": "010 101 101 110 011", "R": "110 101 110 101 101",
    "S": "011 100 010 001 110", "T": "111 010 010 010 010", "U": "101 101 101 101 111",
    "V": "101 101 101 101 010", "W": "101 101 111 111 101", "X": "101 101 010 101 101",
    "Y": "101 101 010 010 010", "Z": "111 001 010 100 111", "0": "111 101 101 101 111",
    "1": "010 110 010 010 111", "2": "110 001 010 100 111", "3": "110 001 010 001 110",
    "4": "101 101 111 001 001", "5": "111 100 110 001 110", "6": "011 100 111 101 111",
    "7": "111 001 010 010 010", "8": "111 101 111 101 111", "9": "111 101 111 001 110",
    "-": "000 000 111 000 000", ".": "000 000 000 000 010", ":": "000 010 000 010 000",
    "/": "001 001 010 100 100", " ": "000 000 000 000 000", "?": "111 001 010 000 010",
}  # fmt: skip
_FONT = {
    ch: np.array([[c == "1" for c in row] for row in rows.split()], dtype=bool)
    for ch, rows in _FONT_ROWS.items()
}


def _text(canvas: RGB, x: int, y: int, text: str, scale: int, color: tuple[int, int, int]) -> int:
    """Draw ``text`` (upper-cased) at (x, y); returns the width drawn. Clipped to the canvas."""
    h, w = canvas.shape[:2]
    cx = x
    for ch in text.upper():
        glyph = _FONT.get(ch, _FONT["?"])
        big = np.kron(glyph, np.ones((scale, scale), dtype=bool))
        gh, gw = big.shape
        if cx + gw > w or y + gh > h or cx < 0 or y < 0:
            break
        canvas[y : y + gh, cx : cx + gw][big] = color
        cx += gw + scale
    return cx - x


def _banner(canvas: RGB, y: int, text: str, color: tuple[int, int, int], scale: int) -> int:
    h = 7 * scale
    canvas[y : y + h, :] = color
    width = len(text) * 4 * scale
    _text(canvas, max(0, (canvas.shape[1] - width) // 2), y + scale, text, scale, _WHITE)
    return h


def layout(n_remote: int, width: int, height: int, top: int = 0) -> tuple[list[Box], Box]:
    """Boxes of the remote tiles (a grid, 16:9 each, centred) and of the self-view (bottom right)."""
    boxes: list[Box] = []
    if n_remote:
        cols = math.ceil(math.sqrt(n_remote))
        rows = math.ceil(n_remote / cols)
        cell_w, cell_h = width // cols, (height - top) // rows
        tw = min(cell_w - 8, (cell_h - 8) * 16 // 9) & ~1
        th = (tw * 9 // 16) & ~1
        for i in range(n_remote):
            r, c = divmod(i, cols)
            x = c * cell_w + (cell_w - tw) // 2
            y = top + r * cell_h + (cell_h - th) // 2
            boxes.append((x, y, tw, th))
    sw = (width // 5) & ~1
    sh = (sw * 9 // 16) & ~1
    return boxes, (width - sw - 8, height - sh - 8, sw, sh)


def _paste(canvas: RGB, box: Box, tile: Tile, scale: int) -> None:
    x, y, w, h = box
    if w <= 0 or h <= 0:
        return
    if tile.image is None:
        canvas[y : y + h, x : x + w] = _PLACEHOLDER
        _text(canvas, x + 2 * scale, y + h // 2, "WAITING", scale, _WHITE)
    else:
        rgb = tile.image.reformat(width=w, height=h, format="rgb24").to_ndarray()
        canvas[y : y + h, x : x + w] = rgb[:h, :w]
    label = tile.name + (" - LOCKED" if tile.locked else "")
    lh = 7 * scale
    lw = min(w, len(label) * 4 * scale + 2 * scale)
    canvas[y + h - lh : y + h, x : x + lw] = (0, 0, 0)
    _text(canvas, x + scale, y + h - lh + scale, label, scale, _WHITE)


def compose(screen: Screen, width: int, height: int) -> RGB:
    """The whole screen as an RGB picture (height x width x 3)."""
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = _BG
    scale = max(2, height // 240)
    top = 0
    if not screen.encrypted:
        top += _banner(canvas, top, "NOT END-TO-END ENCRYPTED", _RED, scale)
    if screen.locked:
        top += _banner(canvas, top, "ROOM LOCKED", _AMBER, scale)
    boxes, self_box = layout(len(screen.remote), width, height, top + 7 * scale)
    for tile, box in zip(screen.remote, boxes, strict=True):
        _paste(canvas, box, tile, scale)
    if screen.self_view is not None:
        _paste(canvas, self_box, screen.self_view, max(1, scale // 2))
    if screen.encrypted:
        badge = "END-TO-END ENCRYPTED"
        canvas[top : top + 7 * scale, 0 : len(badge) * 4 * scale + 2 * scale] = _GREEN
        _text(canvas, scale, top + scale, badge, scale, _WHITE)
    return canvas


@dataclass(slots=True)
class TileReport:
    """What one remote tile showed."""

    shown: int = 0  # new pictures shown
    stamps_missing: int = 0
    out_of_order: int = 0
    freeze_ms: float = 0.0  # time beyond 150 ms between consecutive new pictures
    latencies_ms: list[float] = field(default_factory=list)
    last_seq: int | None = None
    last_ns: int | None = None
    last_shown: float | None = None
    shown_at: list[tuple[int, int]] = field(default_factory=list)  # (capture_ns, shown_ns), bounded

    def as_dict(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {
            "shown": self.shown,
            "stamps_missing": self.stamps_missing,
            "out_of_order": self.out_of_order,
            "freeze_ms": round(self.freeze_ms, 1),
            "latency_ms_p50": round(lat[len(lat) // 2], 2) if lat else None,
            "latency_ms_p99": round(lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))], 2) if lat else None,
        }


_FREEZE_S = 0.150
_MAX_KEPT = 100_000


class _Verifier:
    """Reads the stamps of the remote pictures about to be shown (shared by both displays)."""

    def __init__(self) -> None:
        self.tiles: dict[str, TileReport] = {}
        self._last_image: dict[str, int] = {}
        self.screens = 0

    def check(self, screen: Screen) -> None:
        self.screens += 1
        now_ns, mono = time.time_ns(), time.monotonic()
        for tile in screen.remote:
            if tile.image is None or self._last_image.get(tile.name) == id(tile.image):
                continue  # the same picture again: nothing new shown
            self._last_image[tile.name] = id(tile.image)
            rep = self.tiles.setdefault(tile.name, TileReport())
            stamp = read_stamp(tile.image)
            if stamp is None:
                rep.stamps_missing += 1
                continue
            if (
                rep.last_seq is not None
                and rep.last_ns is not None
                and (stamp.capture_ns <= rep.last_ns or stamp.seq == rep.last_seq)
            ):
                rep.out_of_order += 1
                continue
            rep.shown += 1
            if rep.last_shown is not None and mono - rep.last_shown > _FREEZE_S:
                rep.freeze_ms += (mono - rep.last_shown - _FREEZE_S) * 1000
            rep.last_shown = mono
            rep.last_seq, rep.last_ns = stamp.seq, stamp.capture_ns
            if len(rep.latencies_ms) < _MAX_KEPT:
                rep.latencies_ms.append((now_ns - stamp.capture_ns) / 1e6)
                rep.shown_at.append((stamp.capture_ns, now_ns))


class SimDisplay:
    """A display in memory (implements ``hal.protocols.Display``) that verifies what it shows.

    Args:
        spec: a ``sim`` DisplaySpec.
        compose_every: compose the picture (the costly part) only every n-th ``show``; stamps are
            read on every call. ``png_dir``: save the composed screen there on :meth:`save_png`.
    """

    def __init__(self, spec: DisplaySpec, *, compose_every: int = 1) -> None:
        if spec.backend != "sim":
            raise UnsupportedError(f"not a sim display (backend {spec.backend!r})", device=spec.id)
        self.spec = spec
        self.verifier = _Verifier()
        self.last_screen: Screen | None = None
        self.last_picture: RGB | None = None
        self._compose_every = max(1, compose_every)
        self._lock = threading.Lock()

    @property
    def info(self) -> DeviceInfo:
        return DeviceInfo(id=self.spec.id, kind="display", backend="sim", name="Simulated display")

    @property
    def tiles(self) -> dict[str, TileReport]:
        return self.verifier.tiles

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def show(self, screen: Screen) -> None:
        with self._lock:
            self.verifier.check(screen)
            self.last_screen = screen
            if self.verifier.screens % self._compose_every == 0:
                self.last_picture = compose(screen, self.spec.width, self.spec.height)

    def save_png(self, path: Path) -> Path:
        """Compose the last screen shown and save it as a PNG."""
        import av

        with self._lock:
            if self.last_screen is None:
                raise UnsupportedError("nothing shown yet", device=self.spec.id)
            picture = compose(self.last_screen, self.spec.width, self.spec.height)
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
        from hal.images import save_png

        save_png(frame, path)
        return path


class SdlDisplay:
    """An SDL2 display (implements ``hal.protocols.Display``); all SDL calls run in one thread it owns.

    ``show`` hands the newest screen to that thread (a newer one replaces one not yet drawn).
    """

    def __init__(self, spec: DisplaySpec) -> None:
        if spec.backend != "sdl":
            raise UnsupportedError(f"not an sdl display (backend {spec.backend!r})", device=spec.id)
        self.spec = spec
        self.verifier = _Verifier()
        self.frames_presented = 0
        self._pending: Screen | None = None
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: str | None = None
        self._readback: RGB | None = None
        self._want_readback = False

    @property
    def info(self) -> DeviceInfo:
        return DeviceInfo(
            id=self.spec.id, kind="display", backend="sdl", name=f"SDL2 ({self.spec.driver or 'auto'})"
        )

    @property
    def tiles(self) -> dict[str, TileReport]:
        return self.verifier.tiles

    async def __aenter__(self) -> Self:
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"sdl[{self.spec.id}]", daemon=True)
        self._thread.start()
        await asyncio.to_thread(self._started.wait, 10.0)
        if self._error is not None:
            raise DeviceGoneError(f"SDL2 display failed to open: {self._error}", device=self.spec.id)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
            self._thread = None

    def show(self, screen: Screen) -> None:
        if self._error is not None:
            raise DeviceGoneError(f"SDL2 display failed: {self._error}", device=self.spec.id)
        self.verifier.check(screen)
        with self._cond:
            self._pending = screen
            self._cond.notify()

    def read_back(self, timeout_s: float = 5.0) -> RGB:
        """The pixels SDL's renderer holds after the next present (for tests and screenshots)."""
        with self._cond:
            self._want_readback = True
            self._readback = None
            self._cond.notify()
            self._cond.wait_for(lambda: self._readback is not None or self._error is not None, timeout_s)
            if self._readback is None:
                raise DeviceGoneError(f"no read-back: {self._error or 'timeout'}", device=self.spec.id)
            return self._readback

    def _run(self) -> None:
        if self.spec.driver:
            os.environ["SDL_VIDEODRIVER"] = self.spec.driver
        try:
            import sdl2
        except ImportError as exc:  # pysdl2 present but libSDL2 missing raises ImportError too
            self._error = f"pysdl2/libSDL2 unavailable: {exc}"
            self._started.set()
            return
        w, h = self.spec.width, self.spec.height
        if sdl2.SDL_Init(sdl2.SDL_INIT_VIDEO) != 0:
            self._error = sdl2.SDL_GetError().decode(errors="replace")
            self._started.set()
            return
        flags = sdl2.SDL_WINDOW_FULLSCREEN_DESKTOP if self.spec.fullscreen else 0
        window = sdl2.SDL_CreateWindow(b"roomagent", 0, 0, w, h, flags)
        renderer = sdl2.SDL_CreateRenderer(window, -1, 0) if window else None
        texture = (
            sdl2.SDL_CreateTexture(
                renderer, sdl2.SDL_PIXELFORMAT_RGB24, sdl2.SDL_TEXTUREACCESS_STREAMING, w, h
            )
            if renderer
            else None
        )
        if not texture:
            self._error = sdl2.SDL_GetError().decode(errors="replace")
            self._started.set()
            sdl2.SDL_Quit()
            return
        log.info("display_opened", display=self.spec.id, driver=sdl2.SDL_GetCurrentVideoDriver().decode())
        self._started.set()
        event = sdl2.SDL_Event()
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(
                        lambda: self._stop or self._pending is not None or self._want_readback, 0.1
                    )
                    if self._stop:
                        return
                    screen, self._pending = self._pending, None
                while sdl2.SDL_PollEvent(ctypes.byref(event)):
                    pass  # keep the window responsive; input is not used
                if screen is not None:
                    picture = np.ascontiguousarray(compose(screen, w, h))
                    sdl2.SDL_UpdateTexture(texture, None, picture.ctypes.data_as(ctypes.c_void_p), w * 3)
                    sdl2.SDL_RenderClear(renderer)
                    sdl2.SDL_RenderCopy(renderer, texture, None, None)
                    sdl2.SDL_RenderPresent(renderer)
                    self.frames_presented += 1
                if self._want_readback and self.frames_presented:
                    sdl2.SDL_RenderCopy(renderer, texture, None, None)
                    buf = np.empty((h, w, 3), dtype=np.uint8)
                    sdl2.SDL_RenderReadPixels(
                        renderer, None, sdl2.SDL_PIXELFORMAT_RGB24, buf.ctypes.data_as(ctypes.c_void_p), w * 3
                    )
                    with self._cond:
                        self._readback, self._want_readback = buf, False
                        self._cond.notify_all()
        finally:
            sdl2.SDL_DestroyTexture(texture)
            sdl2.SDL_DestroyRenderer(renderer)
            sdl2.SDL_DestroyWindow(window)
            sdl2.SDL_Quit()
