"""The per-codec SFrame rule, join keys and links, guest key packages, and the recording scanner."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import struct
from fractions import Fraction
from pathlib import Path

import av
import pytest

from agent.e2ee.context import ReceiverContext, SenderContext
from agent.e2ee.errors import SFrameError
from agent.media.key_source import ContextOpener, KeySource
from agent.privacy.hpke import HpkeIdentity
from agent.privacy.key_packages import KeyManager, KeySet, seal_meeting_keys
from agent.schema.key_package import KeysBody, SfuBody
from agent.schema.policy import DEFAULT_POLICY
from agent.webrtc.codecs import SFrameBinding
from agent.webrtc.errors import FrameRuleError, JoinLinkError
from agent.webrtc.frames import OPUS, VP8, clear_bytes, protect, unprotect
from agent.webrtc.joinkeys import JoinKeys, PeerKey, SfuPlace, join_fragment, parse_join_fragment
from hal.stamps import write_stamp
from tests.mjr import scan_recording

KEY = bytes(range(32))


class _Sealer:
    def __init__(self, ctx: SenderContext) -> None:
        self.ctx = ctx

    @property
    def kid(self) -> int:
        return self.ctx.kid

    def seal(self, metadata: bytes, plaintext: bytes) -> bytes:
        return self.ctx.encrypt(metadata, plaintext)


def _pair(kid: int = 0x101) -> tuple[_Sealer, ContextOpener]:
    receiver = ReceiverContext()
    receiver.add_key(kid, KEY, 4, epoch=1)
    return _Sealer(SenderContext(4, KEY, kid)), ContextOpener(receiver)


def test_vp8_keeps_10_bytes_clear_on_keyframes_and_3_otherwise() -> None:
    key = bytes([0x50, 0x42, 0x00, 0x9D, 0x01, 0x2A, 0x40, 0x01, 0xF0, 0x00]) + secrets.token_bytes(200)
    delta = bytes([0x31, 0x02, 0x00]) + secrets.token_bytes(100)
    assert clear_bytes(VP8, key) == 10
    assert clear_bytes(VP8, delta) == 3
    assert clear_bytes(OPUS, b"\x01\x02") == 0
    sealer, opener = _pair()
    for frame, n in ((key, 10), (delta, 3)):
        wire = protect(VP8, sealer, frame)
        assert wire[:n] == frame[:n]
        assert frame[n:] not in wire  # the rest is ciphertext
        assert unprotect(VP8, opener, wire) == frame


def test_a_changed_clear_byte_fails_authentication() -> None:
    sealer, opener = _pair()
    delta = bytes([0x31, 0x02, 0x00]) + secrets.token_bytes(100)
    wire = bytearray(protect(VP8, sealer, delta))
    wire[1] ^= 0x01  # e.g. a different partition size: metadata is authenticated (RFC 9605 §4.4.3)
    with pytest.raises(SFrameError):
        unprotect(VP8, opener, bytes(wire))


def test_short_vp8_frames_are_refused() -> None:
    sealer, _ = _pair()
    with pytest.raises(FrameRuleError):
        protect(VP8, sealer, b"\x31\x02\x00")
    with pytest.raises(FrameRuleError):
        clear_bytes(VP8, b"")


def test_binding_drops_frames_without_a_key_and_counts_failures() -> None:
    receiver = ReceiverContext()
    binding = SFrameBinding(KeySource(), ContextOpener(receiver))
    assert binding.seal(OPUS, b"\x01" * 40) is None  # no sender key: nothing leaves
    sealer, _ = _pair(kid=7)
    assert binding.open(OPUS, sealer.seal(b"", b"\x01" * 40)) is None  # unknown KID
    snap = binding.snapshot()
    assert snap["dropped_no_key"] == {"opus": 1}
    assert snap["open_failed"] == {"opus:unknown_kid": 1}


def test_join_link_round_trip_and_a_link_without_keys() -> None:
    keys = JoinKeys("m-1", 4, PeerKey("self", 258, KEY), (PeerKey("room-a", 256, KEY[::-1]),))
    place = SfuPlace("http://10.0.0.1:8088/janus", 4242, "pin")
    place2, name, keys2 = parse_join_fragment(join_fragment(place, "alice", keys))
    assert (place2, name) == (place, "alice")
    assert keys2 == keys
    assert parse_join_fragment(join_fragment(place, "bob", None))[2] is None
    with pytest.raises(JoinLinkError):
        JoinKeys.from_json({"v": 1, "meeting": "m", "suite": 4, "send": {"kid": 1, "key": "AAAA"}})


def test_guests_are_senders_sealed_to_rooms_and_the_sfu_place_is_signed_in() -> None:
    identities = {r: HpkeIdentity.generate() for r in ("room-a", "room-b")}
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    sfu = SfuBody(url="https://sfu.example/janus", room=7, token="t")
    sealed = seal_meeting_keys(
        meeting="m-9",
        epoch=2,
        suite=4,
        key_expires=expires,
        rooms={r: i.public_keys() for r, i in identities.items()},
        kem="x25519",
        guests=("alice",),
        sfu=sfu,
    )
    alice = sealed.guests["alice"]
    assert alice.send[0] == (2 << 8) | 2  # after the two rooms
    assert {name for name, _kid, _key in alice.recv} == {"room-a", "room-b"}
    got: list[KeySet] = []

    class Target:
        def apply_keys(self, keys: KeySet) -> None:
            got.append(keys)

    manager = KeyManager(
        device_id="room-a", identity=identities["room-a"], policy=lambda: DEFAULT_POLICY, target=Target()
    )
    body = KeysBody.model_validate(json.loads(sealed.packages["room-a"].model_dump_json()))
    manager.install(body)
    assert got[-1].sfu == sfu
    peers = {k.sender: k.base_key for k in got[-1].peers}
    assert peers["alice"] == alice.send[1]  # the room can open the guest's frames


def test_sfu_place_is_strict() -> None:
    with pytest.raises(ValueError, match="url"):
        SfuBody(url="file:///etc/passwd", room=1)
    with pytest.raises(ValueError, match="extra"):
        SfuBody.model_validate({"url": "http://x:1/janus", "room": 1, "token": "", "other": 1})


def _mjr(path: Path, frames: list[bytes]) -> None:
    """A minimal MJR00002 video recording of ``frames`` (one RTP packet each, VP8 descriptor 0x10)."""
    info = json.dumps({"t": "v", "c": "vp8"}).encode()
    out = b"MJR00002" + struct.pack(">H", len(info)) + info
    for i, frame in enumerate(frames):
        rtp = struct.pack(">BBHII", 0x80, 96, i, i * 3000, 1234) + b"\x10" + frame
        out += b"MEET" + struct.pack(">I", i * 33) + struct.pack(">H", len(rtp)) + rtp
    path.write_bytes(out)


def _vp8_frames(n: int) -> list[bytes]:
    enc = av.CodecContext.create("libvpx", "w")
    enc.width, enc.height, enc.pix_fmt = 320, 240, "yuv420p"
    enc.time_base = Fraction(1, 30)
    out: list[bytes] = []
    for i in range(n):
        frame = av.VideoFrame(320, 240, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        write_stamp(frame, i, 1_000_000 + i)
        frame.pts = i
        out += [bytes(p) for p in enc.encode(frame)]
    out += [bytes(p) for p in enc.encode(None)]
    return out


def test_recording_scanner_finds_plaintext_and_passes_ciphertext(tmp_path: Path) -> None:
    frames = _vp8_frames(10)
    plain, sealed = tmp_path / "plain", tmp_path / "sealed"
    plain.mkdir()
    sealed.mkdir()
    _mjr(plain / "v.mjr", frames)
    sealer, _ = _pair()
    _mjr(sealed / "v.mjr", [protect(VP8, sealer, f) for f in frames])
    found = scan_recording(plain)
    assert found["stamps_readable"] >= 5  # the scanner is able to see plaintext
    clean = scan_recording(sealed)
    assert clean["video_frames"] == len(frames)
    assert clean["stamps_readable"] == 0
    assert clean["plaintext_frames"] == 0
    assert clean["kids"] == [0x101]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--guest", "alice"], "--guest needs --sfu-url"),
        (["--sfu-url", "file:///x", "--sfu-room", "1"], "--sfu-url"),
        (["--sfu-url", "http://sfu:8088/janus"], "go together"),
    ],
)
def test_roomctl_meeting_start_refuses_a_bad_sfu_place_up_front(
    agent_env: dict[str, str], extra: list[str], message: str
) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "agent.fleet", "meeting", "start", "--rooms", "room-a",
         "--broker", "mqtt://127.0.0.1:1", "--customer-key", "/nonexistent", *extra],
        env=agent_env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 2
    assert message in out.stderr
