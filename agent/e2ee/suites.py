"""RFC 9605 cipher suites (§4.5, §8.1), key derivation (§4.4.2) and the per-key AEAD (§4.4.3, §4.5.1).

A :class:`FrameKey` is everything derived from one (base_key, KID, cipher suite): the sframe_key and
sframe_salt, and the cipher objects built from them once, so that encrypting a frame costs one nonce
computation and one AEAD call. Each ``FrameKey`` is marked for encryption or for decryption, never both
(§4.4.1). It never stores the base key and never logs key bytes.
"""

from __future__ import annotations

__all__ = [
    "MAX_FRAME_BYTES",
    "SUITES",
    "CipherSuite",
    "FrameKey",
    "KeyUsage",
    "derive_key_salt",
    "get_suite",
    "hkdf_expand",
    "hkdf_extract",
]

import enum
import hashlib
import hmac
import threading
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agent.e2ee.errors import (
    AuthenticationError,
    InvalidParameterError,
    KeyUsageError,
    MalformedCiphertextError,
    UnsupportedCipherSuiteError,
)

MIN_BASE_KEY_LENGTH = 16
"""Shortest base_key accepted: 128 bits, the smallest AES key of any suite."""

MAX_FRAME_BYTES = 1 << 26
"""Largest plaintext or ciphertext body accepted (64 MiB; a 4K key frame is a few MB). A hard cap
checked before any AEAD call: cryptography's AEADs fail on bodies of 2^31 bytes or more (with a
Rust panic, not an exception), and no media frame comes near it."""


class KeyUsage(enum.Enum):
    """What a base_key may be used for (RFC 9605 §4.4.1: "for encryption or decryption, never both")."""

    ENCRYPT = "encrypt"
    DECRYPT = "decrypt"


@dataclass(frozen=True, slots=True)
class CipherSuite:
    """One row of RFC 9605 Table 1 (§4.5); ``nka`` is 0 for the AES-GCM suites."""

    value: int
    name: str
    hash_name: str
    nh: int
    nka: int
    nk: int
    nn: int
    nt: int

    @property
    def is_gcm(self) -> bool:
        return self.nka == 0


# RFC 9605 §4.5 Table 1 / §8.1 Table 2.
SUITES: dict[int, CipherSuite] = {
    s.value: s
    for s in (
        CipherSuite(0x0001, "AES_128_CTR_HMAC_SHA256_80", "sha256", 32, 16, 48, 12, 10),
        CipherSuite(0x0002, "AES_128_CTR_HMAC_SHA256_64", "sha256", 32, 16, 48, 12, 8),
        CipherSuite(0x0003, "AES_128_CTR_HMAC_SHA256_32", "sha256", 32, 16, 48, 12, 4),
        CipherSuite(0x0004, "AES_128_GCM_SHA256_128", "sha256", 32, 0, 16, 12, 16),
        CipherSuite(0x0005, "AES_256_GCM_SHA512_128", "sha512", 64, 0, 32, 12, 16),
    )
}


def get_suite(cipher_suite: int) -> CipherSuite:
    """Look up an RFC 9605 cipher suite; raise :class:`UnsupportedCipherSuiteError` otherwise."""
    suite = SUITES.get(cipher_suite) if type(cipher_suite) is int else None
    if suite is None:
        raise UnsupportedCipherSuiteError(cipher_suite)
    return suite


def hkdf_extract(hash_name: str, salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract (RFC 5869 §2.2)."""
    return hmac.digest(salt, ikm, hash_name)


def hkdf_expand(hash_name: str, prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand (RFC 5869 §2.3)."""
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes((counter,)), hash_name)
        out += block
        counter += 1
    return out[:length]


def check_base_key(base_key: object) -> bytes:
    """Return ``base_key`` as bytes, or raise :class:`InvalidParameterError`."""
    if not isinstance(base_key, bytes | bytearray | memoryview):
        raise InvalidParameterError("base_key", f"must be bytes, got {type(base_key).__name__}")
    key = bytes(base_key)
    if len(key) < MIN_BASE_KEY_LENGTH:
        raise InvalidParameterError(
            "base_key", f"must be at least {MIN_BASE_KEY_LENGTH} bytes, got {len(key)}"
        )
    return key


def derive_key_salt(suite: CipherSuite, kid: int, base_key: bytes) -> tuple[bytes, bytes]:
    """RFC 9605 §4.4.2 ``derive_key_salt``: (sframe_key, sframe_salt) for one KID.

    KID is encoded as 8 bytes and the cipher suite as 2 bytes, both big-endian (§4.4.2), and the
    hash of HKDF is the suite's (SHA-256 for 1-4, SHA-512 for 5).
    """
    sframe_secret = hkdf_extract(suite.hash_name, b"", base_key)
    suffix = kid.to_bytes(8, "big") + suite.value.to_bytes(2, "big")
    sframe_key = hkdf_expand(suite.hash_name, sframe_secret, b"SFrame 1.0 Secret key " + suffix, suite.nk)
    sframe_salt = hkdf_expand(suite.hash_name, sframe_secret, b"SFrame 1.0 Secret salt " + suffix, suite.nn)
    return sframe_key, sframe_salt


class FrameKey:
    """The derived key, salt and cipher objects of one (base_key, KID, cipher suite).

    ``seal``/``open`` are the AEAD of the suite with the SFrame nonce (§4.4.3) and AAD = header +
    metadata. A ``FrameKey`` may be shared between threads.
    """

    __slots__ = (
        "_ctr_ctx",
        "_gcm",
        "_hmac",
        "_lock",
        "_salt",
        "_usage_check",
        "kid",
        "nt",
        "suite",
        "usage",
    )

    def __init__(
        self, suite: CipherSuite, kid: int, sframe_key: bytes, sframe_salt: bytes, usage: KeyUsage
    ) -> None:
        if len(sframe_key) != suite.nk or len(sframe_salt) != suite.nn:
            raise InvalidParameterError(
                "sframe_key", f"{suite.name} needs Nk={suite.nk} and Nn={suite.nn} bytes"
            )
        self.suite = suite
        self.kid = kid
        self.nt = suite.nt
        self.usage = usage
        self._salt = int.from_bytes(sframe_salt, "big")
        self._lock = threading.Lock()
        if suite.is_gcm:
            self._gcm: AESGCM | None = AESGCM(sframe_key)
            self._ctr_ctx = None
            self._hmac = None
        else:
            # §4.5.1 derive_subkeys: enc_key = first Nka bytes, auth_key = the remaining Nh bytes.
            enc_key, auth_key = sframe_key[: suite.nka], sframe_key[suite.nka :]
            self._gcm = None
            # One CTR context, re-keyed with reset_nonce per frame (the AES key schedule runs once).
            self._ctr_ctx = Cipher(algorithms.AES(enc_key), modes.CTR(bytes(16))).encryptor()
            # The keyed HMAC state is copied per frame instead of re-keying it.
            self._hmac = hmac.new(auth_key, digestmod=getattr(hashlib, suite.hash_name))

    @classmethod
    def derive(cls, suite: CipherSuite, kid: int, base_key: bytes, usage: KeyUsage) -> FrameKey:
        """Derive the frame key of ``kid`` from ``base_key`` (§4.4.2)."""
        sframe_key, sframe_salt = derive_key_salt(suite, kid, base_key)
        return cls(suite, kid, sframe_key, sframe_salt, usage)

    @property
    def gcm(self) -> AESGCM | None:
        """The AES-GCM object of a GCM suite (``None`` for CTR-HMAC), for inlined hot paths."""
        return self._gcm

    @property
    def salt(self) -> int:
        """sframe_salt as an integer (nonce = salt XOR CTR, §4.4.3), for inlined hot paths."""
        return self._salt

    def nonce(self, ctr: int) -> bytes:
        """§4.4.3: the nonce is sframe_salt XOR CTR, as an Nn-byte big-endian string."""
        return (self._salt ^ ctr).to_bytes(12, "big")

    def _tag(self, nonce: bytes, aad: bytes, ct: bytes | memoryview) -> bytes:
        # §4.5.1 compute_tag: HMAC(auth_key, len(aad) | len(ct) | Nt | nonce | aad | ct)[:Nt],
        # lengths as 8-byte big-endian integers.
        assert self._hmac is not None
        mac = self._hmac.copy()
        mac.update((len(aad) << 128 | len(ct) << 64 | self.nt).to_bytes(24, "big") + nonce + aad)
        mac.update(ct)
        return mac.digest()[: self.nt]

    def _ctr(self, nonce: bytes, data: bytes | bytearray | memoryview) -> bytes:
        # §4.5.1: AES-CTR with initial_counter = nonce + four zero bytes.
        assert self._ctr_ctx is not None
        with self._lock:
            self._ctr_ctx.reset_nonce(nonce + b"\x00\x00\x00\x00")
            return self._ctr_ctx.update(data)

    def seal(
        self, ctr: int, header: bytes, metadata: bytes, plaintext: bytes | bytearray | memoryview
    ) -> bytes:
        """Return ``header + AEAD.Encrypt(sframe_key, nonce, header + metadata, plaintext)`` (§4.4.3)."""
        if self.usage is not KeyUsage.ENCRYPT:
            raise KeyUsageError(self.kid, self.usage.value, "encrypt")
        if len(plaintext) > MAX_FRAME_BYTES:
            raise InvalidParameterError("plaintext", f"{len(plaintext)} bytes, the cap is {MAX_FRAME_BYTES}")
        nonce = (self._salt ^ ctr).to_bytes(12, "big")
        aad = header + metadata if metadata else header
        if self._gcm is not None:
            return header + self._gcm.encrypt(nonce, plaintext, aad)
        # §4.5.1 AEAD.Encrypt: encrypt-then-MAC, output ct + tag.
        ct = self._ctr(nonce, plaintext)
        return b"".join((header, ct, self._tag(nonce, aad, ct)))

    def open(self, ctr: int, header: bytes, metadata: bytes, ciphertext: memoryview) -> bytes:
        """Return the plaintext of ``ciphertext`` (AEAD ciphertext with tag, header removed) (§4.4.4).

        Raises:
            KeyUsageError: this key is encrypt-only.
            MalformedCiphertextError: shorter than the tag.
            AuthenticationError: the tag does not verify.
        """
        if self.usage is not KeyUsage.DECRYPT:
            raise KeyUsageError(self.kid, self.usage.value, "decrypt")
        if len(ciphertext) > MAX_FRAME_BYTES + self.nt:
            raise MalformedCiphertextError(
                f"{len(ciphertext)} bytes, the cap is {MAX_FRAME_BYTES} plus the tag", length=len(ciphertext)
            )
        if len(ciphertext) < self.nt:
            raise MalformedCiphertextError(
                f"{len(ciphertext)} bytes after the header, the tag alone is {self.nt}",
                length=len(header) + len(ciphertext),
            )
        nonce = (self._salt ^ ctr).to_bytes(12, "big")
        aad = header + metadata if metadata else header
        if self._gcm is not None:
            try:
                return self._gcm.decrypt(nonce, ciphertext, aad)
            except InvalidTag:
                raise AuthenticationError(self.kid, ctr) from None
        # §4.5.1 AEAD.Decrypt: verify the tag in constant time first, then decrypt.
        split = len(ciphertext) - self.nt
        inner = ciphertext[:split]
        if not hmac.compare_digest(self._tag(nonce, aad, inner), ciphertext[split:]):
            raise AuthenticationError(self.kid, ctr)
        return self._ctr(nonce, inner)
