"""The media pipeline end to end on the sim HAL: real libx264, real SFrame, real UDP on loopback.

Scenarios: every stamped frame verified in order; injected UDP loss
reported and repaired at the next keyframe; a camera unplugged mid-stream recovers within 2 s of
replug; a wrong key is counted, never a crash; with E2EE required every datagram is SFrame and no
plaintext leaves; the in-use indicator is on exactly while frames leave; live settings changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest

# These scenarios run on the HAL's sim backend and PyAV codecs.
pytest.importorskip("hal.sim", reason="the simulated HAL (hal.sim) is not importable")

from agent.e2ee.sframe import decrypt
from agent.media.frame import split_frame
from agent.media.key_source import KeySource, LabKey, LabReceiver, LabSender
from agent.media.pipeline import MediaPipeline, StreamSettings
from agent.media.receiver import MediaReceiver, bind_udp
from agent.media.rtp import Depacketizer
from agent.media.sink import RtpSink
from hal.codecs import PyAvEncoderFactory
from hal.sim import SimInventory
from hal.types import CameraSpec, IndicatorState

W, H, FPS = 320, 240, 30


class Beat:
    def __init__(self) -> None:
        self.beats = 0

    def beat(self) -> None:
        self.beats += 1


@pytest.fixture
def lab() -> LabKey:
    return LabKey(suite=4, kid=5, key=os.urandom(32))


@dataclass
class Rx:
    """A verifying receiver on its own thread and UDP port."""

    receiver: MediaReceiver
    sock: socket.socket
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])


@pytest.fixture
def rx(lab: LabKey) -> Iterator[Rx]:
    r = Rx(MediaReceiver(LabReceiver(lab), timeout_s=0.1), bind_udp("127.0.0.1", 0))
    thread = threading.Thread(target=r.receiver.serve, args=(r.sock, r.stop), daemon=True)
    thread.start()
    yield r
    r.stop.set()
    thread.join(2)
    r.sock.close()


@dataclass
class Room:
    inventory: SimInventory
    keys: KeySource
    pipeline: MediaPipeline
    sink: RtpSink
    beat: Beat

    @property
    def camera(self) -> object:
        return self.inventory.device("cam0")


def make_room(
    port: int, *, keyframe_interval: int = 60, encoders: PyAvEncoderFactory | None = None, **kw: object
) -> Room:
    inventory = SimInventory([CameraSpec(id="cam0", width=W, height=H, fps=FPS)])
    keys = KeySource()
    sink = RtpSink("127.0.0.1", port)
    pipeline = MediaPipeline(
        camera_id="cam0",
        inventory=inventory,
        encoders=encoders if encoders is not None else PyAvEncoderFactory(),
        keys=keys,
        sink=sink,
        settings=StreamSettings(
            width=W, height=H, fps=FPS, bitrate_kbps=600, keyframe_interval=keyframe_interval
        ),
        **kw,  # type: ignore[arg-type]
    )
    return Room(inventory, keys, pipeline, sink, Beat())


@contextlib.asynccontextmanager
async def running(room: Room) -> AsyncIterator[Room]:
    task = asyncio.create_task(room.pipeline.run(room.beat), name="test.pipeline")
    try:
        yield room
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        room.sink.close()


async def settle() -> None:
    await asyncio.sleep(0.3)  # frames in flight reach the receiver thread


async def test_receiver_verifies_every_stamped_frame_in_order(lab: LabKey, rx: Rx) -> None:
    room = make_room(rx.port)
    room.keys.use_lab_key(lab)
    async with running(room):
        assert await room.pipeline.healthy(5.0)
        await asyncio.sleep(1.5)
    await settle()
    r = rx.receiver.report()
    sent = room.pipeline.stats.sent
    assert sent >= 30
    assert r["frames_decoded"] == r["frames_received"] == sent
    assert r["stamps_missing"] == 0
    assert r["stamps_out_of_order"] == 0
    assert r["stamps_skipped"] == 0  # not one captured frame missing between the first and the last
    assert r["decrypt_failures"] == 0
    assert r["latency_ms_p99"] < 500
    assert room.beat.beats >= sent  # one progress beat per frame sent
    assert room.pipeline.stats.dropped_queue == 0


class LossyRelay:
    """A UDP relay between sink and receiver that drops the datagrams we tell it to."""

    def __init__(self, to_port: int) -> None:
        self.sock = bind_udp("127.0.0.1", 0)
        self.sock.settimeout(0.05)
        self.to = ("127.0.0.1", to_port)
        self.count = 0
        self.drop: set[int] = set()
        self.dropped = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _run(self) -> None:
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        while not self.stop.is_set():
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            self.count += 1
            if self.count in self.drop:
                self.dropped += 1
                continue
            out.sendto(data, self.to)
        out.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


async def test_injected_udp_loss_is_reported_and_the_picture_recovers_at_the_next_keyframe(
    lab: LabKey, rx: Rx
) -> None:
    relay = LossyRelay(rx.port)
    room = make_room(relay.port, keyframe_interval=15)
    room.keys.use_lab_key(lab)
    try:
        async with running(room):
            assert await room.pipeline.healthy(5.0)
            await asyncio.sleep(0.5)
            relay.drop = {relay.count + 3, relay.count + 4}  # two datagrams of the next P-frames
            await asyncio.sleep(1.5)
        await settle()
    finally:
        relay.close()
    r = rx.receiver.report()
    assert relay.dropped == 2
    assert r["packets_lost"] == 2
    assert r["skipped_until_keyframe"] >= 1  # broken references are not decoded into garbage
    assert r["stamps_missing"] == 0
    assert r["stamps_out_of_order"] == 0
    assert r["stamps_skipped"] >= 2  # the gap shows in the capture sequence
    # Recovered: the last frame sent is the last frame shown.
    assert r["last_stamp_seq"] is not None
    assert r["frames_decoded"] >= room.pipeline.stats.sent - 16


async def test_camera_unplugged_mid_stream_recovers_within_2s_of_replug(lab: LabKey, rx: Rx) -> None:
    room = make_room(rx.port)
    room.keys.use_lab_key(lab)
    faults = room.inventory.faults("cam0")
    async with running(room):
        assert await room.pipeline.healthy(5.0)
        await asyncio.sleep(0.5)
        faults.unplug()
        await asyncio.sleep(0.5)
        sent_while_gone = room.pipeline.stats.sent
        assert not room.pipeline.describe()["indicator_on"]
        await asyncio.sleep(0.5)
        assert room.pipeline.stats.sent == sent_while_gone  # nothing leaves without a camera
        beats_during_wait = room.beat.beats
        faults.replug()
        t0 = time.monotonic()
        assert await room.pipeline.healthy(2.0), "no encrypted frames within 2 s of replug"
        recovered_s = time.monotonic() - t0
        await asyncio.sleep(0.5)
        assert room.inventory.device("cam0").indicator is IndicatorState.ON
    await settle()
    assert recovered_s < 2.0
    assert room.pipeline.stats.camera_gone == 1
    assert room.pipeline.stats.camera_recovered == 1
    assert beats_during_wait > 0  # waiting for a replug is not a hang for the watchdog
    r = rx.receiver.report()
    assert r["stamps_missing"] == 0
    assert r["stamps_out_of_order"] == 0
    assert r["stamp_restarts"] == 1  # the reopened camera counts from 0 again
    assert r["frames_decoded"] == room.pipeline.stats.sent


async def test_wrong_key_decrypt_failures_are_counted_and_the_receiver_survives(lab: LabKey, rx: Rx) -> None:
    room = make_room(rx.port)
    room.keys.use_lab_key(
        LabKey(suite=lab.suite, kid=lab.kid, key=os.urandom(32))
    )  # same KID space, other key
    async with running(room):
        assert await room.pipeline.healthy(5.0)
        # Garbage from a hostile host on the same port, mixed in.
        junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(200):
            junk.sendto(os.urandom(i % 90), ("127.0.0.1", rx.port))
        junk.close()
        await asyncio.sleep(0.8)
    await settle()
    r = rx.receiver.report()
    assert r["frames_received"] > 10
    assert r["decrypt_failures"] == r["frames_received"]
    assert r["decrypt_failures_by_reason"] == {"auth_failed": r["frames_received"]}
    assert r["frames_decoded"] == 0
    assert r["packets_malformed"] > 0
    # Still alive: the right key decodes at once (the next keyframe).
    rx.receiver.set_opener(LabReceiver(lab))  # re-keyed, as a meeting would
    room2 = make_room(rx.port)
    room2.keys.use_lab_key(lab)
    async with running(room2):
        assert await room2.pipeline.healthy(5.0)
        await asyncio.sleep(0.5)
    await settle()
    assert rx.receiver.report()["frames_decoded"] > 5


async def test_with_e2ee_required_every_datagram_is_sframe_and_no_plaintext_leaves(lab: LabKey) -> None:
    capture = bind_udp("127.0.0.1", 0)
    capture.settimeout(0.2)
    room = make_room(capture.getsockname()[1])
    async with running(room):
        # No key yet: E2EE is required, so nothing may leave at all.
        await asyncio.sleep(0.5)
        assert room.pipeline.stats.dropped_no_key > 5
        assert room.sink.stats.packets == 0
        room.keys.use_lab_key(lab)
        assert await room.pipeline.healthy(5.0)
        await asyncio.sleep(1.0)
        room.keys.set_sender(None, 0)  # the meeting ends: media stops
        await asyncio.sleep(0.3)
        after_stop = room.sink.stats.packets
        await asyncio.sleep(0.3)
        assert room.sink.stats.packets == after_stop
    datagrams = []
    with contextlib.suppress(TimeoutError):
        while True:
            datagrams.append(capture.recv(65535))
    capture.close()
    assert len(datagrams) == after_stop
    de = Depacketizer()
    frames = [f for d in datagrams for f in de.push(d, 0.0)]
    assert de.stats.malformed == 0
    assert len(frames) == room.pipeline.stats.sent
    plaintexts = []
    for frame in frames:
        header, metadata, body = split_frame(frame.payload)
        assert not header.unprotected
        _, _, plaintext = decrypt(lab.suite, lab.key, metadata, body)  # every frame is valid SFrame
        plaintexts.append(plaintext)
    wire = b"".join(datagrams)
    # No stretch of any encoded picture, nor any stamp value, appears in clear on the wire.
    for plaintext in plaintexts:
        for offset in range(0, len(plaintext) - 24, 97):
            assert plaintext[offset : offset + 24] not in wire
    assert b"\x00\x00\x00\x01\x67" not in wire  # no H.264 SPS start code in clear


async def test_the_indicator_is_on_exactly_while_frames_leave(lab: LabKey, rx: Rx) -> None:
    room = make_room(rx.port)
    camera = room.inventory.device("cam0")
    async with running(room):
        await asyncio.sleep(0.4)
        assert camera.indicator is IndicatorState.OFF  # no key: nothing leaves
        room.keys.use_lab_key(lab)
        assert await room.pipeline.healthy(5.0)
        assert camera.indicator is IndicatorState.ON
        room.inventory.faults("cam0").stall(1500)  # the camera stops delivering
        await asyncio.sleep(0.8)
        assert camera.indicator is IndicatorState.OFF
        assert await room.pipeline.healthy(3.0)
        assert camera.indicator is IndicatorState.ON
    assert camera.indicator is IndicatorState.OFF  # the service stopped


async def test_key_rotation_sends_a_keyframe_under_the_new_key_at_once(lab: LabKey, rx: Rx) -> None:
    capture = bind_udp("127.0.0.1", 0)
    capture.settimeout(0.2)
    room = make_room(capture.getsockname()[1], keyframe_interval=3000)
    first = room.keys.use_lab_key(lab)
    async with running(room):
        assert await room.pipeline.healthy(5.0)
        await asyncio.sleep(0.5)
        second = LabSender(lab)
        room.keys.set_sender(second, 2)
        await asyncio.sleep(0.5)
    datagrams = []
    with contextlib.suppress(TimeoutError):
        while True:
            datagrams.append(capture.recv(65535))
    capture.close()
    de = Depacketizer()
    frames = [f for d in datagrams for f in de.push(d, 0.0)]
    kids = [decrypt(lab.suite, lab.key, *split_frame(f.payload)[1:])[0] for f in frames]
    switch = kids.index(second.kid)
    assert set(kids[:switch]) == {first.kid}
    assert frames[switch].keyframe  # the first frame under the new key is a keyframe
    assert not any(f.keyframe for f in frames[1:switch])


async def test_live_settings_change_is_healthy_again_quickly_and_bad_changes_change_nothing(
    lab: LabKey, rx: Rx
) -> None:
    room = make_room(rx.port)
    room.keys.use_lab_key(lab)
    async with running(room):
        assert await room.pipeline.healthy(5.0)
        before = room.pipeline.settings
        for bad in (
            {"width": 33},
            {"fps": 0},
            {"codec": "mpeg2"},
            {"colour": "red"},
            {"bitrate_kbps": "fast"},
        ):
            with pytest.raises(ValueError, match=r"must|unknown"):
                room.pipeline.apply(bad)
            assert room.pipeline.settings == before
        room.pipeline.apply({"width": 640, "height": 480, "fps": 15, "bitrate_kbps": 900})
        assert await room.pipeline.healthy(3.0)
        sent_before = room.pipeline.stats.sent
        await asyncio.sleep(1.0)
        rate = room.pipeline.stats.sent - sent_before
    await settle()
    assert 10 <= rate <= 18  # decimated to 15 fps
    assert rx.receiver.report()["picture_size"] == [640, 480]
    assert room.pipeline.stats.encoder_opens == 2


async def test_plain_copy_is_refused_by_the_sink_while_e2ee_is_required(rx: Rx) -> None:
    room = make_room(rx.port, plain_copy=True)
    async with running(room):
        await asyncio.sleep(0.6)
    assert room.pipeline.stats.refused > 0
    assert room.sink.stats.packets == 0
    assert room.inventory.device("cam0").indicator is IndicatorState.OFF


async def test_the_shutter_closes_when_idle_and_opens_for_a_meeting(lab: LabKey, rx: Rx) -> None:
    room = make_room(rx.port)
    device = room.inventory.device("cam0")
    async with running(room):
        await asyncio.sleep(0.4)
        assert device.shutter_closed  # no meeting key: idle, policy says close
        room.keys.use_lab_key(lab)
        assert await room.pipeline.healthy(5.0)
        assert not device.shutter_closed
        room.keys.set_sender(None, 1)
        await asyncio.sleep(0.3)
        assert device.shutter_closed
        assert device.indicator is IndicatorState.OFF


async def test_a_shutter_closed_by_someone_else_is_never_opened_by_the_pipeline(lab: LabKey, rx: Rx) -> None:
    room = make_room(rx.port, shutter_when_idle=False)
    room.keys.use_lab_key(lab)
    device = room.inventory.device("cam0")
    device.shutter_closed = True  # e.g. the privacy controller's lock, or a physical switch
    async with running(room):
        assert await room.pipeline.healthy(5.0)
        await asyncio.sleep(0.3)
        assert device.shutter_closed


async def test_a_failing_encoder_is_reopened_and_a_slow_one_drops_the_oldest_frames(
    lab: LabKey, rx: Rx
) -> None:
    encoders = PyAvEncoderFactory()
    room = make_room(rx.port, encoders=encoders)
    room.keys.use_lab_key(lab)
    async with running(room):
        assert await room.pipeline.healthy(5.0)
        encoders.faults.fail()
        await asyncio.sleep(0.1)
        assert await room.pipeline.healthy(2.0)
        encoders.faults.slow(150)  # ~6 fps of encoding for a 30 fps camera
        await asyncio.sleep(1.0)
        encoders.faults.clear()
        await asyncio.sleep(0.5)
    await settle()
    stats = room.pipeline.stats
    assert stats.encoder_errors == 1
    assert stats.encoder_opens == 2
    assert stats.dropped_queue > 10  # counted, and the queue stayed bounded
    r = rx.receiver.report()
    assert r["stamps_out_of_order"] == 0
    assert r["stamps_missing"] == 0
    assert r["frames_decoded"] == stats.sent


async def test_a_live_codec_change_reaches_the_receiver_as_the_new_codec(lab: LabKey, rx: Rx) -> None:
    room = make_room(rx.port)
    room.keys.use_lab_key(lab)
    async with running(room):
        assert await room.pipeline.healthy(5.0)
        await asyncio.sleep(0.3)
        room.pipeline.apply({"codec": "vp8", "codecs": ["libvpx"]})
        assert await room.pipeline.healthy(3.0)
        await asyncio.sleep(0.7)
    await settle()
    assert room.pipeline.describe()["encoder"] == "libvpx"
    r = rx.receiver.report()
    assert r["frames_decoded"] == room.pipeline.stats.sent  # both codecs decoded, switch included
    assert r["stamps_missing"] == 0
    assert r["stamps_out_of_order"] == 0
