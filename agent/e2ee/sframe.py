"""Stateless SFrame (RFC 9605) encrypt and decrypt: the stable conformance API.

``encrypt`` and ``decrypt`` are pure functions (bytes in, bytes or a typed :class:`SFrameError` out)
that derive the key for each call; outside conformance checks call them with the published vectors.
The media pipeline uses the stateful contexts of :mod:`agent.e2ee.context` instead, which derive each
key once and enforce CTR uniqueness and anti-replay.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "CounterExhaustedError",
    "CounterStoreError",
    "InvalidParameterError",
    "KeyUsageError",
    "MalformedCiphertextError",
    "ReplayError",
    "SFrameError",
    "SFrameHeaderError",
    "UnknownKidError",
    "UnsupportedCipherSuiteError",
    "decrypt",
    "encrypt",
]

from agent.e2ee.errors import (
    AuthenticationError,
    CounterExhaustedError,
    CounterStoreError,
    InvalidParameterError,
    KeyUsageError,
    MalformedCiphertextError,
    ReplayError,
    SFrameError,
    SFrameHeaderError,
    UnknownKidError,
    UnsupportedCipherSuiteError,
)
from agent.e2ee.header import decode_header, encode_header
from agent.e2ee.suites import FrameKey, KeyUsage, check_base_key, get_suite


def _check_bytes(name: str, value: object) -> bytes | bytearray | memoryview:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise InvalidParameterError(name, f"must be bytes, got {type(value).__name__}")
    return value


def encrypt(
    cipher_suite: int, base_key: bytes, kid: int, ctr: int, metadata: bytes, plaintext: bytes
) -> bytes:
    """Encrypt one frame (RFC 9605 §4.4.3) and return the SFrame ciphertext, header included.

    The caller guarantees that (base_key, KID, CTR) is never used twice (§9.1);
    :class:`agent.e2ee.context.SenderContext` does that for you.

    Raises:
        SFrameError: a subclass naming what is wrong (unsupported suite, KID/CTR out of range,
            short key, non-bytes input); never any other exception.
    """
    suite = get_suite(cipher_suite)
    key = check_base_key(base_key)
    header = encode_header(kid, ctr)
    meta = bytes(_check_bytes("metadata", metadata))
    pt = _check_bytes("plaintext", plaintext)
    return FrameKey.derive(suite, kid, key, KeyUsage.ENCRYPT).seal(ctr, header, meta, pt)


def decrypt(cipher_suite: int, base_key: bytes, metadata: bytes, ciphertext: bytes) -> tuple[int, int, bytes]:
    """Decrypt one SFrame ciphertext (RFC 9605 §4.4.4) with ``base_key`` for whatever KID it names.

    Returns:
        ``(kid, ctr, plaintext)``.

    Raises:
        SFrameError: :class:`SFrameHeaderError` / :class:`MalformedCiphertextError` for input that
            cannot be parsed, :class:`AuthenticationError` when the tag does not verify, and
            :class:`InvalidParameterError` for bad arguments; never any other exception.
    """
    suite = get_suite(cipher_suite)
    key = check_base_key(base_key)
    meta = bytes(_check_bytes("metadata", metadata))
    view = memoryview(_check_bytes("ciphertext", ciphertext)).cast("B")
    kid, ctr, hlen = decode_header(view)
    if len(view) - hlen < suite.nt:
        raise MalformedCiphertextError(
            f"{len(view) - hlen} bytes after the header, the tag alone is {suite.nt}", length=len(view)
        )
    frame_key = FrameKey.derive(suite, kid, key, KeyUsage.DECRYPT)
    return kid, ctr, frame_key.open(ctr, bytes(view[:hlen]), meta, view[hlen:])
