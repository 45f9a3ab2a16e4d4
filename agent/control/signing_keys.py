"""Public keys as securesystemslib/TUF key dicts, signing and verification with ``cryptography``.

Key dict: ``{"keytype", "scheme", "keyval": {"public"}}``. Ed25519 (``ed25519``/``ed25519``, public
key as hex of the 32 raw bytes) is required; ECDSA P-256 (``ecdsa``/``ecdsa-sha2-nistp256``, public
key as PEM SubjectPublicKeyInfo, DER signatures) is supported. The key id is the hex sha256 of the
key dict in TUF's canonical JSON (sorted keys, no whitespace), exactly as securesystemslib computes it.
"""

from __future__ import annotations

__all__ = [
    "ECDSA_P256",
    "ED25519",
    "PrivateKey",
    "PublicKey",
    "canonical_json",
    "key_dict",
    "keyid_of",
    "load_private_key",
    "parse_public_key",
    "private_key_pem",
    "public_key_of",
    "sign",
]

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from agent.control.errors import KeyFileError

ED25519 = ("ed25519", "ed25519")
ECDSA_P256 = ("ecdsa", "ecdsa-sha2-nistp256")

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def canonical_json(value: Any) -> bytes:
    """TUF/OLPC canonical JSON (securesystemslib ``encode_canonical``): sorted keys, no whitespace,
    strings escape only backslash and double quote (a PEM's newlines stay raw bytes)."""
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if value is None:
        return b"null"
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, str):
        return b'"' + value.replace("\\", "\\\\").replace('"', '\\"').encode() + b'"'
    if isinstance(value, list | tuple):
        return b"[" + b",".join(canonical_json(v) for v in value) + b"]"
    if isinstance(value, dict):
        items = sorted(value.items())
        return b"{" + b",".join(canonical_json(k) + b":" + canonical_json(v) for k, v in items) + b"}"
    raise TypeError(f"canonical JSON has no {type(value).__name__}")


def keyid_of(key: dict[str, Any]) -> str:
    """TUF key id: sha256 over ``{"keytype", "scheme", "keyval"}`` in canonical JSON."""
    core = {"keytype": key["keytype"], "scheme": key["scheme"], "keyval": key["keyval"]}
    return hashlib.sha256(canonical_json(core)).hexdigest()


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A parsed public key that can check signatures; ``verify`` never raises on a bad signature."""

    keyid: str
    keytype: str
    scheme: str
    public: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            if isinstance(self.public, ed25519.Ed25519PublicKey):
                self.public.verify(signature, data)
            else:
                self.public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True

    def to_dict(self) -> dict[str, Any]:
        return key_dict(self.public)

    @property
    def identity(self) -> bytes:
        """The key itself (raw Ed25519 bytes / DER SubjectPublicKeyInfo), whatever its key dict's
        spelling: two key ids whose dicts differ only in hex case or PEM layout name one key."""
        if isinstance(self.public, ed25519.Ed25519PublicKey):
            return self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return self.public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def parse_public_key(key: Any) -> PublicKey:
    """Parse one TUF key dict.

    Raises:
        ValueError: unsupported type/scheme or an unreadable public key.
    """
    if not isinstance(key, dict) or not isinstance(key.get("keyval"), dict):
        raise ValueError("a key is an object with keytype, scheme and keyval.public")
    keytype, scheme, public = key.get("keytype"), key.get("scheme"), key["keyval"].get("public")
    if not isinstance(public, str):
        raise ValueError("keyval.public must be a string")
    if (keytype, scheme) == ED25519:
        try:
            raw = bytes.fromhex(public)
            pub: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey = (
                ed25519.Ed25519PublicKey.from_public_bytes(raw)
            )
        except ValueError as exc:
            raise ValueError("ed25519 keyval.public must be 64 hex digits") from exc
    elif (keytype, scheme) == ECDSA_P256:
        try:
            loaded = serialization.load_pem_public_key(public.encode())
        except ValueError as exc:
            raise ValueError("ecdsa keyval.public must be a PEM public key") from exc
        if not isinstance(loaded, ec.EllipticCurvePublicKey) or loaded.curve.name != "secp256r1":
            raise ValueError("ecdsa-sha2-nistp256 needs a P-256 public key")
        pub = loaded
    else:
        raise ValueError(
            f"unsupported key type/scheme {keytype}/{scheme}; use ed25519 or ecdsa-sha2-nistp256"
        )
    return PublicKey(keyid_of(key), str(keytype), str(scheme), pub)


def key_dict(public: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey) -> dict[str, Any]:
    """The TUF key dict of a ``cryptography`` public key (same as securesystemslib's ``SSlibKey``)."""
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"keytype": ED25519[0], "scheme": ED25519[1], "keyval": {"public": raw.hex()}}
    if public.curve.name != "secp256r1":
        raise ValueError("only P-256 ECDSA keys are supported")
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return {"keytype": ECDSA_P256[0], "scheme": ECDSA_P256[1], "keyval": {"public": pem.decode()}}


def public_key_of(private: PrivateKey) -> PublicKey:
    return parse_public_key(key_dict(private.public_key()))


def sign(private: PrivateKey, data: bytes) -> bytes:
    """Ed25519 signature, or DER ECDSA-SHA256 signature, over ``data``."""
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return private.sign(data)
    return private.sign(data, ec.ECDSA(hashes.SHA256()))


def load_private_key(path: Path, passphrase: bytes | None = None) -> PrivateKey:
    """Load a PKCS#8 PEM private key (Ed25519 or ECDSA P-256), optionally passphrase-encrypted.

    Raises:
        KeyFileError: unreadable, wrong passphrase, or unsupported key type.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(str(path), exc.strerror or str(exc)) from exc
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as exc:
        raise KeyFileError(
            str(path),
            "key is encrypted: give its passphrase"
            if passphrase is None
            else "key is not encrypted: drop the passphrase",
        ) from exc
    except ValueError as exc:
        raise KeyFileError(str(path), "not a PEM private key, or wrong passphrase") from exc
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1":
        return key
    raise KeyFileError(str(path), "unsupported key type: use Ed25519 or ECDSA P-256")


def private_key_pem(private: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM, encrypted with ``passphrase`` when given (best available encryption)."""
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
