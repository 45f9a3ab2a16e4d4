"""RTP generic frame packetization: round trips, wrap-around, reordering, loss, hostile datagrams."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.media.errors import MalformedPacketError
from agent.media.rtp import (
    DESCRIPTOR_E,
    DESCRIPTOR_S,
    HEADER_LEN,
    Depacketizer,
    Packetizer,
    Reassembler,
    build_packet,
    parse_packet,
)


def _frames(n: int, size: int = 3000) -> list[bytes]:
    return [bytes([i % 251]) * 7 + os.urandom(size + i) for i in range(n)]


def _send(pk: Packetizer, frames: list[bytes]) -> list[list[bytes]]:
    return [pk.packetize(f, i * 3000, keyframe=i == 0) for i, f in enumerate(frames)]


def test_packets_are_rfc3550_with_first_last_marking_and_fit_the_mtu() -> None:
    pk = Packetizer(0x1234ABCD, mtu=500, initial_seq=10, timestamp_offset=0)
    packets = pk.packetize(b"x" * 1200, 90_000, keyframe=True)
    assert len(packets) == 3
    assert all(len(p) <= 500 for p in packets)
    parsed = [parse_packet(p) for p in packets]
    assert [p.seq for p in parsed] == [10, 11, 12]
    assert {p.timestamp for p in parsed} == {90_000}
    assert {p.ssrc for p in parsed} == {0x1234ABCD}
    assert [(p.start, p.end, p.marker) for p in parsed] == [
        (True, False, False),
        (False, False, False),
        (False, True, True),
    ]
    assert all(p.keyframe for p in parsed)
    assert packets[0][0] >> 6 == 2  # RTP version 2


def test_frames_survive_sequence_and_timestamp_wraparound() -> None:
    frames = _frames(20)
    pk = Packetizer(7, mtu=600, initial_seq=65_530, timestamp_offset=(1 << 32) - 10_000)
    de = Depacketizer()
    got = []
    for packets in _send(pk, frames):
        for p in packets:
            got.extend(de.push(p, 0.0))
    assert [f.payload for f in got] == frames
    assert de.stats.lost == 0
    assert de.stats.frames == 20


def test_reordering_within_the_window_still_yields_every_frame_in_order() -> None:
    frames = _frames(30)
    packets = [p for ps in _send(Packetizer(1, mtu=400), frames) for p in ps]
    rng = random.Random(5)
    shuffled = packets[:]
    # Local shuffles: each packet moves at most a few places, as on a real path.
    for i in range(0, len(shuffled) - 4, 3):
        chunk = shuffled[i : i + 4]
        rng.shuffle(chunk)
        shuffled[i : i + 4] = chunk
    de = Depacketizer()
    got = [f for p in shuffled for f in de.push(p, 0.0)]
    assert [f.payload for f in got] == frames
    assert de.stats.reordered > 0
    assert de.stats.lost == 0


def test_a_lost_packet_drops_only_its_frame_and_is_counted() -> None:
    frames = _frames(10)
    sent = _send(Packetizer(1, mtu=800), frames)
    del sent[4][1]  # one fragment of frame 4 never arrives
    de = Depacketizer(window=8)
    got = [f for ps in sent for p in ps for f in de.push(p, 0.0)]
    got += de.poll(10.0)
    assert [f.payload for f in got] == frames[:4] + frames[5:]
    assert de.stats.lost == 1
    assert de.stats.frames_incomplete == 1
    after = [f for f in got if f.after_loss]
    assert [f.payload for f in after] == [frames[5]]


def test_a_gap_at_the_end_of_the_stream_is_given_up_after_the_timeout() -> None:
    frames = _frames(3)
    sent = _send(Packetizer(1, mtu=800), frames)
    del sent[2][-1]  # the last frame's end is lost and nothing follows
    de = Depacketizer(timeout_s=0.2)
    got = [f for ps in sent for p in ps for f in de.push(p, 1.0)]
    assert len(got) == 2
    assert de.poll(1.1) == []
    assert de.poll(1.3) == []
    assert de.stats.frames_incomplete == 1
    assert sum(s.buffered_packets for s in de.streams.values()) == 0


def test_duplicates_and_late_packets_are_counted_not_delivered_twice() -> None:
    frames = _frames(4)
    sent = [p for ps in _send(Packetizer(1, mtu=800), frames) for p in ps]
    de = Depacketizer()
    got = [f for p in sent for f in de.push(p, 0.0)]
    got += [f for p in sent[:3] for f in de.push(p, 0.0)]
    assert len(got) == 4
    assert de.stats.late == 3


def test_two_cameras_are_told_apart_by_ssrc() -> None:
    a, b = _frames(5), _frames(5, 2000)
    pa, pb = _send(Packetizer(1, mtu=700), a), _send(Packetizer(2, mtu=700), b)
    de = Depacketizer()
    got = []
    for xs, ys in zip(pa, pb, strict=True):
        for p in [q for pair in zip(xs, ys, strict=False) for q in pair] + xs[len(ys) :] + ys[len(xs) :]:
            got.extend(de.push(p, 0.0))
    assert [f.payload for f in got if f.ssrc == 1] == a
    assert [f.payload for f in got if f.ssrc == 2] == b


def test_a_flood_of_new_ssrcs_evicts_old_streams_instead_of_growing() -> None:
    de = Depacketizer(max_streams=4)
    for ssrc in range(100):
        de.push(
            build_packet(ssrc=ssrc, seq=0, timestamp=0, start=True, end=False, keyframe=False, fragment=b"x"),
            float(ssrc),
        )
    assert len(de.streams) == 4
    assert de.stats.streams_evicted == 96


def test_a_frame_that_never_ends_cannot_hog_memory() -> None:
    r = Reassembler(1, window=16, timeout_s=100.0, max_bytes=10_000)
    r.push(
        parse_packet(
            build_packet(
                ssrc=1, seq=0, timestamp=5, start=True, end=False, keyframe=False, fragment=b"a" * 100
            )
        ),
        0.0,
    )
    for seq in range(1, 500):
        r.push(
            parse_packet(
                build_packet(
                    ssrc=1, seq=seq, timestamp=5, start=False, end=False, keyframe=False, fragment=b"a" * 100
                )
            ),
            0.0,
        )
        assert r.buffered_packets <= 4 * 16 + 1
    assert r.stats.frames_incomplete >= 1


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"", "too short"),
        (bytes([0x40, 96]) + bytes(11), "RTP version 1"),
        (bytes([0x80, 97]) + bytes(10) + bytes([DESCRIPTOR_S]) + b"x", "payload type 97"),
        (bytes([0x80, 96]) + bytes(10) + bytes([0x01]) + b"x", "reserved descriptor bits"),
        (bytes([0x80, 96]) + bytes(10) + bytes([DESCRIPTOR_E]) + b"x", "marker bit disagrees"),
        (bytes([0x80, 96]) + bytes(10) + bytes([DESCRIPTOR_S]), "empty fragment"),
        (bytes([0xA0, 96]) + bytes(10) + bytes([DESCRIPTOR_S]) + b"x\x09", "bad padding"),
        (bytes([0x90, 96]) + bytes(10) + b"\x00\x00", "truncated header extension"),
        (bytes([0x8F, 96]) + bytes(11), "no payload descriptor"),
    ],
)
def test_malformed_datagrams_raise_a_typed_error_naming_the_check(datagram: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacketError, match=reason):
        parse_packet(datagram)


def test_csrc_extension_and_padding_from_other_senders_are_skipped() -> None:
    body = bytes([DESCRIPTOR_S | DESCRIPTOR_E]) + b"frame"
    header = bytes([0x80 | 0x20 | 0x10 | 0x01, 0x80 | 96]) + bytes(10)
    datagram = header + bytes(4) + b"\xbe\xde\x00\x01" + bytes(4) + body + b"\x00\x00\x03"
    pkt = parse_packet(datagram)
    assert pkt.fragment == b"frame"
    assert pkt.start
    assert pkt.end
    assert len(datagram) > HEADER_LEN


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=30))
def test_any_datagrams_never_raise_and_stay_bounded(datagrams: list[bytes]) -> None:
    de = Depacketizer(max_streams=3, window=8, max_bytes=4096)
    for i, d in enumerate(datagrams):
        for frame in de.push(d, i * 0.01):
            assert frame.payload
    s = de.stats
    assert s.packets + s.malformed == len(datagrams)
    assert all(r.buffered_packets <= 64 for r in de.streams.values())


def test_constructor_arguments_are_checked_at_once() -> None:
    with pytest.raises(ValueError, match="mtu"):
        Packetizer(1, mtu=20)
    with pytest.raises(ValueError, match="ssrc"):
        Packetizer(-1)
    with pytest.raises(ValueError, match="empty"):
        Packetizer(1).packetize(b"", 0, keyframe=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=20), st.booleans())
def test_the_receiver_survives_any_datagrams_and_any_reassembled_payloads(
    datagrams: list[bytes], framed: bool
) -> None:
    from agent.media.key_source import LabKey, LabReceiver
    from agent.media.receiver import MediaReceiver

    receiver = MediaReceiver(LabReceiver(LabKey(suite=4, kid=1, key=bytes(32))))
    pk = Packetizer(9, mtu=100)
    for i, d in enumerate(datagrams):
        if framed and d:
            for p in pk.packetize(d, i * 3000, keyframe=bool(i % 2)):
                receiver.handle_datagram(p, i * 0.01)
        else:
            receiver.handle_datagram(d, i * 0.01)
    r = receiver.report()
    assert r["frames_decoded"] == 0
    assert r["frames_received"] == r["decrypt_failures"] + r["malformed_frames"] + r["unprotected_refused"]
