"""The simulated management plane's keys and documents (trust root, group policy), signed with
agent.control's DSSE signer (``Envelope.signed_by``: PAE, TUF key ids) as roomctl signs them."""

from __future__ import annotations

__all__ = ["FleetKeys"]

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.control.documents import payload_type
from agent.control.dsse import Envelope
from agent.control.signing_keys import key_dict, keyid_of


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class FleetKeys:
    """The simulated management plane's keys: one root key and one fleet key (threshold 1 each)."""

    root: Ed25519PrivateKey
    fleet: Ed25519PrivateKey
    customer: Ed25519PrivateKey
    legal: Ed25519PrivateKey

    @classmethod
    def generate(cls, seed: bytes | None = None) -> FleetKeys:
        """Fresh random keys, or deterministic ones from ``seed`` (fuzzing, reproducible tests only)."""
        if seed is None:
            return cls(*(Ed25519PrivateKey.generate() for _ in range(4)))
        return cls(
            *(
                Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed + role).digest())
                for role in (b"root", b"fleet", b"customer", b"legal")
            )
        )

    @staticmethod
    def payload(
        kind: str,
        version: int,
        body: Any,
        *,
        now: datetime,
        groups: tuple[str, ...] = (),
        devices: tuple[str, ...] = (),
        valid_for: timedelta = timedelta(days=30),
    ) -> dict[str, Any]:
        """A document payload of docs/design.md's shape (``targets`` omitted for ``root``)."""
        out: dict[str, Any] = {
            "kind": kind,
            "version": version,
            "issued_at": _utc(now - timedelta(seconds=5)),
            "expires": _utc(now + valid_for),
            "body": body,
        }
        if kind != "root":
            out["targets"] = {"devices": list(devices), "groups": list(groups)}
        return out

    def sign(self, kind: str, payload: dict[str, Any], *signers: Ed25519PrivateKey) -> bytes:
        """A DSSE envelope of ``payload`` signed by ``signers`` (agent.control's signer: PAE, TUF key
        ids), so the simulated plane signs exactly as roomctl does."""
        envelope = Envelope(payload_type(kind), json.dumps(payload, separators=(",", ":")).encode(), ())
        for key in signers:
            envelope = envelope.signed_by(key)
        return envelope.to_json()

    def root_envelope(self, *, version: int = 1, now: datetime | None = None) -> bytes:
        """Root ``version`` naming the four roles, self-signed by the root key (trust on first boot)."""
        now = now or datetime.now(UTC)
        roles = {"root": self.root, "fleet": self.fleet, "customer": self.customer, "legal": self.legal}
        keys = {keyid_of(key_dict(k.public_key())): key_dict(k.public_key()) for k in roles.values()}
        payload = {
            "kind": "root",
            "version": version,
            "issued_at": _utc(now - timedelta(minutes=1)),
            "expires": _utc(now + timedelta(days=365)),
            "body": {
                "keys": keys,
                "roles": {
                    name: {"keyids": [keyid_of(key_dict(k.public_key()))], "threshold": 1}
                    for name, k in roles.items()
                },
            },
        }
        return self.sign("root", payload, self.root)

    def policy_envelope(self, *, version: int, group: str, now: datetime | None = None) -> bytes:
        """A fleet-signed policy for ``group`` that tightens the first-boot default (remote PTZ off)."""
        from agent.schema.policy import DEFAULT_POLICY  # light, but only the push needs it

        now = now or datetime.now(UTC)
        body = DEFAULT_POLICY.model_copy(
            update={"camera": DEFAULT_POLICY.camera.model_copy(update={"remote_ptz": False})}
        ).model_dump(mode="json")
        payload = {
            "kind": "policy",
            "version": version,
            "issued_at": _utc(now - timedelta(seconds=5)),
            "expires": _utc(now + timedelta(days=30)),
            "targets": {"devices": [], "groups": [group]},
            "body": body,
        }
        return self.sign("policy", payload, self.fleet)
