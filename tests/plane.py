"""A management-plane simulator (like python-tuf's RepositorySimulator): keys for every role, a
root chain, and helpers that make and sign documents. Tests change one thing, then expect the
device's specific reason code.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from agent.control.documents import payload_type
from agent.control.dsse import Envelope
from agent.control.keys import PrivateKey, key_dict, keyid_of

PREFIX = "roomagent/v1"


def ts(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def kid(key: PrivateKey) -> str:
    return keyid_of(key_dict(key.public_key()))


@dataclass
class Plane:
    """Role keys (two root keys, threshold 2 for root; one key each for the other roles)."""

    root_keys: list[PrivateKey] = field(
        default_factory=lambda: [
            ed25519.Ed25519PrivateKey.generate(),
            ec.generate_private_key(ec.SECP256R1()),
        ]
    )
    fleet: PrivateKey = field(default_factory=ed25519.Ed25519PrivateKey.generate)
    customer: PrivateKey = field(default_factory=ed25519.Ed25519PrivateKey.generate)
    legal: PrivateKey = field(default_factory=ed25519.Ed25519PrivateKey.generate)
    root_threshold: int = 2
    fleet_threshold: int = 1
    extra_fleet: list[PrivateKey] = field(default_factory=list)
    root_version: int = 0
    versions: dict[str, int] = field(default_factory=dict)

    def root_body(self) -> dict[str, Any]:
        fleet_keys = [self.fleet, *self.extra_fleet]
        all_keys = [*self.root_keys, *fleet_keys, self.customer, self.legal]
        return {
            "keys": {kid(k): key_dict(k.public_key()) for k in all_keys},
            "roles": {
                "root": {"keyids": [kid(k) for k in self.root_keys], "threshold": self.root_threshold},
                "fleet": {"keyids": [kid(k) for k in fleet_keys], "threshold": self.fleet_threshold},
                "customer": {"keyids": [kid(self.customer)], "threshold": 1},
                "legal": {"keyids": [kid(self.legal)], "threshold": 1},
            },
        }

    def payload(
        self,
        kind: str,
        body: Any,
        *,
        version: int | None = None,
        devices: list[str] | None = None,
        groups: list[str] | None = None,
        issued_at: dt.datetime | None = None,
        expires: dt.datetime | None = None,
    ) -> dict[str, Any]:
        if version is None:
            version = self.versions.get(kind, 0) + 1
        self.versions[kind] = max(version, self.versions.get(kind, 0))
        out: dict[str, Any] = {
            "kind": kind,
            "version": version,
            "issued_at": ts(issued_at or now() - dt.timedelta(seconds=5)),
            "expires": ts(expires or now() + dt.timedelta(days=30)),
            "targets": {"devices": devices if devices is not None else ["room-101"], "groups": groups or []},
            "body": body,
        }
        if kind == "root":
            del out["targets"]
        return out

    def envelope(
        self,
        kind: str,
        payload: dict[str, Any] | bytes,
        signers: list[PrivateKey],
        *,
        ptype: str | None = None,
    ) -> Envelope:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        env = Envelope(ptype or payload_type(kind), data, ())
        for key in signers:
            env = env.signed_by(key)
        return env

    def sign(self, kind: str, body: Any, signers: list[PrivateKey] | None = None, **kw: Any) -> bytes:
        """A complete, valid envelope (fleet-signed by default) as bytes."""
        return self.envelope(kind, self.payload(kind, body, **kw), signers or [self.fleet]).to_json()

    def root(self, signers: list[PrivateKey] | None = None, **kw: Any) -> bytes:
        """The next root version, signed by the current root keys (or ``signers``)."""
        self.root_version += 1
        payload = self.payload("root", self.root_body(), version=self.root_version, **kw)
        return self.envelope(
            "root", payload, signers if signers is not None else list(self.root_keys)
        ).to_json()

    def policy(self, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "e2ee": {"required": True, "suites": [4, 5], "kem": "x25519"},
            "camera": {"shutter_when_idle": True, "remote_snapshot": False, "remote_ptz": True},
            "telemetry": {"level": "minimal", "fields": []},
            "jurisdiction": "DE",
        }
        for path, value in fields.items():
            section, _, key = path.partition("__")
            if key:
                body[section][key] = value
            else:
                body[section] = value
        return body
