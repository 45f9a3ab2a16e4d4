"""A room's receive side with keys from a key set (as the customer-signed key package yields them):
room A's video and audio, sealed with A's meeting key, are opened by room B with the peer key it
was given, shown on B's display and played on B's speaker, with per-peer figures named by sender."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta

from agent.media.audio import AudioSender
from agent.media.key_source import KeySource
from agent.media.meeting import MeetingReceive
from agent.media.protect import ProtectedFrame, protect_frame
from agent.media.rtp import Packetizer
from agent.media.sink import SinkStats
from agent.privacy.key_packages import KeySet, MeetingKey
from agent.privacy.sframe_keys import SFrameKeyTarget
from hal.codecs import PyAvEncoderFactory
from hal.display import SimDisplay
from hal.sim import SimInventory
from hal.sim.audio import SimMicrophone, SimSpeaker
from hal.types import AudioSpec, CameraSpec, DisplaySpec, EncoderConfig


class _Wire:
    url = "test:wire"
    e2ee_required = True

    def __init__(self, into: MeetingReceive) -> None:
        self.stats = SinkStats()
        self.packetizer = Packetizer(secrets.randbits(32))
        self.into = into
        self.payloads: list[bytes] = []

    def send(self, frame: ProtectedFrame) -> None:
        self.stats.frames += 1
        self.payloads.append(frame.payload)
        for datagram in self.packetizer.packetize(frame.payload, frame.ticks, keyframe=frame.keyframe):
            self.into.handle_datagram(datagram)

    def close(self) -> None:
        pass


def _key(sender: str, kid: int, base: bytes) -> MeetingKey:
    expires = datetime.now(UTC) + timedelta(hours=1)
    return MeetingKey(
        meeting="m1", epoch=1, suite=4, sender=sender, kid=kid, base_key=base, expires_at=expires
    )


async def test_room_b_shows_and_plays_room_a_with_package_keys() -> None:
    a_key = _key("room-a", 0x10001, secrets.token_bytes(32))
    a_target = SFrameKeyTarget(KeySource())
    a_target.apply_keys(KeySet(meeting="m1", epoch=1, own=a_key))
    b_target = SFrameKeyTarget(KeySource())
    b_target.apply_keys(KeySet(meeting="m1", epoch=1, peers=(a_key,)))
    kid_names = {a_key.kid: a_key.sender}

    display = SimDisplay(DisplaySpec(id="b-screen", width=640, height=360))
    speakers: dict[str, SimSpeaker] = {}
    b = MeetingReceive(
        b_target.opener,
        display,
        lambda peer: speakers.setdefault(peer, SimSpeaker(AudioSpec(id=f"spk-{peer}"))),
        peer_of_kid=kid_names.get,
    )
    video_wire, audio_wire = _Wire(b), _Wire(b)
    sealer, _, _ = a_target.key_source.current()
    assert sealer is not None
    encoder = PyAvEncoderFactory().open(EncoderConfig("h264", 320, 240, 30, 600, 30), ("libx264",))
    mic = SimMicrophone(AudioSpec(id="mic-a"))
    audio = AudioSender(mic, a_target.key_source, audio_wire)
    inv = SimInventory([CameraSpec(id="cam-a", width=320, height=240, fps=30)])
    async with inv.open_camera("cam-a") as cam:
        n = 0
        async for frame in cam.frames():
            for packet in encoder.encode(frame):
                video_wire.send(protect_frame(sealer, packet))
            if n % 3 == 0:  # ~20 ms of audio per 33 ms video frame is close enough for the test
                audio.send(mic.render(frame.capture_ns // 20_000_000))
            n += 1
            if n == 45:
                break
    await asyncio.sleep(0.4)  # lip sync holds each picture until its sound would play
    b.close()
    figures = b.describe()
    assert figures["decrypt_failures"] == 0
    peer = figures["peers"]["room-a"]  # named by the key package's sender, from the KID
    assert peer["video"]["shown"] >= 40
    # held for the audio device's queue plus the audio-only delays: shown later than decoded
    assert peer["video"]["latency_ms_p50"] >= 15
    assert peer["video"]["stamps_missing"] == 0
    assert peer["video"]["out_of_order"] == 0
    assert peer["audio"]["decoded"] == audio.stats.sent
    assert display.last_screen is not None
    assert [t.name for t in display.last_screen.remote] == ["room-a"]
    # nothing on either wire is in clear: every payload is frame header + SFrame ciphertext
    assert not any(b"\x00\x00\x00\x01\x67" in p for p in video_wire.payloads)  # no H.264 SPS


async def test_a_room_without_the_peer_key_shows_nothing() -> None:
    a_key = _key("room-a", 0x20001, secrets.token_bytes(32))
    a_target = SFrameKeyTarget(KeySource())
    a_target.apply_keys(KeySet(meeting="m1", epoch=1, own=a_key))
    outsider = SFrameKeyTarget(KeySource())  # not in the meeting: no key package for it
    display = SimDisplay(DisplaySpec(id="x", width=320, height=180))
    c = MeetingReceive(
        outsider.opener, display, lambda p: SimSpeaker(AudioSpec(id="s")), peer_of_kid=lambda k: None
    )
    wire = _Wire(c)
    sealer, _, _ = a_target.key_source.current()
    assert sealer is not None
    encoder = PyAvEncoderFactory().open(EncoderConfig("h264", 320, 240, 30, 600, 30), ("libx264",))
    inv = SimInventory([CameraSpec(id="cam", width=320, height=240, fps=30)])
    async with inv.open_camera("cam") as cam:
        n = 0
        async for frame in cam.frames():
            for packet in encoder.encode(frame):
                wire.send(protect_frame(sealer, packet))
            n += 1
            if n == 10:
                break
    await asyncio.sleep(0)
    c.close()
    assert c.describe()["decrypt_failures"] >= 9
    assert display.last_screen is None


def test_hostile_datagrams_never_raise() -> None:
    import random

    display = SimDisplay(DisplaySpec(id="x", width=320, height=180))
    target = SFrameKeyTarget(KeySource())
    m = MeetingReceive(
        target.opener, display, lambda p: SimSpeaker(AudioSpec(id="s")), peer_of_kid=lambda k: "x"
    )
    rng = random.Random(5)
    for i in range(3000):
        size = rng.choice([0, 1, 12, 13, 20, 200, 1500])
        data = bytes(rng.getrandbits(8) for _ in range(size))
        if size >= 13 and i % 2:
            data = bytes([0x80, 96]) + data[2:12] + bytes([0xC0]) + data[13:]  # valid RTP + descriptor
        m.handle_datagram(data, now=i * 0.001)
    m.receiver.poll(now=100.0)
    m.close()
    assert display.last_screen is None
