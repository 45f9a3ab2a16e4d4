"""What leaves the device while E2EE is required: every datagram the sink sends is captured; each one
carries a valid SFrame that only the meeting's other room can open, and no plaintext video appears."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from agent.e2ee.counter import CounterStore
from agent.e2ee.header import decode_header
from agent.media.errors import PlaintextRefusedError
from agent.media.frame import split_frame
from agent.media.key_source import KeySource
from agent.media.protect import plain_copy_frame, protect_frame
from agent.media.rtp import Depacketizer, parse_packet
from agent.media.sink import RtpSink
from agent.privacy.hpke import HpkeIdentity
from agent.privacy.key_packages import KeyManager, seal_meeting
from agent.privacy.sframe_keys import SFrameKeyTarget
from agent.schema.policy import DEFAULT_POLICY
from hal.types import EncodedPacket

W, H, FRAMES = 320, 240, 20


def _encoded_stamped_frames() -> list[EncodedPacket]:
    """Real libx264 packets of pictures carrying a visible stamp (a frame counter drawn as blocks)."""
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = W, H, "yuv420p"
    ctx.time_base = Fraction(1, 30)
    ctx.options = {"preset": "ultrafast", "tune": "zerolatency"}
    packets: list[EncodedPacket] = []
    for i in range(FRAMES):
        img = np.zeros((H, W, 3), dtype=np.uint8)
        img[:, :, 1] = 40
        for bit in range(8):  # the stamp: frame number as 8 white/black blocks
            if i >> bit & 1:
                img[8:40, 8 + bit * 36 : 40 + bit * 36] = 255
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        for pkt in [*ctx.encode(frame), *(ctx.encode(None) if i == FRAMES - 1 else [])]:
            packets.append(
                EncodedPacket(
                    data=bytes(pkt),
                    pts=int(pkt.pts or 0) * 3000,
                    keyframe=pkt.is_keyframe,
                    frame_seq=len(packets),
                    capture_ns=time.time_ns(),
                    codec="h264",
                )
            )
    return packets


def test_every_datagram_is_sframe_only_room_b_opens_and_no_plaintext_leaves(tmp_path: Path) -> None:
    ids = {r: HpkeIdentity.generate() for r in ("room-a", "room-b")}
    expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    packages = seal_meeting(
        meeting="m-w",
        epoch=1,
        suite=4,
        kem="x25519",
        key_expires=expires,
        rooms={r: i.public_keys() for r, i in ids.items()},
    )
    targets = {}
    for room in ids:
        targets[room] = SFrameKeyTarget(KeySource(), counter_store=CounterStore(tmp_path / f"{room}.ctr"))
        KeyManager(
            device_id=room, identity=ids[room], policy=lambda: DEFAULT_POLICY, target=targets[room]
        ).install(packages[room])
    sealer, _, _ = targets["room-a"].key_source.current()
    assert sealer is not None

    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(2.0)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sink = RtpSink("127.0.0.1", rx.getsockname()[1], mtu=1200, e2ee_required=DEFAULT_POLICY.e2ee.required)
    packets = _encoded_stamped_frames()
    assert any(p.keyframe for p in packets)
    try:
        for packet in packets:
            sink.send(protect_frame(sealer, packet))
        # The benchmark-only plain copy is refused while E2EE is required: nothing is sent.
        sent_before = sink.stats.packets
        with pytest.raises(PlaintextRefusedError):
            sink.send(plain_copy_frame(packets[0]))
        assert sink.stats.packets == sent_before
        datagrams = [rx.recv(65536) for _ in range(sink.stats.packets)]
        rx.settimeout(0.2)
        with pytest.raises(TimeoutError):
            rx.recv(65536)  # nothing else left the sink
    finally:
        sink.close()
        rx.close()

    wire = b"".join(datagrams)
    for packet in packets:
        data = packet.data
        for start in range(0, max(len(data) - 16, 1), max(len(data) // 8, 1)):
            assert data[start : start + 16] not in wire, "plaintext video bytes on the wire"
    assert b"\x00\x00\x00\x01\x67" not in wire  # no plaintext H.264 SPS start code

    depack = Depacketizer(timeout_s=0.05)
    frames = []
    for d in datagrams:
        parse_packet(d)  # each datagram is a well-formed packet of our RTP format
        frames += depack.push(d, time.monotonic())
    frames += depack.poll(time.monotonic() + 1)
    assert len(frames) == len(packets)
    own = targets["room-a"].key_source.current()[0]
    assert own is not None
    decoder = av.CodecContext.create("h264", "r")
    decoded = 0
    ctrs = []
    for frame, packet in zip(frames, packets, strict=True):
        header, metadata, body = split_frame(frame.payload)
        assert not header.unprotected
        kid, ctr, _ = decode_header(body)  # RFC 9605 §4.3 header
        assert kid == own.kid
        ctrs.append(ctr)
        plaintext = targets["room-b"].opener.open(metadata, body)
        assert plaintext == packet.data
        decoded += len(decoder.decode(av.Packet(plaintext)))
    assert decoded >= FRAMES - 2
    assert ctrs == sorted(set(ctrs))  # never the same (key, KID, CTR) twice (RFC 9605 §9.1)
