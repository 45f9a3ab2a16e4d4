"""Meeting keys into SFrame: a frame room A sends over real RTP/UDP decrypts at room B, at no one else."""

from __future__ import annotations

import os
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.e2ee.counter import CounterStore
from agent.e2ee.errors import SFrameError
from agent.media.frame import split_frame
from agent.media.key_source import KeySource
from agent.media.protect import protect_frame
from agent.media.rtp import Depacketizer
from agent.media.sink import RtpSink
from agent.privacy.hpke import HpkeIdentity
from agent.privacy.key_packages import KeyManager, KeySet, seal_meeting
from agent.privacy.sframe_keys import SFrameKeyTarget
from agent.schema.policy import DEFAULT_POLICY
from hal.types import EncodedPacket

ROOMS = ("room-a", "room-b", "room-c")


class Room:
    def __init__(self, device: str, identity: HpkeIdentity, state_dir: Path) -> None:
        self.key_source = KeySource()
        self.sets: list[KeySet] = []
        self.target = SFrameKeyTarget(
            self.key_source,
            counter_store=CounterStore(state_dir / f"{device}-ctr.json"),
            on_change=self.sets.append,
        )
        self.keys = KeyManager(
            device_id=device, identity=identity, policy=lambda: DEFAULT_POLICY, target=self.target
        )


def _meeting(identities: dict[str, HpkeIdentity], epoch: int, rooms: tuple[str, ...]) -> dict:
    expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return seal_meeting(
        meeting="m-7",
        epoch=epoch,
        suite=4,
        kem="mlkem768-x25519",
        key_expires=expires,
        rooms={r: identities[r].public_keys() for r in rooms},
    )


def _packet(seq: int, size: int = 3000) -> EncodedPacket:
    return EncodedPacket(
        data=os.urandom(size),
        pts=seq * 3000,
        keyframe=seq == 0,
        frame_seq=seq,
        capture_ns=time.time_ns(),
        codec="h264",
    )


def _send_and_capture(room: Room, packets: list[EncodedPacket]) -> list[bytes]:
    """Send through a real RtpSink to a loopback UDP socket; return the reassembled frame payloads."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(1.0)
    sink = RtpSink("127.0.0.1", rx.getsockname()[1], mtu=1200)
    depack = Depacketizer(timeout_s=0.05)
    frames = []
    try:
        sealer, _, _ = room.key_source.current()
        assert sealer is not None
        for packet in packets:
            sink.send(protect_frame(sealer, packet))
        for _ in range(sink.stats.packets):
            frames += depack.push(rx.recv(65536), time.monotonic())
        frames += depack.poll(time.monotonic() + 1)
    finally:
        sink.close()
        rx.close()
    return [f.payload for f in frames]


@pytest.fixture(scope="module")
def identities() -> dict[str, HpkeIdentity]:
    return {r: HpkeIdentity.generate() for r in ROOMS}


def test_frames_from_room_a_decrypt_at_room_b_and_not_at_a_room_outside_the_meeting(
    identities: dict, tmp_path: Path
) -> None:
    a, b, c = (Room(r, identities[r], tmp_path) for r in ROOMS)
    packages = _meeting(identities, 1, ("room-a", "room-b"))
    a.keys.install(packages["room-a"])
    b.keys.install(packages["room-b"])
    packets = [_packet(i) for i in range(5)]
    payloads = _send_and_capture(a, packets)
    assert len(payloads) == 5
    for packet, payload in zip(packets, payloads, strict=True):
        _, metadata, body = split_frame(payload)
        assert packet.data not in payload  # ciphertext on the wire
        assert b.target.opener.open(metadata, body) == packet.data
        # A room that got no key package (a would-be ghost) holds no key for this KID.
        with pytest.raises(SFrameError):
            c.target.opener.open(metadata, body)


def test_rotation_switches_sender_key_and_old_epoch_frames_still_decrypt_in_grace(
    identities: dict, tmp_path: Path
) -> None:
    a, b = Room("room-a", identities["room-a"], tmp_path), Room("room-b", identities["room-b"], tmp_path)
    first = _meeting(identities, 1, ("room-a", "room-b"))
    a.keys.install(first["room-a"])
    b.keys.install(first["room-b"])
    in_flight = _send_and_capture(a, [_packet(0)])[0]
    second = _meeting(identities, 2, ("room-a", "room-b"))
    a.keys.install(second["room-a"])
    b.keys.install(second["room-b"])
    sealer, epoch, _ = a.key_source.current()
    assert epoch == 2
    assert sealer is not None
    assert a.keys.keys.own is not None
    assert sealer.kid == a.keys.keys.own.kid
    _, metadata, body = split_frame(in_flight)
    assert b.target.opener.open(metadata, body)  # epoch-1 frame still opens during the grace
    fresh = _send_and_capture(a, [_packet(1)])[0]
    _, metadata, body = split_frame(fresh)
    assert b.target.opener.open(metadata, body)


def test_no_sender_key_means_no_sealer_and_media_cannot_leave(identities: dict, tmp_path: Path) -> None:
    a = Room("room-a", identities["room-a"], tmp_path)
    a.keys.install(_meeting(identities, 1, ("room-a", "room-b"))["room-a"])
    assert a.key_source.current()[0] is not None
    a.keys.clear("locked")
    assert a.key_source.current()[0] is None
    assert a.sets[-1].idle
    assert a.target.receiver.kids() == frozenset()
