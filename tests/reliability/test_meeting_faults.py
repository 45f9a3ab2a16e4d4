"""Hardware faults while a meeting runs: camera unplug/replug and an encoder failure with codec fallback.

The real media path, end to end: sim camera (HAL) → PyAV encoder → SFrame (meeting key from a lab key
file, as ``roomagent receive`` uses) → RTP/UDP on loopback → the verifying receiver (reassemble,
decrypt, decode, read the sim stamps). Faults come from the sim HAL's own switches; the only foreign
hand is one injected fault: libx264 made unavailable when the encoder is reopened, so the pipeline must
fall back to the next codec of its preference list (libvpx), as when a hardware encoder disappears.

Expected: frames stop while the camera is gone (nothing is sent, the in-use indicator goes off, the
pipeline keeps running), resume after the replug; after the encoder failure the stream continues in
VP8; the receiver never sees a decrypt failure or a frame out of order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config import parse_config
from agent.media.key_source import LabReceiver, write_lab_key
from agent.media.receiver import MediaReceiver
from agent.media.service import build_media
from hal.errors import EncoderError

pytestmark = pytest.mark.reliability


class _Beat:
    beats = 0

    def beat(self) -> None:
        self.beats += 1


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, receiver: MediaReceiver) -> None:
        self.receiver = receiver

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.receiver.handle_datagram(data)


async def _until(predicate: Callable[[], bool], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within_s} s: {what}")
        await asyncio.sleep(0.05)


async def test_camera_unplug_and_encoder_failure_while_a_meeting_runs(tmp_path: Path) -> None:
    import hal

    lab = write_lab_key(tmp_path / "meeting.key")
    receiver = MediaReceiver(LabReceiver(lab))
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(receiver), local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    config = parse_config(
        {
            "hal": {
                "backend": "sim",
                "cameras": [{"id": "cam0", "width": 320, "height": 240, "fps": 15}],
                "encoder": {"codecs": ["libx264", "libvpx"], "bitrate_kbps": 400, "keyframe_interval": 15},
            },
            "media": {"sink": f"rtp://127.0.0.1:{port}"},
            "e2ee": {"lab_key_file": str(tmp_path / "meeting.key")},
        }
    )
    encoders = hal.encoder_factory()
    media = build_media(config, encoders=encoders)
    pipeline = media.pipelines[0]
    assert media.inventory is not None
    camera_faults = media.inventory.faults("cam0")  # type: ignore[attr-defined]
    task = asyncio.create_task(pipeline.run(_Beat()), name="test.pipeline[cam0]")
    try:
        await _until(lambda: receiver.stats.frames_decoded >= 10, 20, "the meeting's first frames decoded")
        assert pipeline.describe()["encoder"] == "libx264"

        # Camera unplugged mid-meeting: nothing leaves, the indicator goes off, the pipeline waits.
        camera_faults.unplug()
        await _until(lambda: pipeline.stats.camera_gone == 1, 5, "the pipeline noticed the camera gone")
        await asyncio.sleep(0.3)
        decoded_while_gone = receiver.stats.frames_decoded
        await asyncio.sleep(1.0)
        assert receiver.stats.frames_decoded - decoded_while_gone <= 1, "frames kept coming with no camera"
        assert pipeline.describe()["indicator_on"] is False
        assert not task.done()

        assert receiver.stats.stamps_out_of_order == 0
        # Replugged: frames flow again (starting with a keyframe, so the receiver decodes at once).
        camera_faults.replug()
        await _until(lambda: pipeline.stats.camera_recovered == 1, 10, "the camera reopened")
        await _until(
            lambda: receiver.stats.frames_decoded >= decoded_while_gone + 10, 20, "frames after the replug"
        )

        # The encoder fails, and libx264 cannot be reopened (injected): fall back to libvpx.
        real_trial = encoders._trial_cached

        def libx264_gone(name: str, cfg: Any) -> None:
            if name == "libx264":
                raise EncoderError("libx264: injected: encoder no longer available")
            real_trial(name, cfg)

        encoders._trial_cached = libx264_gone  # type: ignore[method-assign]
        encoders.faults.fail()
        await _until(lambda: pipeline.describe()["encoder"] == "libvpx", 20, "fallback to libvpx")
        decoded_at_switch = receiver.stats.frames_decoded
        await _until(
            lambda: receiver.stats.frames_decoded >= decoded_at_switch + 10, 20, "VP8 frames decoded"
        )
        assert pipeline.stats.encoder_errors >= 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        transport.close()

    figures = receiver.report()
    assert receiver.stats.decrypt_failures == 0, figures
    # A reopened camera restarts its sequence numbers (as V4L2 does at STREAMON); the receiver must
    # see a new capture run there, not reordered frames.
    assert receiver.stats.stamps_out_of_order == 0, figures
    print(f"camera unplug/replug + encoder failure with fallback survived: {figures}")
