"""``roomagent bench hal``: sim frame generation cost and HAL encoder overhead.

- ``sim_frame_<size>``: ms to produce one sim frame (PTZ view, moving box, stamp), baseline the
  33.333 ms frame interval of 30 fps (goal: ratio <= 0.10); ``..._full_redraw`` is the worst case
  where every frame is copied whole from the cached view (a pooled buffer could not be reused).
- ``encode_<codec>_<size>_hal`` fps through ``hal.codecs.PyAvEncoder.encode`` beside
  ``encode_<codec>_<size>_raw``: the same frames through a bare PyAV codec context with the same
  settings, interleaved frame by frame in the same run so machine noise hits both alike. The HAL
  result's ``ratio`` is raw fps / HAL fps (the overhead factor; goal <= 1.05).

Options: ``--frames N`` (per 720p point; larger sizes scale down, at least 10; default 60),
``--codecs a,b`` (FFmpeg encoder names), ``--sizes 720p,1080p,4k``.
"""

from __future__ import annotations

__all__ = ["run"]

import argparse
import time
from fractions import Fraction
from typing import Any

import av

from agent.bench import Result, result
from hal.codecs import CLOCK, PyAvEncoder, PyAvEncoderFactory, _open_context
from hal.sim.camera import SimDevice, _Renderer
from hal.types import CameraSpec, EncoderConfig, Frame

_SIZES = {"720p": (1280, 720), "1080p": (1920, 1080), "4k": (3840, 2160)}
_CODECS = ("libx264", "libx265", "libvpx", "libvpx-vp9", "libsvtav1")
_INTERVAL_MS = 1000 / 30
_WARMUP = 2


def _parse(args: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="roomagent bench hal")
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--codecs", default=",".join(_CODECS))
    p.add_argument("--sizes", default="720p,1080p,4k")
    # `roomagent bench hal --json` hands "--json" through to us (argparse.REMAINDER): it is not ours.
    return p.parse_args([a for a in args if a != "--json"])


def _frames_for(base: int, width: int, height: int) -> int:
    return max(10, round(base * (1280 * 720) / (width * height)))


def _sim_frame(size: str, frames: int, *, full: bool = False) -> Result:
    width, height = _SIZES[size]
    device = SimDevice(CameraSpec(id="bench", width=width, height=height, fps=30, pattern="room"), None)
    device.scene()
    renderer = _Renderer(device)
    renderer.render(0, time.time_ns(), black=False, corrupt=False)  # builds the cached PTZ view
    n = max(frames, 30)
    start = time.perf_counter()
    for seq in range(1, n + 1):
        if full:  # worst case: every buffer redrawn whole (after a PTZ move, or a consumer holding all)
            for slot in renderer._pool:
                slot.key = None
        image = renderer.render(seq, time.time_ns(), black=False, corrupt=False)
        del image  # the consumer hands frames on promptly
    per_frame_ms = (time.perf_counter() - start) * 1000 / n
    name = f"sim_frame_{size}_full_redraw" if full else f"sim_frame_{size}"
    return result(name, per_frame_ms, "ms", baseline=_INTERVAL_MS, frames=n)


def _timed_hal(encoder: PyAvEncoder, frame: Frame) -> float:
    start = time.perf_counter()
    encoder.encode(frame)
    return time.perf_counter() - start


def _encode_point(name: str, size: str, frames: int, factory: PyAvEncoderFactory) -> list[Result]:
    width, height = _SIZES[size]
    config = EncoderConfig(codec=name, width=width, height=height, fps=30, bitrate_kbps=2500 * width // 1280)
    hal_encoder = PyAvEncoder(name, config, factory.faults)
    raw: Any = _open_context(name, config)  # same codec and options, without the HAL around it
    device = SimDevice(CameraSpec(id="bench", width=width, height=height, fps=30, pattern="room"), None)
    device.scene()
    renderer = _Renderer(device)
    hal_s = raw_s = 0.0
    timed = 0
    base_ns = time.time_ns()
    for seq in range(frames + _WARMUP):
        capture_ns = base_ns + seq * 33_333_333
        image = renderer.render(seq, capture_ns, black=False, corrupt=False)
        frame = Frame(
            camera_id="bench",
            seq=seq,
            capture_ns=capture_ns,
            width=width,
            height=height,
            pixel_format="yuv420p",
            image=image,
        )
        # Alternate which encoder goes first: the first to read a fresh frame pays its cache misses.
        hal_first = seq % 2 == 0
        if hal_first:
            hal_dt = _timed_hal(hal_encoder, frame)
        image.pts = seq * (CLOCK // 30)
        image.time_base = Fraction(1, CLOCK)
        image.pict_type = av.video.frame.PictureType.NONE
        t0 = time.perf_counter()
        raw.encode(image)
        raw_dt = time.perf_counter() - t0
        if not hal_first:
            hal_dt = _timed_hal(hal_encoder, frame)
        if seq >= _WARMUP:
            hal_s += hal_dt
            raw_s += raw_dt
            timed += 1
    hal_encoder.close()
    hal_fps, raw_fps = timed / hal_s, timed / raw_s
    return [
        result(f"encode_{name}_{size}_raw", raw_fps, "fps", frames=timed),
        # ratio = HAL fps / raw fps (>= 0.95 is good); overhead = raw fps / HAL fps (goal <= 1.05)
        result(
            f"encode_{name}_{size}_hal",
            hal_fps,
            "fps",
            baseline=raw_fps,
            frames=timed,
            overhead=round(raw_fps / hal_fps, 4),
        ),
    ]


def run(args: list[str]) -> list[Result]:
    opts = _parse(args)
    sizes = [s.strip().lower() for s in opts.sizes.split(",") if s.strip()]
    for s in sizes:
        if s not in _SIZES:
            raise SystemExit(f"unknown size {s!r}; known: {', '.join(_SIZES)}")
    results: list[Result] = []
    for size in ("1080p", "4k"):
        results.append(_sim_frame(size, opts.frames))
        results.append(_sim_frame(size, opts.frames, full=True))
    factory = PyAvEncoderFactory()
    available = {c.name for c in factory.probe()}
    for name in [c.strip() for c in opts.codecs.split(",") if c.strip()]:
        if name not in available:
            results.append(result(f"encode_{name}_unavailable", 0, "fps"))
            continue
        for size in sizes:
            width, height = _SIZES[size]
            results.extend(_encode_point(name, size, _frames_for(opts.frames, width, height), factory))
    return results
