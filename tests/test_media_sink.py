"""Sinks refuse plaintext; what they send is SFrame; lab keys; the record file reads back."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.e2ee.sframe import AuthenticationError, UnknownKidError, decrypt
from agent.media.errors import KeyFileError, PlaintextRefusedError, RecordFileError, SinkError
from agent.media.frame import FrameHeader, split_frame
from agent.media.key_source import KeySource, LabKey, LabReceiver, LabSender, load_lab_key, write_lab_key
from agent.media.protect import ProtectedFrame, plain_copy_frame, protect_frame
from agent.media.rtp import Depacketizer
from agent.media.sink import FileSink, RtpSink, open_sink, read_records

# A recognisable "picture": if these bytes ever show up on the wire, plaintext leaked.
MARKER = b"STAMP-PATTERN-" * 40


@dataclass(frozen=True)
class Packet:
    data: bytes
    keyframe: bool = True
    frame_seq: int = 0
    capture_ns: int = 1_700_000_000_000_000_000
    codec: str = "h264"


@pytest.fixture
def lab(tmp_path: Path) -> LabKey:
    return write_lab_key(tmp_path / "lab.json", suite=4)


@pytest.fixture
def udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(1.0)
    yield sock
    sock.close()


def _drain(sock: socket.socket, count: int) -> list[bytes]:
    return [sock.recv(65535) for _ in range(count)]


def test_every_datagram_sent_with_e2ee_required_is_sframe_and_leaks_no_plaintext(
    lab: LabKey, udp: socket.socket
) -> None:
    sender = LabSender(lab)
    sink = RtpSink("127.0.0.1", udp.getsockname()[1], mtu=300)
    for i in range(5):
        sink.send(protect_frame(sender, Packet(MARKER + bytes([i]), keyframe=i == 0, frame_seq=i)))
    datagrams = _drain(udp, sink.stats.packets)
    sink.close()
    assert all(MARKER[:16] not in d for d in datagrams)
    de = Depacketizer()
    frames = [f for d in datagrams for f in de.push(d, 0.0)]
    assert len(frames) == 5
    for i, frame in enumerate(frames):
        header, metadata, body = split_frame(frame.payload)
        assert not header.unprotected
        kid, ctr, plaintext = decrypt(lab.suite, lab.key, metadata, body)  # a conformant SFrame
        assert (kid, ctr, plaintext) == (sender.kid, i, MARKER + bytes([i]))


def test_a_plaintext_frame_is_refused_and_nothing_leaves(udp: socket.socket) -> None:
    sink = RtpSink("127.0.0.1", udp.getsockname()[1])
    with pytest.raises(PlaintextRefusedError, match="E2EE is required"):
        sink.send(plain_copy_frame(Packet(MARKER)))
    with pytest.raises(PlaintextRefusedError, match="not an SFrame-protected frame"):
        sink.send(MARKER)  # type: ignore[arg-type]
    udp.settimeout(0.2)
    with pytest.raises(TimeoutError):
        udp.recv(65535)
    assert sink.stats.refused == 2
    assert sink.stats.packets == 0
    sink.close()


def test_only_the_protect_module_can_make_a_protected_frame() -> None:
    with pytest.raises(TypeError, match=r"only by agent\.media\.protect"):
        ProtectedFrame(
            payload=MARKER,
            keyframe=True,
            ticks=0,
            capture_ns=0,
            frame_seq=0,
            protected=True,
            kid=1,
            _token=object(),
        )


def test_a_plain_copy_cannot_be_relabelled_as_protected() -> None:
    plain = plain_copy_frame(Packet(MARKER))
    with pytest.raises(TypeError, match="disagrees"):
        dataclasses.replace(plain, protected=True)


def test_plain_copy_passes_only_when_e2ee_is_not_required(udp: socket.socket) -> None:
    sink = RtpSink("127.0.0.1", udp.getsockname()[1], e2ee_required=False)
    sink.send(plain_copy_frame(Packet(b"bench")))
    (datagram,) = _drain(udp, 1)
    header, _, body = split_frame(Depacketizer().push(datagram, 0.0)[0].payload)
    assert header.unprotected
    assert body == b"bench"
    sink.close()


def test_the_file_sink_writes_records_the_receiver_reads_back(lab: LabKey, tmp_path: Path) -> None:
    sender = LabSender(lab)
    path = tmp_path / "out" / "media.ramf"
    sink = open_sink(f"file://{path}")
    assert isinstance(sink, FileSink)
    for i in range(3):
        sink.send(protect_frame(sender, Packet(MARKER + bytes([i]), keyframe=i == 0)))
    with pytest.raises(PlaintextRefusedError):
        sink.send(plain_copy_frame(Packet(MARKER)))
    sink.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert MARKER[:16] not in path.read_bytes()
    records = list(read_records(path))
    assert [r.keyframe for r in records] == [True, False, False]
    receiver = LabReceiver(lab)
    for i, record in enumerate(records):
        _, metadata, body = split_frame(record.payload)
        assert receiver.open(metadata, body) == MARKER + bytes([i])
    # A power cut mid-record: the complete records still read, then a typed error.
    with path.open("ab") as f:
        f.write(b"\x00\x00\x01\x00\x00")
    got = []
    with pytest.raises(RecordFileError, match="truncated"):
        got.extend(read_records(path))
    assert len(got) == 3


def test_a_file_that_is_not_a_record_file_is_rejected(tmp_path: Path) -> None:
    bogus = tmp_path / "x"
    bogus.write_bytes(b"hello world")
    with pytest.raises(RecordFileError, match="not a roomagent media record file"):
        list(read_records(bogus))


@pytest.mark.parametrize("url", ["udp://127.0.0.1:5000", "rtp://127.0.0.1", "file://", "rtp://:5"])
def test_bad_sink_urls_are_typed_errors(url: str) -> None:
    with pytest.raises(SinkError):
        open_sink(url)


def test_a_receiver_with_another_key_fails_authentication(lab: LabKey, tmp_path: Path) -> None:
    other = LabKey(suite=lab.suite, kid=lab.kid, key=os.urandom(32))
    sealed = protect_frame(LabSender(lab), Packet(MARKER))
    _, metadata, body = split_frame(sealed.payload)
    with pytest.raises(AuthenticationError):
        LabReceiver(other).open(metadata, body)
    stranger = LabKey(suite=lab.suite, kid=lab.kid + 1, key=lab.key)
    with pytest.raises(UnknownKidError):
        LabReceiver(stranger).open(metadata, body)


def test_a_tampered_keyframe_bit_fails_authentication(lab: LabKey) -> None:
    sealed = protect_frame(LabSender(lab), Packet(MARKER, keyframe=False))
    _, _, body = split_frame(sealed.payload)
    forged = FrameHeader(codec="h264", keyframe=True).encode()
    with pytest.raises(AuthenticationError):
        LabReceiver(lab).open(forged, body)


def test_two_lab_senders_never_share_a_kid_so_ctr_restarts_are_safe(lab: LabKey) -> None:
    a, b = LabSender(lab), LabSender(lab)
    assert a.kid != b.kid
    assert a.kid >> 32 == b.kid >> 32 == lab.kid
    receiver = LabReceiver(lab)
    for sender in (a, b):
        _, metadata, body = split_frame(protect_frame(sender, Packet(b"x")).payload)
        assert receiver.open(metadata, body) == b"x"


def test_lab_key_files_are_private_strict_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "lab.json"
    key = write_lab_key(path, suite=1, kid=9)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_lab_key(path) == key
    assert key.key.hex() not in repr(key)
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        write_lab_key(path)
    doc = json.loads(path.read_text())
    for broken, reason in [
        ({**doc, "extra": 1}, "exactly the keys"),
        ({**doc, "suite": 99}, "99"),
        ({**doc, "key_hex": "zz"}, "not hex"),
        ({**doc, "key_hex": "00" * 4}, "key"),
        ({**doc, "format": "other"}, "not a roomagent-lab-key/1"),
        ({**doc, "kid": "7"}, "integers"),
    ]:
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(broken))
        with pytest.raises(KeyFileError, match=reason) as info:
            load_lab_key(bad)
        assert doc["key_hex"] not in str(info.value)
    (tmp_path / "nojson").write_text("{")
    with pytest.raises(KeyFileError, match="not JSON"):
        load_lab_key(tmp_path / "nojson")
    with pytest.raises(KeyFileError):
        load_lab_key(tmp_path / "missing")


def test_key_rotation_notifies_listeners_and_describe_never_shows_keys(lab: LabKey) -> None:
    source = KeySource()
    calls = []
    remove = source.add_listener(lambda: calls.append(1))
    sender = source.use_lab_key(lab)
    assert source.describe() == {"origin": "lab", "epoch": 0, "kid": sender.kid, "lab_key": True}
    source.set_sender(None, 3)
    assert source.current()[0] is None
    assert source.describe()["origin"] == "none"
    remove()
    source.set_sender(sender, 4)
    assert calls == [1, 1]
    assert lab.key.hex() not in json.dumps(source.describe())
