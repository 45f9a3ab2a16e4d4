"""``roomagent bench webrtc --json``: the room's cost of sending over WebRTC, with and without SFrame.

The room side (this process) sends the sim camera at 720p30 (VP8) plus Opus through aiortc to a
receiver in a child process (plain aiortc over the machine's own address; the packets never leave
it), once with SFrame per frame and once without, and reports this process's CPU time per second of
media for each (``ratio`` = SFrame / plain). The receiver decrypts, decodes and reads the stamps, so
the run also gives glass-to-glass latency (capture -> decoded frame at the receiver) p50/p99.
Latency to a browser through Janus comes from the browser test (docs/webrtc.md).
"""

from __future__ import annotations

__all__ = ["run"]

import asyncio
import contextlib
import json
import os
import resource
import secrets
import subprocess
import sys
import time
from typing import Any

from agent.bench import Result, result

_SECONDS = 8.0
_KID = 0x4242


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def _send(sframe: bool, seconds: float, width: int, height: int) -> dict[str, Any]:
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from agent.e2ee.context import SenderContext
    from agent.media.keys import KeySource
    from agent.webrtc.cli import _Sealer
    from agent.webrtc.codecs import SFrameBinding, bind, unbind
    from agent.webrtc.participant import CameraTrack, ToneTrack, _prefer
    from hal.sim.camera import SimInventory
    from hal.types import CameraSpec

    key = secrets.token_bytes(32)
    if sframe:
        source = KeySource()
        source.set_sender(_Sealer(SenderContext(4, key, _KID)), 1, origin="bench")
        binding: SFrameBinding | None = bind(SFrameBinding(source, None))
    else:
        unbind()
        binding = None
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent.webrtc.bench",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert child.stdin is not None
    assert child.stdout is not None
    inventory = SimInventory([CameraSpec(id="cam0", width=width, height=height, fps=30, pattern="room")])
    pc = RTCPeerConnection()
    try:
        async with inventory.open_camera("cam0") as camera:
            video, audio = CameraTrack(camera.frames()), ToneTrack()
            pc.addTransceiver(video, direction="sendonly")
            pc.addTransceiver(audio, direction="sendonly")
            _prefer(pc, "video", "video/vp8")
            _prefer(pc, "audio", "audio/opus")
            await pc.setLocalDescription(await pc.createOffer())
            hello = {"sdp": pc.localDescription.sdp, "sframe": sframe, "key": key.hex(), "kid": _KID}
            child.stdin.write(json.dumps(hello).encode() + b"\n")
            await child.stdin.drain()
            answer = json.loads(await child.stdout.readline())
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
            # Warm up (ICE, DTLS, first keyframe), then measure.
            await asyncio.sleep(2.0)
            cpu0, t0, sent0 = _cpu(), time.monotonic(), video.sent
            await asyncio.sleep(seconds)
            cpu1, t1, sent1 = _cpu(), time.monotonic(), video.sent
    finally:
        await pc.close()
        child.stdin.close()
        report = json.loads(await child.stdout.readline() or b"{}")
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()
        unbind()
    return {
        "cpu_per_s": (cpu1 - cpu0) / (t1 - t0),
        "fps": (sent1 - sent0) / (t1 - t0),
        "sealed": None if binding is None else binding.snapshot()["sealed"],
        "receiver": report,
    }


async def _receive() -> None:
    """Child: answer the offer, decrypt + decode, read stamps; print latencies at EOF on stdin."""
    from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

    from agent.e2ee.context import ReceiverContext
    from agent.media.keys import ContextOpener, KeySource
    from agent.webrtc.codecs import SFrameBinding, bind
    from hal.stamps import read_stamp

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    hello = json.loads(await reader.readline())
    if hello["sframe"]:
        ctx = ReceiverContext()
        ctx.add_key(hello["kid"], bytes.fromhex(hello["key"]), 4, epoch=1)
        bind(SFrameBinding(KeySource(), ContextOpener(ctx)))
    latencies: list[float] = []
    frames = {"video": 0, "audio": 0}
    pc = RTCPeerConnection()

    async def consume(track: MediaStreamTrack) -> None:
        while True:
            frame = await track.recv()
            frames[track.kind] += 1
            if track.kind == "video":
                stamp = read_stamp(frame)
                if stamp is not None:
                    latencies.append((time.time_ns() - stamp.capture_ns) / 1e6)

    tasks: list[asyncio.Task[None]] = []
    pc.on("track", lambda track: tasks.append(asyncio.ensure_future(consume(track))))
    await pc.setRemoteDescription(RTCSessionDescription(hello["sdp"], "offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    sys.stdout.write(json.dumps({"sdp": pc.localDescription.sdp}) + "\n")
    sys.stdout.flush()
    await reader.read()  # until the parent closes our stdin
    for t in tasks:
        t.cancel()
    lat = sorted(latencies[60:])  # after the warm-up
    out = {
        "frames": frames,
        "latency_ms_p50": lat[len(lat) // 2] if lat else None,
        "latency_ms_p99": lat[int(len(lat) * 0.99)] if lat else None,
    }
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    await pc.close()


def run(args: list[str]) -> list[Result]:
    seconds = float(args[0]) if args else _SECONDS
    plain = asyncio.run(_send(False, seconds, 1280, 720))
    sealed = asyncio.run(_send(True, seconds, 1280, 720))
    rx = sealed["receiver"]
    return [
        result(
            "webrtc_send_720p30_opus_cpu_sframe",
            sealed["cpu_per_s"],
            "cpu_s/s",
            baseline=plain["cpu_per_s"],
            fps_sframe=round(sealed["fps"], 1),
            fps_plain=round(plain["fps"], 1),
        ),
        result(
            "webrtc_glass_to_glass_ms_p50",
            rx.get("latency_ms_p50") or 0.0,
            "ms",
            baseline=(plain["receiver"].get("latency_ms_p50") or None),
            note="capture -> decoded at an aiortc receiver on this machine; baseline: without SFrame",
        ),
        result(
            "webrtc_glass_to_glass_ms_p99",
            rx.get("latency_ms_p99") or 0.0,
            "ms",
            baseline=(plain["receiver"].get("latency_ms_p99") or None),
        ),
    ]


if __name__ == "__main__":
    from agent.logs import configure_logging

    configure_logging(level="warning", stream=sys.stderr)
    asyncio.run(_receive())
