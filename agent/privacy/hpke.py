"""Device HPKE identity and the sealing of SFrame base keys to recipient devices (RFC 9180).

Every device holds two HPKE key pairs, generated on first start and never exported:

- ``x25519``: DHKEM(X25519, HKDF-SHA256) (RFC 9180 §7.1, KEM 0x0020);
- ``mlkem768-x25519``: the ML-KEM-768 + X25519 hybrid KEM (``cryptography``'s ``KEM.MLKEM768_X25519``),
  which stays confidential if either component holds, so recorded meetings' key packages survive a
  future quantum attack on X25519.

Both use HKDF-SHA256 and AES-256-GCM. A key package entry is HPKE base mode (RFC 9180 §5.1.1) with the
single-shot API (§6.1): the sealed bytes are ``enc || ciphertext``. The ``info`` string binds the
meeting id, epoch, cipher suite, sender device, KID and recipient device, so a sealed key lifted into
another meeting, epoch, sender slot or recipient fails to open (RFC 9180 §8.1 "info ... should
include ... application context").

Public keys are exported raw and base64 encoded: X25519's 32 bytes; the hybrid's ML-KEM-768
encapsulation key (1184 bytes) followed by its X25519 key (32 bytes).
"""

from __future__ import annotations

__all__ = [
    "KEM_NAMES",
    "KEM_RANK",
    "HpkeIdentity",
    "KemName",
    "SealBinding",
    "kem_at_least",
    "parse_public_key",
    "seal_base_key",
    "seal_to",
]

import base64
import binascii
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from agent.persist import atomic_write_json, read_json
from agent.privacy.errors import IdentityError, KeyDeliveryError

KemName = Literal["x25519", "mlkem768-x25519"]
KEM_NAMES: tuple[KemName, ...] = get_args(KemName)
KEM_RANK: dict[str, int] = {"x25519": 0, "mlkem768-x25519": 1}
"""Strength order of the key-delivery KEMs; the policy's ``e2ee.kem`` is the minimum accepted."""

_MLKEM768_PUBLIC_LEN = 1184
_X25519_LEN = 32
_FILE_FORMAT = 1
_INFO_LABEL = b"roomagent/v1 sframe-base-key"

_SUITES: dict[str, hpke.Suite] = {
    "x25519": hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
    "mlkem768-x25519": hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
}

_PublicKey = x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey


def kem_at_least(kem: str, minimum: str) -> bool:
    """True when ``kem`` is as strong as ``minimum`` (both known KEM names)."""
    return kem in KEM_RANK and KEM_RANK[kem] >= KEM_RANK[minimum]


@dataclass(frozen=True, slots=True, kw_only=True)
class SealBinding:
    """The context one sealed base key belongs to; it becomes the HPKE ``info``."""

    meeting: str
    epoch: int
    suite: int
    sender: str
    kid: int
    recipient: str

    def info(self) -> bytes:
        # Canonical JSON is unambiguous (no concatenation ambiguity between fields).
        fields = {
            "epoch": self.epoch,
            "kid": self.kid,
            "meeting": self.meeting,
            "recipient": self.recipient,
            "sender": self.sender,
            "suite": self.suite,
        }
        return _INFO_LABEL + b"\x00" + json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def _b64decode(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise KeyDeliveryError("invalid_body", f"{what} is not base64") from exc


def parse_public_key(kem: str, value: str) -> _PublicKey:
    """Decode a base64 public key as exported by :meth:`HpkeIdentity.public_keys`.

    Raises:
        KeyDeliveryError: unknown KEM, not base64, or not a valid key of that KEM.
    """
    raw = _b64decode(value, f"{kem} public key")
    try:
        if kem == "x25519":
            if len(raw) != _X25519_LEN:
                raise ValueError("X25519 public keys are 32 bytes")
            return x25519.X25519PublicKey.from_public_bytes(raw)
        if kem == "mlkem768-x25519":
            if len(raw) != _MLKEM768_PUBLIC_LEN + _X25519_LEN:
                raise ValueError("hybrid public keys are 1216 bytes")
            return hpke.MLKEM768X25519PublicKey(
                mlkem.MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM768_PUBLIC_LEN]),
                x25519.X25519PublicKey.from_public_bytes(raw[_MLKEM768_PUBLIC_LEN:]),
            )
    except ValueError as exc:
        raise KeyDeliveryError("invalid_body", f"bad {kem} public key: {exc}") from exc
    raise KeyDeliveryError("invalid_body", f"unknown KEM {kem!r}")


def seal_base_key(kem: str, recipient_public: str, base_key: bytes, binding: SealBinding) -> bytes:
    """Seal ``base_key`` to a recipient's public key (RFC 9180 §6.1 single-shot, base mode).

    Returns ``enc || ciphertext``.

    Raises:
        KeyDeliveryError: the recipient's public key is unusable.
    """
    public = parse_public_key(kem, recipient_public)
    return _SUITES[kem].encrypt(base_key, public, info=binding.info())


def seal_to(kem: str, recipient_public: str, plaintext: bytes, info: bytes) -> bytes:
    """Seal ``plaintext`` to a base64 public key of ``kem`` (RFC 9180 §6.1 single-shot, base mode).

    Returns ``enc || ciphertext``; ``info`` binds the application context (RFC 9180 §8.1).

    Raises:
        KeyDeliveryError: unknown KEM or an unusable public key (``invalid_body``).
    """
    public = parse_public_key(kem, recipient_public)
    return _SUITES[kem].encrypt(plaintext, public, info=info)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class HpkeIdentity:
    """This device's HPKE private keys. Never printed, logged or exported; only public keys leave."""

    __slots__ = ("_hybrid", "_x25519")

    def __init__(
        self, x25519_key: x25519.X25519PrivateKey, hybrid: tuple[bytes, x25519.X25519PrivateKey]
    ) -> None:
        self._x25519 = x25519_key
        # (ML-KEM-768 seed, X25519 key): the hybrid has its own X25519 key, never shared with the
        # plain X25519 KEM, so no key is used by two KEMs.
        self._hybrid = hybrid

    def __repr__(self) -> str:
        return "HpkeIdentity(<private>)"

    @classmethod
    def generate(cls) -> HpkeIdentity:
        seed = os.urandom(64)
        return cls(x25519.X25519PrivateKey.generate(), (seed, x25519.X25519PrivateKey.generate()))

    @classmethod
    def load_or_create(cls, path: Path) -> HpkeIdentity:
        """Load the identity from ``path``, or generate and persist it (mode 0600) on first start.

        Raises:
            IdentityError: the file exists but is unreadable or malformed, or cannot be written.
        """
        log = structlog.get_logger()
        path = Path(path)
        try:
            data = read_json(path)
        except Exception as exc:  # StateError: keep the original as cause
            raise IdentityError("identity_unreadable", f"{path}: {exc}") from exc
        if data is None:
            identity = cls.generate()
            try:
                atomic_write_json(path, identity._to_json(), mode=0o600)
            except Exception as exc:
                raise IdentityError("identity_unwritable", f"{path}: {exc}") from exc
            log.info("hpke_identity_created", path=str(path))
            return identity
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            # Someone loosened the file: tighten it rather than run with readable private keys.
            os.chmod(path, 0o600)
            log.warning("hpke_identity_mode_tightened", path=str(path), was=oct(mode))
        return cls._from_json(data, path)

    def save(self, path: Path) -> None:
        """Write the private keys to ``path`` (mode 0600, atomically; e.g. ``roomctl hpke-keygen``).

        Raises:
            IdentityError: the file cannot be written.
        """
        try:
            atomic_write_json(Path(path), self._to_json(), mode=0o600)
        except Exception as exc:
            raise IdentityError("identity_unwritable", f"{path}: {exc}") from exc

    def _to_json(self) -> dict[str, Any]:
        seed, hx = self._hybrid
        return {
            "format": _FILE_FORMAT,
            "x25519": _b64(self._x25519.private_bytes_raw()),
            "mlkem768-x25519": {"mlkem768_seed": _b64(seed), "x25519": _b64(hx.private_bytes_raw())},
        }

    @classmethod
    def _from_json(cls, data: Any, path: Path) -> HpkeIdentity:
        try:
            if not isinstance(data, dict) or data.get("format") != _FILE_FORMAT:
                raise ValueError("unknown format")
            hybrid = cast(dict[str, str], data["mlkem768-x25519"])
            x = x25519.X25519PrivateKey.from_private_bytes(base64.b64decode(data["x25519"], validate=True))
            seed = base64.b64decode(hybrid["mlkem768_seed"], validate=True)
            if len(seed) != 64:
                raise ValueError("ML-KEM-768 seed must be 64 bytes")
            hx = x25519.X25519PrivateKey.from_private_bytes(base64.b64decode(hybrid["x25519"], validate=True))
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise IdentityError("identity_malformed", f"{path}: {exc}") from exc
        return cls(x, (seed, hx))

    def _hybrid_private(self) -> hpke.MLKEM768X25519PrivateKey:
        seed, hx = self._hybrid
        return hpke.MLKEM768X25519PrivateKey(mlkem.MLKEM768PrivateKey.from_seed_bytes(seed), hx)

    def public_keys(self) -> dict[str, str]:
        """Base64 public keys by KEM name, for the retained state (``identity.hpke``)."""
        seed, hx = self._hybrid
        mlkem_pub = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed).public_key().public_bytes_raw()
        return {
            "x25519": _b64(self._x25519.public_key().public_bytes_raw()),
            "mlkem768-x25519": _b64(mlkem_pub + hx.public_key().public_bytes_raw()),
        }

    def open_sealed(self, kem: str, sealed: bytes, info: bytes) -> bytes:
        """Open bytes sealed to this key pair with :func:`seal_to` (RFC 9180 §6.1 single-shot open).

        Raises:
            KeyDeliveryError: ``bad_seal`` (wrong recipient or info, tampered), ``invalid_body`` (KEM).
        """
        if kem == "x25519":
            private: x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey = self._x25519
        elif kem == "mlkem768-x25519":
            private = self._hybrid_private()
        else:
            raise KeyDeliveryError("invalid_body", f"unknown KEM {kem!r}")
        try:
            return _SUITES[kem].decrypt(sealed, private, info=info)
        except (InvalidTag, ValueError) as exc:
            raise KeyDeliveryError("bad_seal", "sealed data does not open with this key") from exc

    def open_base_key(self, kem: str, sealed: bytes, binding: SealBinding) -> bytes:
        """Open one sealed base key addressed to this device (RFC 9180 §6.1 single-shot open).

        Raises:
            KeyDeliveryError: ``bad_seal`` when it does not open (wrong recipient, wrong binding,
                tampered bytes), ``invalid_body`` for an unknown KEM.
        """
        if kem == "x25519":
            private: x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey = self._x25519
        elif kem == "mlkem768-x25519":
            private = self._hybrid_private()
        else:
            raise KeyDeliveryError("invalid_body", f"unknown KEM {kem!r}")
        try:
            return _SUITES[kem].decrypt(sealed, private, info=binding.info())
        except (InvalidTag, ValueError) as exc:
            raise KeyDeliveryError(
                "bad_seal", f"key for sender {binding.sender} kid {binding.kid} does not open"
            ) from exc
