"""``roomagent bench meeting``: two simulated rooms meeting, E2EE video and audio both ways.

Scenarios (each a full :func:`agent.media.demo.run_meeting` in this process):
- ``loopback``: 1080p30 + Opus both ways; glass-to-glass p99, mouth-to-ear p99, A/V skew p95,
  decrypt failures. Baseline: the same meeting at 360p (what the machine does with little video work).
- ``impaired``: 2 % loss and 30 ms jitter through the impairing relay, 720p30: video shown %, audio
  played-or-concealed %, latencies. Baseline: the 360p loopback run. Then the same with a 500 ms
  blackout: recovery (blackout end to the first picture/sound captured after it).
- ``cpu``: CPU of the process hosting a room that sends 1080p30 and receives two 720p30 streams
  with audio (three rooms in the process; the CPU is divided by the rooms' share of the work),
  beside the encoder-only baseline (the same 1080p30 encode with nothing sent or received).
"""

from __future__ import annotations

__all__ = ["run"]

import argparse
import asyncio
import resource
import sys
import time
from typing import Any

from agent.bench import Result, result
from agent.logs import configure_logging
from agent.media.demo import DemoOptions, run_meeting
from agent.media.relay import Impairment


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _worst(summary: dict[str, Any], key: str, *, low: bool = False) -> float:
    values = [d[key] for d in summary.values() if isinstance(d, dict) and d.get(key) is not None]
    if not values:
        return float("nan")
    return float(min(values) if low else max(values))


def _meeting(opts: DemoOptions) -> tuple[dict[str, Any], float]:
    c0, t0 = _cpu_s(), time.monotonic()
    summary = run_meeting(opts)
    cpu_pct = 100 * (_cpu_s() - c0) / (time.monotonic() - t0)
    return summary, cpu_pct


async def _encode_only(width: int, height: int, fps: int, seconds: float) -> float:
    """CPU % of capturing and encoding 1080p30 alone (sim camera + libx264, nothing sent)."""
    from hal.codecs import PyAvEncoderFactory
    from hal.sim import SimInventory
    from hal.types import CameraSpec, EncoderConfig

    inv = SimInventory([CameraSpec(id="c", width=width, height=height, fps=fps)])
    enc = PyAvEncoderFactory().open(EncoderConfig("h264", width, height, fps, 4000, 60), ("libx264",))
    c0, t0 = _cpu_s(), time.monotonic()
    async with inv.open_camera("c") as cam:
        async for frame in cam.frames():
            await asyncio.to_thread(enc.encode, frame)
            if time.monotonic() - t0 >= seconds:
                break
    enc.close()
    return 100 * (_cpu_s() - c0) / (time.monotonic() - t0)


def run(argv: list[str]) -> list[Result]:
    parser = argparse.ArgumentParser(prog="roomagent bench meeting")
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--scenarios", default="loopback,impaired,cpu")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    configure_logging(level="warning", stream=sys.stderr)
    scenarios = {s.strip() for s in args.scenarios.split(",")}
    out: list[Result] = []
    base_opts = DemoOptions(seconds=args.seconds, width=640, height=360, bitrate_kbps=1000, rotate_s=5.0)
    base, _ = _meeting(base_opts)
    full_opts = DemoOptions(seconds=args.seconds, width=1920, height=1080, bitrate_kbps=4000, rotate_s=5.0)
    if "loopback" in scenarios or "impaired" in scenarios:
        full, cpu_full = _meeting(full_opts)
        extra = {"rooms": 2, "transport": full["transport"], "seconds": args.seconds}
        for key, unit in (
            ("glass_to_glass_ms_p50", "ms"),
            ("glass_to_glass_ms_p99", "ms"),
            ("mouth_to_ear_ms_p50", "ms"),
            ("mouth_to_ear_ms_p99", "ms"),
            ("av_skew_ms_p95", "ms"),
            ("video_freeze_ms", "ms"),
        ):
            out.append(result(f"meeting_1080p30_{key}", _worst(full, key), unit, _worst(base, key), **extra))
        out.append(
            result(
                "meeting_1080p30_video_shown_pct",
                _worst(full, "video_shown_pct", low=True),
                "%",
                _worst(base, "video_shown_pct", low=True),
            )
        )
        out.append(
            result(
                "meeting_1080p30_decrypt_failures",
                _worst(full, "decrypt_failures"),
                "frames",
                _worst(base, "decrypt_failures"),
            )
        )
        out.append(result("meeting_1080p30_process_cpu", cpu_full, "% of one core (2 rooms)", None))
    if "impaired" in scenarios:

        def at_720p(imp: Impairment) -> DemoOptions:
            return DemoOptions(
                seconds=args.seconds, width=1280, height=720, bitrate_kbps=2500, rotate_s=5.0, impairment=imp
            )

        imp = Impairment(loss_pct=2.0, jitter_ms=30.0)
        lossy, _ = _meeting(at_720p(imp))
        extra = {"loss_pct": 2.0, "jitter_ms": 30.0, "size": "720p30"}
        for key, unit, low in (
            ("video_shown_pct", "%", True),
            ("audio_played_or_concealed_pct", "%", True),
            ("glass_to_glass_ms_p99", "ms", False),
            ("mouth_to_ear_ms_p99", "ms", False),
            ("av_skew_ms_p95", "ms", False),
            ("video_freeze_ms", "ms", False),
        ):
            out.append(
                result(
                    f"impaired_{key}", _worst(lossy, key, low=low), unit, _worst(base, key, low=low), **extra
                )
            )
        blackout = Impairment(
            loss_pct=2.0, jitter_ms=30.0, blackout_ms=500.0, blackout_at_s=min(5.0, args.seconds / 2)
        )
        dark, _ = _meeting(at_720p(blackout))
        extra = {**extra, "blackout_ms": 500.0}
        out.append(
            result("blackout_video_recovery_ms", _worst(dark, "video_recovery_ms"), "ms", None, **extra)
        )
        out.append(
            result("blackout_audio_recovery_ms", _worst(dark, "audio_recovery_ms"), "ms", None, **extra)
        )
    if "cpu" in scenarios:
        encode_only = asyncio.run(_encode_only(1920, 1080, 30, min(args.seconds, 8.0)))
        three, cpu3 = _meeting(
            DemoOptions(
                rooms=3,
                seconds=args.seconds,
                bitrate_kbps=2500,
                rotate_s=5.0,
                receive_sizes=((1920, 1080), (1280, 720), (1280, 720)),
            )
        )
        out.append(
            result(
                "room_send1080p_recv2x720p_process_cpu",
                cpu3,
                "% of one core (3 rooms in one process)",
                encode_only,
                note="baseline: capture + encode 1080p30 alone; value: rooms A (1080p), B and C (720p) "
                "all in this process, so A's own share is less than the value",
                shown_pct_min=_worst(three, "video_shown_pct", low=True),
            )
        )
    return out
