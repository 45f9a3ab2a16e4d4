"""A meeting on the sim HAL through the whole stack: control plane + privacy guard + media pipeline.

Room A's camera is shut and nothing leaves while there is no meeting; the customer starts the meeting
with ``roomctl meeting start``; every datagram room A's sink sends is captured: each is our RTP
carrying an SFrame of room A's KID, room B decrypts and decodes every frame and reads the camera's
stamps, and no plaintext frame appears on the wire. Then a court of the room's jurisdiction locks room
A: it announces it, and nothing leaves any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("hal.sim", reason="the simulated HAL (hal.sim) is not importable")

from agent.control.signing_keys import private_key_pem
from agent.e2ee.header import decode_header
from agent.e2ee.sframe import decrypt
from agent.media.frame import split_frame
from agent.media.pipeline import MediaPipeline, StreamSettings
from agent.media.receiver import MediaReceiver
from agent.media.rtp import Depacketizer, parse_packet
from agent.media.sink import RtpSink
from hal.codecs import PyAvEncoderFactory
from hal.sim import SimInventory
from hal.types import CameraSpec, IndicatorState
from tests.broker import Broker
from tests.plane import Beat, Plane
from tests.privacy_rooms import enroll, running_rooms

pytestmark = pytest.mark.broker

W, H, FPS = 320, 240, 15


def _drain(sock: socket.socket) -> list[bytes]:
    out = []
    with contextlib.suppress(BlockingIOError):
        while True:
            out.append(sock.recv(65536))
    return out


async def test_meeting_on_the_sim_camera_only_sframe_leaves_b_reads_the_stamps_and_a_lock_ends_it(
    mosquitto: Broker, tmp_path: Path, agent_env: dict[str, str]
) -> None:
    plane = Plane()
    capture = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    capture.bind(("127.0.0.1", 0))
    capture.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    capture.setblocking(False)
    async with running_rooms(plane, mosquitto, tmp_path, "room-a", "room-b") as (a, b):
        ack = await a.plane.push(
            "policy", plane.sign("policy", plane.policy(), [plane.fleet, plane.customer], devices=["room-a"])
        )
        assert ack["status"] == "applied"
        inventory = SimInventory([CameraSpec(id="cam0", width=W, height=H, fps=FPS)])
        camera = inventory.device("cam0")
        a.guard.interventions.add_announcer(inventory.open_camera("cam0"))
        sink = RtpSink("127.0.0.1", capture.getsockname()[1], e2ee_required=a.guard.policy.e2ee.required)
        pipeline = MediaPipeline(
            camera_id="cam0",
            inventory=inventory,
            encoders=PyAvEncoderFactory(),
            keys=a.guard.key_source,
            sink=sink,
            settings=StreamSettings(width=W, height=H, fps=FPS, bitrate_kbps=400, keyframe_interval=15),
            shutter_when_idle=a.guard.policy.camera.shutter_when_idle,
        )
        task = asyncio.create_task(pipeline.run(Beat()), name="room-a.media")
        try:
            await asyncio.sleep(0.8)
            # No meeting: the camera is shut and nothing leaves.
            assert camera.shutter_closed
            assert _drain(capture) == []
            key = tmp_path / "customer.pem"
            key.write_bytes(private_key_pem(plane.customer))
            result = await asyncio.to_thread(
                subprocess.run,
                [
                    sys.executable,
                    "-m",
                    "agent.fleet",
                    "meeting",
                    "start",
                    "--rooms",
                    "room-a,room-b",
                    "--broker",
                    mosquitto.url,
                    "--customer-key",
                    str(key),
                    "--wait-acks",
                    "--json",
                    *enroll(plane, tmp_path, [a, b]),
                ],
                env=agent_env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, result.stdout + result.stderr
            assert await pipeline.healthy(10.0)
            assert not camera.shutter_closed
            await asyncio.sleep(1.5)
            datagrams = _drain(capture)
            # A court of the room's jurisdiction locks room A.
            order = {
                "name": "lock",
                "args": {"lawful_order": {"issuer": "AG Berlin", "id": "7 Js 1/26", "jurisdiction": "DE"}},
            }
            ack = await a.plane.push(
                "command", plane.sign("command", order, [plane.legal], devices=["room-a"])
            )
            assert ack["status"] == "applied", ack
            await asyncio.sleep(0.5)
            datagrams += _drain(capture)
            await asyncio.sleep(0.8)
            after_lock = _drain(capture)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            sink.close()
            capture.close()
        assert after_lock == []  # locked: nothing leaves
        assert camera.shutter_closed
        assert any("locked" in n.message for n in camera.notices)
        # Media stopped and the pipeline turned the LED OFF, yet the room still sees the notice (held).
        assert camera.indicator is IndicatorState.NOTICE
        own = a.guard.keys.keys  # cleared by the lock
        assert own.idle
        b_keys = {k.kid: k for k in b.guard.keys.keys.peers}

    # Every datagram is one of our RTP packets; every frame is an SFrame of room A's key.
    assert len(datagrams) > 10
    depack = Depacketizer(timeout_s=0.05)
    frames = []
    for d in datagrams:
        parse_packet(d)
        frames += depack.push(d, time.monotonic())
    frames += depack.poll(time.monotonic() + 1)
    wire = b"".join(datagrams)
    assert frames
    for frame in frames:
        header, metadata, body = split_frame(frame.payload)
        assert not header.unprotected
        kid, _ctr, _ = decode_header(body)
        assert kid in b_keys  # room A's meeting KID, which room B holds
        _, _, plaintext = decrypt(b_keys[kid].suite, b_keys[kid].base_key, metadata, body)
        assert plaintext[:24] not in wire
        assert plaintext[len(plaintext) // 2 : len(plaintext) // 2 + 24] not in wire
    # Room B decrypts, decodes and reads the sim camera's stamps in every frame.
    receiver = MediaReceiver(_StatelessOpener(b_keys))
    for d in datagrams:
        receiver.handle_datagram(d)
    receiver.poll(time.monotonic() + 1)
    report = receiver.report()
    assert report["decrypt_failures"] == 0
    assert report["frames_decoded"] == report["frames_received"] == len(frames)
    assert report["stamps_missing"] == 0


class _StatelessOpener:
    """Room B's keys (copied out of its guard after the meeting) as a FrameOpener."""

    def __init__(self, keys: dict) -> None:  # type: ignore[type-arg]
        self._keys = keys

    def open(self, metadata: bytes, ciphertext: bytes) -> bytes:
        kid, _, _ = decode_header(ciphertext)
        key = self._keys[kid]
        return decrypt(key.suite, key.base_key, metadata, ciphertext)[2]
