"""``roomagent bench webrtc --json``: the room's cost of sending over WebRTC, with and without SFrame.

The room side (this process) sends the sim camera at 720p30 (VP8) plus Opus through aiortc to a
receiver in a child process (plain aiortc over the machine's own address; the packets never leave
it), once with SFrame per frame and once without, and reports this process's CPU time per second of
media for each (``ratio`` = SFrame / plain). The receiver decrypts, decodes and reads the stamps, so
the run also gives glass-to-glass latency (capture -> decoded frame at the receiver) p50/p99.

Room -> browser: where Janus, Chromium and chromium-driver are installed, Selenium importable and the
bench runs as root (a private network namespace: Janus gathers no loopback candidates), a room
(``roomagent webrtc join``, 720p30 + Opus, SFrame) meets a headless Chromium through Janus, and the
page reads the stamps of every decoded frame: glass-to-glass room -> browser p50/p99, beside the
aiortc receiver's figure from the same run (no SFU, no browser) as the baseline.
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


async def _send(sframe: bool, seconds: float, width: int, height: int, layers: int = 1) -> dict[str, Any]:
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from agent.e2ee.context import SenderContext
    from agent.media.key_source import KeySource
    from agent.webrtc.cli import _Sealer
    from agent.webrtc.codecs import SFrameBinding, bind, unbind
    from agent.webrtc.participant import CameraTrack, LowLayerTrack, ToneTrack, _prefer
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
            if layers == 2:
                pc.addTransceiver(LowLayerTrack(video), direction="sendonly")
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
        "cpu_ms_per_frame": 1000 * (cpu1 - cpu0) / max(1, sent1 - sent0),
        "cpu_per_s": (cpu1 - cpu0) / (t1 - t0),
        "fps": (sent1 - sent0) / (t1 - t0),
        "sealed": None if binding is None else binding.snapshot()["sealed"],
        "receiver": report,
    }


async def _receive() -> None:
    """Child: answer the offer, decrypt + decode, read stamps; print latencies at EOF on stdin."""
    from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

    from agent.e2ee.context import ReceiverContext
    from agent.media.key_source import ContextOpener, KeySource
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


_BROWSER_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
)


def _browser_latency(seconds: float, width: int, height: int) -> dict[str, Any]:
    """Room -> Janus -> Chromium glass-to-glass latency, or ``{"skipped": reason}``."""
    import shutil
    import tempfile
    import threading
    from pathlib import Path

    from agent.webrtc.joinkeys import JoinKeys, PeerKey, SfuPlace, join_fragment
    from agent.webrtc.lab import netns_available, private_netns, start_janus
    from agent.webrtc.static import serve

    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_bin and shutil.which("janus") and netns_available()):
        return {"skipped": "needs chromium, chromium-driver, janus and root (private network namespace)"}
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return {"skipped": "needs selenium (the test extra)"}
    room_key, guest_key = secrets.token_bytes(32), secrets.token_bytes(32)
    room = JoinKeys("m-bench", 4, PeerKey("self", 0x301, room_key), (PeerKey("guest", 0x302, guest_key),))
    guest = JoinKeys("m-bench", 4, PeerKey("self", 0x302, guest_key), (PeerKey("room", 0x301, room_key),))
    with tempfile.TemporaryDirectory(prefix="roomagent-bench-webrtc-") as tmp, private_netns():
        work = Path(tmp)
        (work / "room.json").write_text(json.dumps(room.to_json()))
        janus = start_janus(work)
        server = serve("127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, name="bench_web", daemon=True).start()
        proc = None
        browser = None
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "webrtc", "join", "--sfu-url", janus.url,
                 "--sfu-room", str(janus.room), "--token", janus.pin, "--keys-file", str(work / "room.json"),
                 "--name", "room", "--seconds", str(seconds + 25), "--width", str(width),
                 "--height", str(height), "--layers", "1", "--no-audio"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
            )  # fmt: skip
            options = webdriver.ChromeOptions()
            options.binary_location = chromium
            for flag in (*_BROWSER_FLAGS, f"--user-data-dir={work / 'profile'}"):
                options.add_argument(flag)
            browser = webdriver.Chrome(service=Service(driver_bin), options=options)
            place = SfuPlace(janus.url, janus.room, janus.pin)
            port = server.server_address[1]
            browser.get(
                f"http://127.0.0.1:{port}/index.html#{join_fragment(place, 'guest', guest)}&video=320x240"
            )
            deadline = time.monotonic() + seconds + 20
            tile: dict[str, Any] = {}
            while time.monotonic() < deadline:
                stats = browser.execute_script("return JSON.parse(JSON.stringify(window.roomStats || null))")
                tile = ((stats or {}).get("tiles") or {}).get("room") or {}
                if tile.get("t0") is not None and tile["t1"] - tile["t0"] >= seconds * 1000:
                    break
                time.sleep(1)
        finally:
            if browser is not None:
                browser.quit()
            if proc is not None:
                proc.kill()
                proc.wait()
            server.shutdown()
            server.server_close()
            janus.stop()
    lat = sorted(tile.get("latencies") or [])
    if len(lat) < 30:
        return {"skipped": f"the browser read only {len(lat)} stamps"}
    secs = (tile["t1"] - tile["t0"]) / 1000
    return {
        "p50": lat[len(lat) // 2],
        "p99": lat[int(len(lat) * 0.99)],
        "fps": (tile["stamps"] - 1) / secs if secs > 0 else 0.0,
        "frames": tile["stamps"],
    }


def run(args: list[str]) -> list[Result]:
    seconds = float(args[0]) if args else _SECONDS
    plain = asyncio.run(_send(False, seconds, 1280, 720))
    sealed = asyncio.run(_send(True, seconds, 1280, 720))
    two = asyncio.run(_send(True, seconds, 1280, 720, layers=2))
    rx = sealed["receiver"]
    browser = _browser_latency(min(seconds, 10.0), 1280, 720)
    out = [
        result(
            "webrtc_send_720p30_opus_cpu_ms_per_video_frame_sframe",
            sealed["cpu_ms_per_frame"],
            "ms",
            baseline=plain["cpu_ms_per_frame"],
            note="room process CPU per 720p frame sent (VP8 encode, SFrame, SRTP, Opus alongside)",
        ),
        result(
            "webrtc_send_720p30_two_layers_cpu_ms_per_frame_sframe",
            two["cpu_ms_per_frame"],
            "ms",
            baseline=sealed["cpu_ms_per_frame"],
            note="the room's default: + a 640x360 layer; baseline: one 720p layer (both with SFrame)",
        ),
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
    if "skipped" in browser:
        print(f"bench webrtc: room -> browser skipped: {browser['skipped']}", file=sys.stderr)
        return out
    for q in ("p50", "p99"):
        out.append(
            result(
                f"webrtc_room_to_browser_ms_{q}",
                browser[q],
                "ms",
                baseline=rx.get(f"latency_ms_{q}") or None,
                note="720p30 VP8 + SFrame through Janus to headless Chromium; baseline: aiortc receiver",
                browser_fps=round(browser["fps"], 1),
            )
        )
    return out


if __name__ == "__main__":
    from agent.logs import configure_logging

    configure_logging(level="warning", stream=sys.stderr)
    asyncio.run(_receive())
