"""``roomagent bench pipeline``: sim camera → libx264 (ultrafast, zerolatency) → SFrame → RTP/UDP.

For each size (720p30, 1080p30, 4K30 by default) two runs of ``--seconds`` each (default 10): one
with SFrame encryption and one with the benchmark-only ``plain_copy=True`` (a copy instead of
encryption), so the E2EE cost is a same-run ratio. Figures per run: delivered fps, drop %, p50/p99
capture-to-send latency, CPU % of one core (the whole process: sim rendering, encoding, sealing and
sending) and RSS. The receiving socket is bound but never read, so receiving costs nothing here.

Options: ``--seconds N``, ``--sizes 720p,1080p,4k``, ``--fps N``, ``--bitrate-kbps N``.
"""

from __future__ import annotations

__all__ = ["run"]

import argparse
import asyncio
import resource
import secrets
import socket
import sys
import time
from typing import Any

from agent.bench import Result, result
from agent.e2ee.context import SenderContext
from agent.logs import configure_logging
from agent.media.key_source import KeySource
from agent.media.pipeline import MediaPipeline, StreamSettings
from agent.media.receiver import percentile
from agent.media.sink import RtpSink
from agent.service import Progress
from hal.types import CameraSpec

SIZES = {"360p": (640, 360), "720p": (1280, 720), "1080p": (1920, 1080), "4k": (3840, 2160)}


class _Sealer:
    def __init__(self) -> None:
        # A key fresh for this run: CTR from 0 never repeats (RFC 9605 §9.1).
        self.context = SenderContext(4, secrets.token_bytes(32), secrets.randbits(31))

    @property
    def kid(self) -> int:
        return self.context.kid

    def seal(self, metadata: bytes, plaintext: bytes) -> bytes:
        return self.context.encrypt(metadata, plaintext)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 1e6


async def _one_run(
    width: int, height: int, fps: int, seconds: float, bitrate_kbps: int, plain_copy: bool
) -> dict[str, Any]:
    from hal.codecs import PyAvEncoderFactory
    from hal.sim import SimInventory

    drain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    drain.bind(("127.0.0.1", 0))
    keys = KeySource()
    if not plain_copy:
        keys.set_sender(_Sealer(), 1, origin="bench")
    sink = RtpSink("127.0.0.1", drain.getsockname()[1], e2ee_required=not plain_copy)
    pipeline = MediaPipeline(
        camera_id="bench",
        inventory=SimInventory([CameraSpec(id="bench", width=width, height=height, fps=fps)]),
        encoders=PyAvEncoderFactory(),
        keys=keys,
        sink=sink,
        settings=StreamSettings(
            width=width,
            height=height,
            fps=fps,
            bitrate_kbps=bitrate_kbps,
            codecs=("libx264",),
            preset="ultrafast",  # the benchmark set-up: ultrafast + zerolatency
        ),
        e2ee_required=not plain_copy,
        plain_copy=plain_copy,
    )
    task = asyncio.create_task(pipeline.run(Progress("bench")), name="bench.pipeline")
    # Warm-up: the first frames pay for opening the encoder and drawing the scene.
    await pipeline.healthy(10.0)
    await asyncio.sleep(0.3)
    s0 = pipeline.stats
    base_captured, base_sent, base_dropped, base_protect = (
        s0.captured,
        s0.sent,
        s0.dropped_queue,
        s0.protect_ns,
    )
    s0.latencies_ns.clear()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    t1 = time.monotonic()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    stats = pipeline.stats
    latencies = [ns / 1e6 for ns in stats.latencies_ns]
    captured = stats.captured - base_captured
    sent = stats.sent - base_sent
    dropped = stats.dropped_queue - base_dropped
    rss = _rss_mb()
    task.cancel()
    current = asyncio.current_task()
    try:
        await task
    except asyncio.CancelledError:
        if current is not None and current.cancelling():
            raise  # we are being cancelled ourselves, not just the pipeline
    sink.close()
    drain.close()
    wall = t1 - t0
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    # Frames the camera produced that never left: queue drops plus frames the sensor skipped because
    # the loop fell behind (the sim camera advances its sequence number for those).
    expected = max(captured, round(wall * fps))
    return {
        "fps": sent / wall,
        "drop_pct": 100.0 * max(0, expected - sent) / expected if expected else 0.0,
        "queue_drops": dropped,
        "p50_ms": percentile(latencies, 0.5) or 0.0,
        "p99_ms": percentile(latencies, 0.99) or 0.0,
        "cpu_pct": 100.0 * cpu / wall,
        # The sealing step alone (thread CPU time in protect_frame / plain_copy_frame).
        "protect_cpu_pct": 100.0 * (stats.protect_ns - base_protect) / 1e9 / wall,
        "rss_mb": rss,
        "encoder": pipeline.describe()["encoder"],
    }


def run(argv: list[str]) -> list[Result]:
    parser = argparse.ArgumentParser(prog="roomagent bench pipeline")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--sizes", default="720p,1080p,4k")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--bitrate-kbps", type=int, default=4000)
    # `roomagent bench pipeline --json` hands us --json (argparse REMAINDER); the caller prints.
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    configure_logging(level="warning", stream=sys.stderr)  # stdout carries the results
    out: list[Result] = []
    for size in args.sizes.split(","):
        width, height = SIZES[size.strip().lower()]
        label = f"pipeline_{size.strip().lower()}{args.fps}"
        e2ee = asyncio.run(
            _one_run(width, height, args.fps, args.seconds, args.bitrate_kbps, plain_copy=False)
        )
        plain = asyncio.run(
            _one_run(width, height, args.fps, args.seconds, args.bitrate_kbps, plain_copy=True)
        )
        extra = {"seconds": args.seconds, "encoder": e2ee["encoder"]}
        out.append(result(f"{label}_fps", e2ee["fps"], "frames/s", plain["fps"], **extra))
        out.append(
            result(f"{label}_drop", e2ee["drop_pct"], "%", plain["drop_pct"], queue_drops=e2ee["queue_drops"])
        )
        out.append(result(f"{label}_p50_capture_to_send", e2ee["p50_ms"], "ms", plain["p50_ms"]))
        out.append(result(f"{label}_p99_capture_to_send", e2ee["p99_ms"], "ms", plain["p99_ms"]))
        out.append(result(f"{label}_cpu", e2ee["cpu_pct"], "% of one core", plain["cpu_pct"]))
        out.append(result(f"{label}_rss", e2ee["rss_mb"], "MB", plain["rss_mb"]))
        # E2EE cost without the noise of the whole process: CPU of sealing vs copying, and the share
        # of the pipeline's CPU that sealing takes (goal: E2EE adds <= 2% CPU).
        out.append(
            result(f"{label}_seal_cpu", e2ee["protect_cpu_pct"], "% of one core", plain["protect_cpu_pct"])
        )
        share = 100.0 * e2ee["protect_cpu_pct"] / e2ee["cpu_pct"] if e2ee["cpu_pct"] else 0.0
        out.append(result(f"{label}_seal_share_of_pipeline_cpu", share, "%"))
    return out
