"""Sender and receiver contexts: CTR discipline, anti-replay (§9.3), epochs, key usage, drops."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from agent.e2ee import sframe
from agent.e2ee.context import CounterStore, Decrypted, KeyUsage, ReceiverContext, SenderContext
from agent.e2ee.counter import counter_key_id
from agent.e2ee.header import decode_header, encode_header
from agent.e2ee.sframe import (
    AuthenticationError,
    InvalidParameterError,
    KeyUsageError,
    MalformedCiphertextError,
    ReplayError,
    SFrameHeaderError,
    UnknownKidError,
)
from agent.persist import atomic_write_json

KEY = bytes(range(32))


def _pair(suite: int = 4, kid: int = 7, window: int = 1024) -> tuple[SenderContext, ReceiverContext]:
    sender = SenderContext(suite, KEY, kid)
    receiver = ReceiverContext(replay_window=window)
    receiver.add_key(kid, KEY, suite)
    return sender, receiver


@pytest.mark.parametrize("suite", [1, 2, 3, 4, 5])
def test_sender_frames_decrypt_in_order_with_increasing_ctr(suite: int) -> None:
    sender, receiver = _pair(suite)
    frames = [sender.encrypt(b"m", f"frame {i}".encode()) for i in range(20)]
    assert [decode_header(f)[:2] for f in frames] == [(7, i) for i in range(20)]
    for i, f in enumerate(frames):
        assert receiver.decrypt(b"m", f) == Decrypted(7, i, f"frame {i}".encode())
    # Interoperable: the stateless API (and so any RFC 9605 receiver) reads the same bytes.
    assert sframe.decrypt(suite, KEY, b"m", frames[3]) == (7, 3, b"frame 3")


def test_concurrent_encrypts_never_share_a_ctr() -> None:
    sender = SenderContext(4, KEY, 1)
    seen: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(200):
            ctr = decode_header(sender.encrypt(b"", b"x"))[1]
            with lock:
                seen.append(ctr)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == list(range(800))


def test_replayed_frame_is_dropped_and_counted() -> None:
    """An SFU (or anyone on path) resends a captured frame: accepted once, then dropped as replay."""
    sender, receiver = _pair()
    frame = sender.encrypt(b"", b"hello")
    receiver.decrypt(b"", frame)
    with pytest.raises(ReplayError) as info:
        receiver.decrypt(b"", frame)
    assert (info.value.kid, info.value.ctr, info.value.too_old) == (7, 0, False)
    assert receiver.drops["replay"] == 1


def test_reordering_within_window_is_accepted_once() -> None:
    sender, receiver = _pair(window=16)
    frames = [sender.encrypt(b"", b"%d" % i) for i in range(20)]
    for i in [0, 5, 3, 19, 4, 10, 6]:
        assert receiver.decrypt(b"", frames[i]).ctr == i
    for i in [3, 19, 10]:
        with pytest.raises(ReplayError):
            receiver.decrypt(b"", frames[i])
    # 19 - 16 = 3: CTR 4 was seen; CTR 3 and below are outside the window now.
    with pytest.raises(ReplayError) as info:
        receiver.decrypt(b"", frames[1])
    assert info.value.too_old
    assert receiver.decrypt(b"", frames[18]).ctr == 18  # inside the window, not yet seen
    assert receiver.drops["replay"] == 4


def test_zero_window_accepts_only_increasing() -> None:
    sender, receiver = _pair(window=0)
    frames = [sender.encrypt(b"", b"x") for _ in range(3)]
    receiver.decrypt(b"", frames[0])
    receiver.decrypt(b"", frames[2])
    with pytest.raises(ReplayError):
        receiver.decrypt(b"", frames[1])


def test_forged_frame_does_not_advance_the_window() -> None:
    """A forgery with a huge CTR fails authentication and must not push genuine frames out."""
    sender, receiver = _pair(window=8)
    receiver.decrypt(b"", sender.encrypt(b"", b"a"))
    forged = bytes([0x7F]) + (1 << 63).to_bytes(8, "big") + os.urandom(40)  # KID 7, 8-byte CTR
    with pytest.raises(AuthenticationError):
        receiver.decrypt(b"", forged)
    assert receiver.decrypt(b"", sender.encrypt(b"", b"b")).ctr == 1
    assert receiver.drops["auth_failed"] == 1


def test_unknown_kid_and_malformed_are_counted() -> None:
    sender, receiver = _pair()
    other = SenderContext(4, KEY, 8)
    with pytest.raises(UnknownKidError) as info:
        receiver.decrypt(b"", other.encrypt(b"", b"x"))
    assert info.value.kid == 8
    with pytest.raises(SFrameHeaderError):
        receiver.decrypt(b"", b"")
    with pytest.raises(MalformedCiphertextError):
        receiver.decrypt(b"", b"\x70" + bytes(5))  # KID 7, CTR 0, shorter than a GCM tag
    frame = bytearray(sender.encrypt(b"", b"payload"))
    frame[-1] ^= 0x80
    with pytest.raises(AuthenticationError):
        receiver.decrypt(b"", bytes(frame))
    assert dict(receiver.drops) == {"unknown_kid": 1, "auth_failed": 1, "replay": 0, "malformed": 2}
    with pytest.raises(TypeError):
        receiver.drops["replay"] = 0  # type: ignore[index]


def test_non_bytes_input_is_a_typed_error_not_a_drop() -> None:
    _, receiver = _pair()
    with pytest.raises(InvalidParameterError):
        receiver.decrypt(b"", "text")  # type: ignore[arg-type]
    assert sum(receiver.drops.values()) == 0


def test_epochs_retire_oldest_beyond_max() -> None:
    receiver = ReceiverContext(max_epochs=2)
    senders = {}
    for epoch, kid in [(1, 10), (2, 20), (2, 21)]:
        receiver.add_key(kid, KEY, 4, epoch=epoch)
        senders[kid] = SenderContext(4, KEY, kid)
    frame10 = senders[10].encrypt(b"", b"old")
    assert receiver.decrypt(b"", frame10).plaintext == b"old"
    receiver.add_key(30, KEY, 4, epoch=3)  # third epoch: epoch 1 and KID 10 go
    assert receiver.epochs == (2, 3)
    assert receiver.kids() == frozenset({20, 21, 30})
    with pytest.raises(UnknownKidError):
        receiver.decrypt(b"", senders[10].encrypt(b"", b"after retirement"))
    with pytest.raises(InvalidParameterError, match="older than every retained epoch"):
        receiver.add_key(11, KEY, 4, epoch=1)
    receiver.retire_epoch(2)
    assert receiver.kids() == frozenset({30})
    receiver.remove_key(30)
    assert receiver.kids() == frozenset()
    assert receiver.epochs == ()


def test_kid_moves_to_new_epoch_with_new_key() -> None:
    receiver = ReceiverContext(max_epochs=2)
    receiver.add_key(5, KEY, 4, epoch=0)
    new_key = os.urandom(16)
    receiver.add_key(5, new_key, 4, epoch=1)
    receiver.retire_epoch(0)  # must not take the new key of KID 5 with it
    assert receiver.decrypt(b"", SenderContext(4, new_key, 5).encrypt(b"", b"x")).plaintext == b"x"


def test_re_adding_same_key_keeps_replay_window() -> None:
    sender, receiver = _pair()
    frame = sender.encrypt(b"", b"x")
    receiver.decrypt(b"", frame)
    receiver.add_key(7, KEY, 4)
    with pytest.raises(ReplayError):
        receiver.decrypt(b"", frame)


def test_receiver_refuses_encrypt_keys() -> None:
    """§4.4.1: "Implementations MUST mark each base_key as usable for encryption or decryption"."""
    receiver = ReceiverContext()
    with pytest.raises(KeyUsageError):
        receiver.add_key(1, KEY, 4, usage=KeyUsage.ENCRYPT)
    assert receiver.kids() == frozenset()


def test_sender_refuses_to_wrap(tmp_path: Path) -> None:
    """§7.4: never encrypt twice with one key and nonce; CTR 2^64-1 is the last one."""
    # A sender restarts with its high-water mark at 2^64-2 (as if that many frames had been sent).
    atomic_write_json(
        tmp_path / "ctr.json", {"format": 1, "high_water": {counter_key_id(4, KEY, 1): (1 << 64) - 2}}
    )
    sender = SenderContext(4, KEY, 1, counter_store=CounterStore(tmp_path / "ctr.json"))
    receiver = ReceiverContext()
    receiver.add_key(1, KEY, 4)
    for expected in [(1 << 64) - 2, (1 << 64) - 1]:
        assert receiver.decrypt(b"", sender.encrypt(b"", b"x")).ctr == expected
    for _ in range(2):
        with pytest.raises(sframe.CounterExhaustedError):
            sender.encrypt(b"", b"x")


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((4, b"short", 1), "base_key"),
        ((4, KEY, -1), "kid"),
        ((4, KEY, 1 << 64), "kid"),
        ((9, KEY, 1), "cipher_suite"),
    ],
)
def test_sender_rejects_bad_arguments(args: tuple[int, bytes, int], name: str) -> None:
    with pytest.raises(InvalidParameterError) as info:
        SenderContext(*args)
    assert info.value.name == name


def test_receiver_rejects_bad_arguments() -> None:
    with pytest.raises(InvalidParameterError):
        ReceiverContext(replay_window=-1)
    with pytest.raises(InvalidParameterError):
        ReceiverContext(max_epochs=0)
    receiver = ReceiverContext()
    with pytest.raises(InvalidParameterError):
        receiver.add_key(1, KEY, 4, epoch=-1)
    with pytest.raises(sframe.UnsupportedCipherSuiteError):
        receiver.add_key(1, KEY, 0)


def test_decrypted_is_a_frozen_value() -> None:
    sender, receiver = _pair()
    result = receiver.decrypt(b"", sender.encrypt(b"", b"x"))
    assert result == Decrypted(7, 0, b"x")
    assert hash(result) == hash(Decrypted(7, 0, b"x"))
    with pytest.raises(AttributeError):
        result.ctr = 5  # type: ignore[misc]


@pytest.mark.parametrize("suite", [1, 3, 4, 5])
def test_encrypt_into_writes_the_same_sframe_ciphertext_in_place(suite: int) -> None:
    sender, receiver = _pair(suite)
    plain = os.urandom(5000)
    out = bytearray(len(plain) + sender.max_overhead)
    for expected_ctr in range(10):
        n = sender.encrypt_into(b"meta", plain, out)
        assert receiver.decrypt(b"meta", bytes(out[:n])) == Decrypted(7, expected_ctr, plain)
    # encrypt and encrypt_into share one CTR sequence.
    assert receiver.decrypt(b"meta", sender.encrypt(b"meta", plain)).ctr == 10


def test_encrypt_into_refuses_small_or_read_only_buffers_without_using_a_ctr() -> None:
    sender, _ = _pair()
    with pytest.raises(InvalidParameterError, match="at least"):
        sender.encrypt_into(b"", b"x" * 100, bytearray(100))
    with pytest.raises(InvalidParameterError):
        sender.encrypt_into(b"", b"x", bytes(200))  # type: ignore[arg-type]
    assert sender.next_ctr == 0


# Every header shape the decrypt fast path handles (KID 0-7, CTR 0 .. 2^64-1) and the general path.
_CTRS = [0, 7, 8, 255, 256, 65535, 65536, 1 << 24, 1 << 56, (1 << 64) - 1]


@pytest.mark.parametrize("kid", [0, 7, 8, 300])
@pytest.mark.parametrize("suite", [1, 4, 5])
def test_fast_and_general_decrypt_paths_agree(suite: int, kid: int) -> None:
    """bytes input (fast path for GCM with KID 0-7) and bytearray input (general path) give the same."""
    fast, general = ReceiverContext(), ReceiverContext()
    fast.add_key(kid, KEY, suite)
    general.add_key(kid, KEY, suite)
    for ctr in _CTRS:
        frame = sframe.encrypt(suite, KEY, kid, ctr, b"meta", f"frame {ctr}".encode())
        expected = Decrypted(kid, ctr, f"frame {ctr}".encode())
        assert fast.decrypt(b"meta", frame) == expected
        assert general.decrypt(b"meta", bytearray(frame)) == expected
        for receiver in (fast, general):  # the replay must be seen by whichever path runs
            with pytest.raises(ReplayError):
                receiver.decrypt(b"meta", frame)
    assert (
        fast.drops
        == general.drops
        == {"unknown_kid": 0, "auth_failed": 0, "replay": len(_CTRS), "malformed": 0}
    )


def test_fast_path_errors_are_the_general_path_errors() -> None:
    """Non-minimal, truncated and tampered headers for KID 7: same typed errors and drop counters."""
    sender, receiver = _pair()
    good = sender.encrypt(b"", b"x" * 20)
    with pytest.raises(SFrameHeaderError):
        receiver.decrypt(b"", bytes([0x78, 0x03]) + good[1:])  # CTR 3 in an extended byte (§4.3)
    with pytest.raises(SFrameHeaderError):
        receiver.decrypt(b"", bytes([0x79, 0x00, 0x09]) + bytes(16))  # leading zero byte
    with pytest.raises(SFrameHeaderError):
        receiver.decrypt(b"", bytes([0x7F, 0x01]))  # announces 9 bytes, has 2
    with pytest.raises(MalformedCiphertextError):
        receiver.decrypt(b"", bytes([0x7F]) + (1 << 63).to_bytes(8, "big") + bytes(15))
    with pytest.raises(AuthenticationError) as info:
        receiver.decrypt(b"other metadata", good)
    assert (info.value.kid, info.value.ctr) == (7, 0)
    assert receiver.decrypt(b"", good) == Decrypted(7, 0, b"x" * 20)  # the failure moved nothing
    assert dict(receiver.drops) == {"unknown_kid": 0, "auth_failed": 1, "replay": 0, "malformed": 4}


def test_fast_path_follows_key_changes() -> None:
    sender, receiver = _pair()
    receiver.decrypt(b"", sender.encrypt(b"", b"a"))
    receiver.remove_key(7)
    with pytest.raises(UnknownKidError):
        receiver.decrypt(b"", sender.encrypt(b"", b"b"))
    receiver.add_key(7, bytes(32), 4, epoch=1)  # another key for KID 7: the old frames fail
    with pytest.raises(AuthenticationError):
        receiver.decrypt(b"", sender.encrypt(b"", b"c"))
    receiver.add_key(7, KEY, 4, epoch=2)
    assert receiver.decrypt(b"", sender.encrypt(b"", b"d")).plaintext == b"d"
    receiver.retire_epoch(2)
    with pytest.raises(UnknownKidError):
        receiver.decrypt(b"", sender.encrypt(b"", b"e"))


def test_concurrent_decrypts_accept_each_frame_once() -> None:
    """Threads racing on the same frames: every CTR is accepted exactly once, the rest are replays."""
    sender, receiver = _pair(window=4096)
    frames = [sender.encrypt(b"", b"p") for _ in range(500)]
    accepted: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        for frame in frames:
            try:
                ctr = receiver.decrypt(b"", frame).ctr
            except ReplayError:
                continue
            with lock:
                accepted.append(ctr)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(accepted) == list(range(500))
    assert receiver.drops["replay"] == 3 * 500


@pytest.mark.parametrize("kid", [3, 300])
@pytest.mark.parametrize("start", [250, 65_530, (1 << 24) - 3, (1 << 56) - 3])
def test_sender_headers_stay_minimal_across_ctr_length_boundaries(
    tmp_path: Path, kid: int, start: int
) -> None:
    """The cached header span of the sender switches length exactly where §4.3 says, with a store too."""
    store = tmp_path / "ctr.json"
    atomic_write_json(store, {"format": 1, "high_water": {counter_key_id(4, KEY, kid): start}})
    stored = SenderContext(4, KEY, kid, counter_store=CounterStore(store))
    out = bytearray(64)
    for ctr in range(start, start + 12):
        frame = stored.encrypt(b"m", b"x") if ctr % 2 else bytes(out[: stored.encrypt_into(b"m", b"x", out)])
        assert frame[:-17] == encode_header(kid, ctr)  # decode_header is strict: minimal or an error
        assert sframe.decrypt(4, KEY, b"m", frame) == (kid, ctr, b"x")
    fresh = SenderContext(4, KEY, kid)
    for ctr in range(300):
        assert fresh.encrypt(b"", b"")[:-16] == encode_header(kid, ctr)


@pytest.mark.parametrize("suite", [1, 4, 5])
@pytest.mark.parametrize("size", [64 * 1024 - 1, 64 * 1024, 300_000])
def test_large_frames_sealed_in_place_are_the_stateless_ciphertext(suite: int, size: int) -> None:
    """Frames from 64 KiB on are encrypted straight into the result: same bytes as sframe.encrypt."""
    sender, receiver = _pair(suite)
    plaintext = os.urandom(size)
    for ctr in range(3):
        frame = sender.encrypt(b"meta", plaintext)
        assert type(frame) is bytes
        assert frame == sframe.encrypt(suite, KEY, 7, ctr, b"meta", plaintext)
        assert receiver.decrypt(b"meta", frame) == Decrypted(7, ctr, plaintext)


def test_large_frames_from_other_buffers() -> None:
    """A large bytearray encrypts as bytes would; a non-byte memoryview is a typed error, not another."""
    plaintext = os.urandom(128 * 1024)
    expected = sframe.encrypt(4, KEY, 7, 0, b"", plaintext)
    assert SenderContext(4, KEY, 7).encrypt(b"", bytearray(plaintext)) == expected  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError):
        SenderContext(4, KEY, 7).encrypt(b"", memoryview(plaintext).cast("I"))  # type: ignore[arg-type]
