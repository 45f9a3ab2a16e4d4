"""The device's Ed25519 identity key: signs acks and audit heads.

Generated on first start into ``<state>/identity/ed25519.pem`` (PKCS#8, mode 0600, directory 0700),
written atomically, never logged and never exported; only the public key dict leaves the device.
"""

from __future__ import annotations

__all__ = ["DeviceIdentity"]

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.control.dsse import Envelope
from agent.control.errors import KeyFileError
from agent.control.signing_keys import key_dict, keyid_of
from agent.persist import atomic_write_bytes


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    _private: ed25519.Ed25519PrivateKey
    public_dict: dict[str, Any]
    keyid: str

    @classmethod
    def load_or_create(cls, state_dir: Path) -> DeviceIdentity:
        """Load the identity key, creating it on first start.

        Raises:
            KeyFileError: the key file exists but is not an Ed25519 PKCS#8 key.
            StateError: it cannot be written.
        """
        directory = Path(state_dir) / "identity"
        path = directory / "ed25519.pem"
        if path.exists():
            try:
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except (OSError, ValueError, TypeError) as exc:
                raise KeyFileError(str(path), "unreadable identity key") from exc
            if not isinstance(key, ed25519.Ed25519PrivateKey):
                raise KeyFileError(str(path), "identity key is not Ed25519")
        else:
            directory.mkdir(parents=True, exist_ok=True)
            os.chmod(directory, 0o700)
            key = ed25519.Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            atomic_write_bytes(path, pem, mode=0o600)
        public = key_dict(key.public_key())
        return cls(key, public, keyid_of(public))

    def sign_envelope(self, kind: str, payload: dict[str, Any]) -> Envelope:
        """A DSSE envelope of ``payload`` (compact sorted JSON) signed by this device."""
        data = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return Envelope(f"application/vnd.roomagent.{kind}+json", data, ()).signed_by(self._private)

    def __repr__(self) -> str:  # never show the private key
        return f"DeviceIdentity(keyid={self.keyid[:16]}...)"
