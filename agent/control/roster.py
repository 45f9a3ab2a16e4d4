"""The customer's room roster: which rooms exist and which keys they enrolled with.

A ``roster`` is a signed document like the others (DSSE, payloadType
``application/vnd.roomagent.roster+json``, payload ``{"kind", "version", "issued_at", "expires",
"targets": {}, "body"}``) that never travels to a device: the customer's ``roomctl`` keeps it as a
file and trusts a room's acks, states, HPKE keys and audit heads only through it, never through the
broker. Body::

    {"customer": str,
     "rooms": {"<device id>": {"ed25519": <TUF key dict>, "hpke": {kem: base64},
                               "hpke_attestation": <DSSE envelope dict>, "groups": [str, ...]}}}

It is signed by the ``customer`` role threshold of the trust root. Each *public key* counts once
toward that threshold, however many key ids or signatures name it (DSSE protocol.md: a verifier
"MUST NOT count the same key twice"), so the vendor's ``fleet`` key, or a key listed twice, never
makes a roster. A room's ``hpke_attestation`` must chain to its rostered Ed25519 key (the device
signed its HPKE keys with its identity key at enrollment): :func:`attested_hpke` re-checks that
every time the keys are used.
"""

from __future__ import annotations

__all__ = [
    "ATTESTATION_KIND",
    "ROSTER_KIND",
    "Roster",
    "RosterBody",
    "RosterError",
    "RosterRoom",
    "attested_hpke",
    "roster_envelope",
    "verify_roster",
]

import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.control.documents import payload_type
from agent.control.dsse import Envelope, strict_json
from agent.control.errors import ControlError
from agent.control.signing_keys import PrivateKey, PublicKey, canonical_json, parse_public_key
from agent.control.verify import TrustedRoot

ROSTER_KIND = "roster"
ATTESTATION_KIND = "hpke-identity"
"""DSSE payloadType ``application/vnd.roomagent.hpke-identity+json`` of ``{"device", "hpke"}``."""
_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z", re.ASCII)
MAX_ROSTER_BYTES = 16 * 1024 * 1024
_MAX_VERSION = 2**53 - 1


class RosterError(ControlError):
    """A roster (or a room's entry in it) cannot be trusted; ``room`` names the room when it is one."""

    def __init__(self, message: str, room: str | None = None) -> None:
        self.room = room
        self.reason = message
        super().__init__(f"{room}: {message}" if room else message)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RosterRoom(_Strict):
    """One enrolled room, as read from ``roomagent identity --json`` at installation."""

    ed25519: dict[str, Any]
    hpke: dict[Annotated[str, Field(pattern=r"^[a-z0-9-]{1,32}$")], str]
    hpke_attestation: dict[str, Any]
    groups: list[Annotated[str, Field(pattern=_ID)]] = Field(default_factory=list)

    @field_validator("ed25519")
    @classmethod
    def _key(cls, key: dict[str, Any]) -> dict[str, Any]:
        parse_public_key(key)  # ValueError names the problem
        return {
            "keytype": key["keytype"],
            "scheme": key["scheme"],
            "keyval": {"public": key["keyval"]["public"]},
        }

    def identity_key(self) -> PublicKey:
        return parse_public_key(self.ed25519)


class RosterBody(_Strict):
    customer: Annotated[str, Field(min_length=1, max_length=200)]
    rooms: dict[Annotated[str, Field(pattern=_ID)], RosterRoom]


@dataclass(frozen=True, slots=True)
class Roster:
    """A verified roster: version, expiry and the rooms by device id."""

    version: int
    issued_at: dt.datetime
    expires: dt.datetime
    body: RosterBody
    signer_keyids: tuple[str, ...]

    @property
    def rooms(self) -> Mapping[str, RosterRoom]:
        return self.body.rooms

    def room(self, device: str) -> RosterRoom:
        """Raises: RosterError: the device is not enrolled."""
        found = self.body.rooms.get(device)
        if found is None:
            raise RosterError("not in the roster (enroll it: roomctl roster add)", device)
        return found

    def in_groups(self, groups: list[str]) -> list[str]:
        wanted = set(groups)
        return sorted(d for d, room in self.body.rooms.items() if wanted & set(room.groups))


def _timestamp(value: Any, name: str) -> dt.datetime:
    if not isinstance(value, str) or not _RFC3339_UTC.fullmatch(value):
        raise RosterError(f"{name} must be an RFC 3339 UTC timestamp ending in Z")
    return dt.datetime.fromisoformat(value[:-1] + "+00:00")


def _public_identity(key: PublicKey) -> bytes:
    """The key material itself: two key ids (or spellings) of one key map to the same bytes."""
    return hashlib.sha256(canonical_json(key.to_dict())).digest()


def _customer_signers(env: Envelope, root: TrustedRoot) -> tuple[str, ...]:
    """Key ids of distinct customer public keys with a good signature over the PAE."""
    role = root.roles.get("customer")
    if role is None:
        return ()
    pae = env.pae()
    good: dict[bytes, str] = {}
    for sig in env.signatures:
        keyid = sig.keyid.lower()
        if keyid not in role.keyids:
            continue
        key = root.keys.get(keyid)
        if key is None:
            continue
        material = _public_identity(key)
        if material in good:
            continue  # the same public key counts once, however many key ids name it
        if key.verify(sig.sig, pae):
            good[material] = keyid
    return tuple(sorted(good.values()))


def verify_roster(raw: bytes, root: TrustedRoot, *, now: dt.datetime, allow_expired: bool = False) -> Roster:
    """Verify a roster envelope against the trust root's ``customer`` threshold.

    Args:
        allow_expired: accept an expired roster (``roomctl roster add/remove`` re-issue it).

    Raises:
        RosterError: too large, malformed, not signed by the customer threshold, expired, bad body.
    """
    if len(raw) > MAX_ROSTER_BYTES:
        raise RosterError(f"roster is {len(raw)} bytes; the cap is {MAX_ROSTER_BYTES}")
    try:
        env = Envelope.parse(raw)
        payload = strict_json(env.payload)
    except (ValueError, RecursionError) as exc:
        raise RosterError(f"not a roster envelope: {exc}") from exc
    if env.payload_type != payload_type(ROSTER_KIND):
        raise RosterError(f"payloadType is {env.payload_type[:80]!r}, not a roster")
    if not isinstance(payload, dict) or payload.get("kind") != ROSTER_KIND:
        raise RosterError("payload kind is not roster")
    expected = {"kind", "version", "issued_at", "expires", "targets", "body"}
    if set(payload) != expected:
        raise RosterError(f"payload fields are {sorted(payload)}, expected {sorted(expected)}")
    version = payload["version"]
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= _MAX_VERSION:
        raise RosterError("version must be an integer in 1..2^53-1")
    signers = _customer_signers(env, root)
    role = root.roles.get("customer")
    threshold = role.threshold if role is not None else 1
    if len(signers) < threshold:
        raise RosterError(
            f"not signed by the customer threshold of the trust root ({len(signers)} of {threshold} "
            "customer keys); a roster signed by fleet alone is never trusted: re-sign it with "
            "roomctl roster add/remove --customer-key"
        )
    issued_at = _timestamp(payload["issued_at"], "issued_at")
    expires = _timestamp(payload["expires"], "expires")
    if expires <= now and not allow_expired:
        raise RosterError(
            f"roster expired at {payload['expires']}: renew it with roomctl roster add/remove (re-signs it)"
        )
    try:
        body = RosterBody.model_validate(payload["body"])
    except ValidationError as exc:
        err = exc.errors()[0]
        raise RosterError(f"body.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from exc
    return Roster(version, issued_at, expires, body, signers)


def roster_envelope(
    body: RosterBody, *, version: int, issued_at: dt.datetime, expires: dt.datetime, signers: list[PrivateKey]
) -> Envelope:
    """A signed roster envelope (pure)."""
    payload = {
        "kind": ROSTER_KIND,
        "version": version,
        "issued_at": issued_at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "expires": expires.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "targets": {},
        "body": body.model_dump(mode="json"),
    }
    data = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    env = Envelope(payload_type(ROSTER_KIND), data, ())
    for key in signers:
        env = env.signed_by(key)
    return env


def attested_hpke(
    device: str, ed25519: PublicKey, hpke: Mapping[str, str], attestation: Any
) -> dict[str, str]:
    """Check that ``hpke`` is what the device signed with its identity key; return the HPKE keys.

    The attestation is the device's DSSE envelope over ``{"device", "hpke"}``; its payload must name
    ``device`` and exactly these HPKE public keys, and carry a good signature by ``ed25519``.

    Raises:
        RosterError: naming the room and the reason.
    """
    try:
        env = Envelope.parse(json.dumps(attestation).encode())
        payload = strict_json(env.payload)
    except (ValueError, TypeError, RecursionError) as exc:
        raise RosterError(f"HPKE attestation is not a DSSE envelope ({exc})", device) from exc
    if env.payload_type != payload_type(ATTESTATION_KIND):
        raise RosterError("HPKE attestation has the wrong payloadType", device)
    pae = env.pae()
    if not any(s.keyid == ed25519.keyid and ed25519.verify(s.sig, pae) for s in env.signatures):
        raise RosterError("HPKE attestation is not signed by the room's rostered identity key", device)
    if not isinstance(payload, dict) or payload.get("device") != device:
        raise RosterError("HPKE attestation names another device", device)
    signed = payload.get("hpke")
    if not isinstance(signed, dict) or not signed or not all(isinstance(v, str) for v in signed.values()):
        raise RosterError("HPKE attestation carries no HPKE public keys", device)
    if dict(hpke) != signed:
        raise RosterError("HPKE public keys differ from the ones the room's identity key signed", device)
    return dict(signed)
