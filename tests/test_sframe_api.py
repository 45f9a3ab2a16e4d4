"""The stateless conformance API: every typed error, tamper scenarios, and the robustness property."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.e2ee import sframe
from agent.e2ee.sframe import (
    AuthenticationError,
    InvalidParameterError,
    MalformedCiphertextError,
    SFrameError,
    SFrameHeaderError,
    UnsupportedCipherSuiteError,
)
from agent.e2ee.suites import SUITES, FrameKey, KeyUsage, get_suite
from agent.errors import AgentError

KEY = bytes(range(16))
SUITE_IDS = sorted(SUITES)


def test_errors_root_at_agent_error() -> None:
    assert issubclass(SFrameError, AgentError)
    assert issubclass(SFrameHeaderError, MalformedCiphertextError)


@pytest.mark.parametrize("suite", SUITE_IDS)
def test_round_trip_every_suite(suite: int) -> None:
    ct = sframe.encrypt(suite, KEY, 0x123, 0x4567, b"meta", b"frame")
    assert len(ct) == 5 + len(b"frame") + get_suite(suite).nt  # header 0x99 01 23 45 67 + ct + tag
    assert sframe.decrypt(suite, KEY, b"meta", ct) == (0x123, 0x4567, b"frame")


@pytest.mark.parametrize("suite", SUITE_IDS)
def test_empty_plaintext_is_just_header_and_tag(suite: int) -> None:
    ct = sframe.encrypt(suite, KEY, 1, 2, b"", b"")
    assert len(ct) == 1 + get_suite(suite).nt
    assert sframe.decrypt(suite, KEY, b"", ct) == (1, 2, b"")


@pytest.mark.parametrize("suite", SUITE_IDS)
@pytest.mark.parametrize("where", ["header", "ciphertext", "tag"])
def test_flipped_bit_fails_authentication(suite: int, where: str) -> None:
    """An on-path attacker flips one bit anywhere; §4.4.4 says discard, and the error says why."""
    ct = bytearray(sframe.encrypt(suite, KEY, 300, 70000, b"meta", b"some video frame"))
    index = {"header": 2, "ciphertext": 6, "tag": len(ct) - 1}[where]  # header is 0x9a 01 2c 01 11 70
    ct[index] ^= 0x01
    with pytest.raises(AuthenticationError):
        sframe.decrypt(suite, KEY, b"meta", bytes(ct))


@pytest.mark.parametrize("suite", SUITE_IDS)
def test_metadata_is_authenticated(suite: int) -> None:
    """The SFU may read metadata (§9.4) but changing it makes the frame fail authentication."""
    ct = sframe.encrypt(suite, KEY, 1, 1, b"layer=0", b"frame")
    with pytest.raises(AuthenticationError) as info:
        sframe.decrypt(suite, KEY, b"layer=1", ct)
    assert (info.value.kid, info.value.ctr) == (1, 1)


def test_wrong_key_fails_authentication() -> None:
    ct = sframe.encrypt(4, KEY, 1, 1, b"", b"frame")
    with pytest.raises(AuthenticationError):
        sframe.decrypt(4, bytes(16), b"", ct)


def test_suite_mismatch_fails() -> None:
    ct = sframe.encrypt(1, KEY, 1, 1, b"", b"frame" * 4)
    with pytest.raises(AuthenticationError):
        sframe.decrypt(2, KEY, b"", ct)


@pytest.mark.parametrize("suite", SUITE_IDS)
def test_ciphertext_shorter_than_tag_is_malformed(suite: int) -> None:
    nt = get_suite(suite).nt
    with pytest.raises(MalformedCiphertextError) as info:
        sframe.decrypt(suite, KEY, b"", b"\x11" + bytes(nt - 1))
    assert not isinstance(info.value, SFrameHeaderError)


@pytest.mark.parametrize("bad", [0, 6, 0xF000, -1, "4", None])
def test_unsupported_cipher_suite(bad: object) -> None:
    with pytest.raises(UnsupportedCipherSuiteError):
        sframe.encrypt(bad, KEY, 0, 0, b"", b"")  # type: ignore[arg-type]
    with pytest.raises(UnsupportedCipherSuiteError):
        sframe.decrypt(bad, KEY, b"", b"\x00" * 20)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"base_key": b"short"}, "base_key"),
        ({"base_key": "a string key of enough length"}, "base_key"),
        ({"kid": -1}, "kid"),
        ({"kid": 1 << 64}, "kid"),
        ({"ctr": 1 << 64}, "ctr"),
        ({"metadata": "text"}, "metadata"),
        ({"plaintext": 42}, "plaintext"),
    ],
)
def test_encrypt_rejects_bad_arguments(kwargs: dict[str, object], name: str) -> None:
    args: dict[str, object] = {"cipher_suite": 4, "base_key": KEY, "kid": 0, "ctr": 0}
    args |= {"metadata": b"", "plaintext": b""}
    args.update(kwargs)
    with pytest.raises(InvalidParameterError) as info:
        sframe.encrypt(**args)  # type: ignore[arg-type]
    assert info.value.name == name


def test_decrypt_rejects_non_bytes() -> None:
    with pytest.raises(InvalidParameterError):
        sframe.decrypt(4, KEY, b"", "not bytes")  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError):
        sframe.decrypt(4, KEY, None, b"\x00" * 20)  # type: ignore[arg-type]


def test_frame_key_usage_is_enforced() -> None:
    """§4.4.1: a key is marked encrypt-only or decrypt-only, never both."""
    suite = get_suite(4)
    enc = FrameKey.derive(suite, 1, KEY, KeyUsage.ENCRYPT)
    dec = FrameKey.derive(suite, 1, KEY, KeyUsage.DECRYPT)
    ct = enc.seal(0, b"\x10", b"", b"x")
    with pytest.raises(sframe.KeyUsageError):
        enc.open(0, b"\x10", b"", memoryview(ct[1:]))
    with pytest.raises(sframe.KeyUsageError):
        dec.seal(1, b"\x11", b"", b"x")
    assert dec.open(0, b"\x10", b"", memoryview(ct[1:])) == b"x"


@settings(max_examples=300, deadline=None)
@given(suite=st.sampled_from(SUITE_IDS), data=st.binary(max_size=64), metadata=st.binary(max_size=8))
def test_any_bytes_give_plaintext_or_sframe_error(suite: int, data: bytes, metadata: bytes) -> None:
    """Robustness: arbitrary input never raises anything but SFrameError."""
    with contextlib.suppress(SFrameError):
        sframe.decrypt(suite, KEY, metadata, data)


@settings(max_examples=200, deadline=None)
@given(
    suite=st.sampled_from(SUITE_IDS),
    kid=st.integers(0, (1 << 64) - 1),
    ctr=st.integers(0, (1 << 64) - 1),
    metadata=st.binary(max_size=16),
    plaintext=st.binary(max_size=300),
    flip=st.integers(0, 10_000),
)
def test_round_trip_and_single_bit_flips(
    suite: int, kid: int, ctr: int, metadata: bytes, plaintext: bytes, flip: int
) -> None:
    ct = sframe.encrypt(suite, KEY, kid, ctr, metadata, plaintext)
    assert sframe.decrypt(suite, KEY, metadata, ct) == (kid, ctr, plaintext)
    tampered = bytearray(ct)
    tampered[flip % len(ct)] ^= 1 << (flip % 8)
    with pytest.raises(SFrameError):  # header, ciphertext or tag: all are authenticated
        sframe.decrypt(suite, KEY, metadata, bytes(tampered))


def test_random_keys_never_decrypt_each_others_frames() -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    ct = sframe.encrypt(5, k1, 9, 9, b"", b"frame")
    with pytest.raises(AuthenticationError):
        sframe.decrypt(5, k2, b"", ct)


def test_oversized_frames_are_refused_before_the_aead() -> None:
    """cryptography's AEADs panic (a BaseException) on 2 GiB bodies; the 64 MiB cap stops far earlier.

    The buffer is an untouched anonymous mapping: only the header page is ever read.
    """
    import mmap

    from agent.e2ee.context import ReceiverContext, SenderContext
    from agent.e2ee.suites import MAX_FRAME_BYTES

    with mmap.mmap(-1, MAX_FRAME_BYTES + 64) as big:
        view = memoryview(big)
        try:
            for suite in (1, 4):
                with pytest.raises(MalformedCiphertextError):
                    sframe.decrypt(suite, KEY, b"", view)
                receiver = ReceiverContext()
                receiver.add_key(0, KEY, suite)  # the all-zero header is KID 0, CTR 0
                with pytest.raises(MalformedCiphertextError):
                    receiver.decrypt(b"", view)
                assert receiver.drops["malformed"] == 1
                with pytest.raises(InvalidParameterError):
                    sframe.encrypt(suite, KEY, 0, 0, b"", view)
                with pytest.raises(InvalidParameterError):
                    SenderContext(suite, KEY, 0).encrypt(b"", view)  # type: ignore[arg-type]
        finally:
            view.release()
