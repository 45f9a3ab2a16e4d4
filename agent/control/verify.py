"""Pure verification of signed documents: bytes in, :class:`VerifiedDocument` or :class:`Rejected` out.

No I/O, no clock reads: the caller passes the trusted root, the device's identity and state and
``now``. The checks run cheapest first, following docs/design.md "Rules every document passes" and the
TUF client workflow for the root (python-tuf ``trusted_metadata_set.py`` has the same shape):

1. size cap before parsing (TUF "endless data" attack)            -> ``too_large``
2. strict DSSE envelope and strict JSON payload, nesting <= 32 (``dsse.MAX_JSON_DEPTH``), version an
   integer in 1..2^53-1, at most as many signatures as the roles that may sign this kind have keys,
   each at most 128 bytes                                          -> ``malformed``
3. payloadType == topic kind == payload ``kind``                  -> ``wrong_type``
4. signatures over DSSE PAE meeting a role threshold -> ``bad_signature``; key ids are normalised
   (hex lower case), each key id is verified at most once and each public key counts once however
   many key ids name it (TUF specification 5.3.4 / python-tuf ``verify_delegate``: "unique keys")
5. version strictly greater than the last of that kind (root: exactly N+1) -> ``rollback``/``version_gap``
6. ``expires`` in the future, ``issued_at`` within the clock skew (freeze) -> ``expired``/``not_yet_valid``
7. ``targets`` names this device or one of its groups              -> ``not_for_this_device``
8. strict pydantic body                                           -> ``invalid_body``
9. who may sign what (docs/design.md table) -> ``needs_customer``/``lawful_order_mismatch``;
   an ``update`` under ``updates.mode = pinned``                   -> ``forbidden_by_policy``
10. ``update`` only: the bundle is in the firmware transparency log: the checkpoint is signed by the
    root's ``transparency`` role (C2SP signed-note) and the inclusion proof leads from the bundle's
    leaf to its root (RFC 9162 2.1.3.2)                             -> ``not_in_log``
11. ``update`` only: firmware version greater than the running one -> ``rollback``
"""

from __future__ import annotations

__all__ = [
    "MAX_VERSION",
    "SIGNER_ROLES",
    "Role",
    "TrustedRoot",
    "VerifiedDocument",
    "VerifyContext",
    "payload_sha256",
    "required_roles",
    "transparency_note_keys",
    "trusted_root_from_body",
    "verify_document",
    "verify_initial_root",
]

import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from pydantic import BaseModel, ValidationError

from agent.control.documents import (
    DOCUMENT_KINDS,
    INTERVENTIONS,
    MAINTENANCE_COMMANDS,
    ROUTINE_COMMANDS,
    CommandBody,
    RootBody,
    Targets,
    UpdateBody,
    body_model,
    payload_type,
)
from agent.control.dsse import Envelope, strict_json
from agent.control.errors import Rejected
from agent.control.signing_keys import PublicKey, parse_public_key
from agent.schema.policy import Change, PolicyBody, classify_change
from agent.tlog.errors import NoteError, ProofError
from agent.tlog.firmware import InclusionProof, verify_firmware_included
from agent.tlog.note import NoteKey

_RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z", re.ASCII)
_HEADER = {"kind", "version", "issued_at", "expires", "targets", "body"}
MAX_VERSION = 2**53 - 1
"""Largest document version: exact in every JSON implementation (RFC 8259 section 6, I-JSON RFC 7493
section 2.2). Without a bound one signed version of 10^3999 would block its kind for ever."""
MAX_SIGNATURE_BYTES = 128  # Ed25519: 64; DER ECDSA P-256: at most 72
# Roles whose signatures are checked for each kind (rule 4 and the who-may-sign table of rule 9).
# A signature naming a key outside these roles is never verified: it cannot change the verdict.
SIGNER_ROLES: dict[str, frozenset[str]] = {
    "config": frozenset({"fleet"}),
    "policy": frozenset({"fleet", "customer"}),
    "command": frozenset({"fleet", "customer", "legal"}),
    "keys": frozenset({"customer", "fleet", "legal"}),
    # fleet alone (updates.mode = automatic) or fleet + customer (customer_approval)
    "update": frozenset({"fleet", "customer"}),
}


@dataclass(frozen=True, slots=True)
class Role:
    keyids: frozenset[str]
    threshold: int


@dataclass(frozen=True, slots=True)
class TrustedRoot:
    """The root the device trusts now: its version, expiry, keys and roles."""

    version: int
    expires: dt.datetime
    keys: Mapping[str, PublicKey]
    roles: Mapping[str, Role]
    body: RootBody


@dataclass(frozen=True, slots=True)
class VerifyContext:
    """What verification needs to know about the device (all plain values, no I/O)."""

    device_id: str
    groups: tuple[str, ...]
    now: dt.datetime
    last_versions: Mapping[str, int] = field(default_factory=dict)
    policy: PolicyBody = field(default_factory=PolicyBody)
    max_bytes: int = 64 * 1024
    clock_skew_s: int = 300
    firmware_version: int = 0  # the running firmware's version (0: unknown, no updates installed yet)


@dataclass(frozen=True, slots=True)
class VerifiedDocument:
    kind: str
    version: int
    issued_at: dt.datetime
    expires: dt.datetime
    targets: Targets | None
    body: BaseModel
    payload_sha256: str
    signer_keyids: tuple[str, ...]
    roles: frozenset[str]


def payload_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _timestamp(value: Any, name: str) -> dt.datetime:
    # RFC 3339 UTC with "Z" (docs/design.md): anything else is malformed, so clocks never get guessed.
    # Full date-time required: fromisoformat("2026-11-29+00:00") gives a *naive* datetime, which then
    # cannot be compared with ``now`` (found by fuzz/fuzz_verify.py).
    if not isinstance(value, str) or not _RFC3339_UTC.fullmatch(value):
        raise Rejected("malformed", f"{name} must be an RFC 3339 UTC timestamp ending in Z")
    try:
        parsed = dt.datetime.fromisoformat(value[:-1] + "+00:00")
    except ValueError as exc:
        raise Rejected("malformed", f"{name} is not an RFC 3339 timestamp") from exc
    return parsed


def _parse(
    raw: bytes, topic_kind: str, max_bytes: int, max_signatures: int | None = None
) -> tuple[Envelope, dict[str, Any]]:
    # Rule 1: size cap before any parsing (TUF "endless data").
    if len(raw) > max_bytes:
        raise Rejected("too_large", f"document is {len(raw)} bytes; the cap is {max_bytes}", unreadable=True)
    # Rule 2: strict envelope (DSSE envelope.md), its signature count capped before decoding ...
    try:
        env = Envelope.parse(raw, max_signatures=max_signatures)
    except ValueError as exc:
        raise Rejected("malformed", f"not a DSSE envelope: {exc}", unreadable=True) from exc
    # Rule 3a: payloadType agrees with the topic, before we even read the payload.
    if env.payload_type != payload_type(topic_kind):
        raise Rejected("wrong_type", f"payloadType {env.payload_type[:80]!r} on a {topic_kind} topic")
    # Rule 2b: ... and strict JSON payload.
    try:
        payload = strict_json(env.payload)
    except ValueError as exc:
        raise Rejected("malformed", f"payload is not strict JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise Rejected("malformed", "payload is not a JSON object")
    expected = _HEADER - {"targets"} if topic_kind == "root" else _HEADER
    if set(payload) != expected:
        missing = sorted(expected - set(payload))
        extra = sorted(set(payload) - expected)
        raise Rejected("malformed", f"payload fields: missing {missing}, unexpected {extra}")
    # Rule 3b: the signed kind agrees with payloadType and topic.
    if payload["kind"] != topic_kind:
        raise Rejected("wrong_type", f"payload kind {str(payload['kind'])[:40]!r} on a {topic_kind} topic")
    version = payload["version"]
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= MAX_VERSION:
        raise Rejected("malformed", f"version must be an integer in 1..{MAX_VERSION}")
    return env, payload


def _cap_signatures(env: Envelope, cap: int) -> None:
    """Cheap rejection before any signature is checked (TUF "arbitrary software / endless data" style
    resource bound; DSSE protocol.md leaves the number of signatures to the verifier's policy)."""
    if len(env.signatures) > cap:
        raise Rejected(
            "malformed", f"{len(env.signatures)} signatures; the roles that may sign this have {cap} keys"
        )
    if any(len(s.sig) > MAX_SIGNATURE_BYTES for s in env.signatures):
        raise Rejected("malformed", f"a signature is longer than {MAX_SIGNATURE_BYTES} bytes")


def _role_keys(root: TrustedRoot, roles: frozenset[str]) -> dict[str, PublicKey]:
    return {k: root.keys[k] for name in roles if name in root.roles for k in root.roles[name].keyids}


def _valid_keyids(env: Envelope, keys: Mapping[str, PublicKey]) -> frozenset[str]:
    """Key ids with a good signature over PAE (DSSE protocol.md "Verification").

    DSSE key ids are unauthenticated hints: they are normalised (hex lower case) and each one is
    verified at most once, so N signatures naming one key cost one verification. Each public key
    counts once however many key ids name it (TUF 5.3.4 counts *unique* keys towards a threshold).
    """
    pae = env.pae()
    good: set[str] = set()
    tried: set[str] = set()
    counted: set[bytes] = set()
    for sig in env.signatures:
        keyid = sig.keyid.lower()
        if keyid in tried:
            continue
        key = keys.get(keyid)
        if key is None:
            continue
        tried.add(keyid)
        if key.identity in counted:
            continue
        if key.verify(sig.sig, pae):
            good.add(keyid)
            counted.add(key.identity)
    return frozenset(good)


def _met(roles: Mapping[str, Role], good: frozenset[str]) -> frozenset[str]:
    return frozenset(name for name, role in roles.items() if len(role.keyids & good) >= role.threshold)


def trusted_root_from_body(body: RootBody, version: int, expires: dt.datetime) -> TrustedRoot:
    keys = {keyid: parse_public_key(key) for keyid, key in body.keys.items()}
    roles: dict[str, Role] = {
        name: Role(frozenset(spec.keyids), spec.threshold) for name, spec in body.roles.items()
    }
    return TrustedRoot(version, expires, keys, roles, body)


def _root_body(payload: dict[str, Any]) -> RootBody:
    try:
        return RootBody.model_validate(payload["body"])
    except ValidationError as exc:
        raise Rejected("invalid_body", _first_error(exc)) from exc


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "body"
    return f"body.{loc}: {err['msg']}"[:300]


def verify_initial_root(raw: bytes, *, max_bytes: int = 64 * 1024) -> TrustedRoot:
    """The root shipped in the image (trust on first boot): signed by a threshold of its own root keys.

    Its expiry is not checked here (TUF 5.3.10 checks the *final* root; documents are refused while
    the trusted root is expired).
    """
    env, payload = _parse(raw, "root", max_bytes)
    body = _root_body(payload)
    root = trusted_root_from_body(body, payload["version"], _timestamp(payload["expires"], "expires"))
    root_keys = _role_keys(root, frozenset({"root"}))
    # No signature-count cap here: this is a local file (the image's root, or a rotation persisted
    # after it passed verify_document), and a rotation legitimately carries the previous root's
    # signatures too. Only this root's own root keys are tried, each at most once.
    if "root" not in _met(root.roles, _valid_keyids(env, root_keys)):
        raise Rejected("bad_signature", "initial root is not signed by a threshold of its own root keys")
    return root


def required_roles(kind: str, body: BaseModel, policy: PolicyBody) -> tuple[frozenset[str], ...]:
    """Alternatives of role sets that may sign ``body`` (docs/design.md "Who may sign what")."""
    if kind == "config":
        return (frozenset({"fleet"}),)
    if kind == "policy":
        assert isinstance(body, PolicyBody)
        if classify_change(policy, body) is Change.WEAKEN:
            return (frozenset({"fleet", "customer"}),)
        return (frozenset({"fleet"}),)
    if kind == "keys":
        return (frozenset({"customer"}),)
    if kind == "update":
        mode = policy.updates.mode
        if mode == "automatic":
            return (frozenset({"fleet"}),)
        if mode == "customer_approval":
            return (frozenset({"fleet", "customer"}),)
        return ()  # pinned: nobody may update this room until the customer changes the policy
    assert isinstance(body, CommandBody)
    if body.name in ROUTINE_COMMANDS:
        return (frozenset({"fleet"}),)
    if body.name in INTERVENTIONS:
        return (frozenset({"customer"}), frozenset({"legal"}))
    if body.name in MAINTENANCE_COMMANDS:
        # reboot / restart_agent: operating the device is the vendor's job; neither weakens privacy.
        return (frozenset({"fleet"}),)
    if body.name == "audit_fetch":
        # Reading the tamper-evident log is for both parties: the customer audits the vendor's
        # actions, the vendor its own; the export reveals no keys or media.
        return (frozenset({"fleet"}), frozenset({"customer"}))
    # snapshot and meeting_stop: the vendor must neither look into a room nor cut a customer's meeting.
    return (frozenset({"customer"}),)


def _authorise(kind: str, body: BaseModel, met: frozenset[str], policy: PolicyBody) -> None:
    options = required_roles(kind, body, policy)
    if not options:
        raise Rejected("forbidden_by_policy", f"this room's policy says updates.mode = {policy.updates.mode}")
    if any(option <= met for option in options):
        if isinstance(body, CommandBody) and body.name in INTERVENTIONS and "customer" not in met:
            # Signed by legal alone: a lawful order of this room's jurisdiction is required.
            order = body.lawful_order()
            if order is None:
                raise Rejected("needs_customer", f"{body.name} signed by legal without a lawful order")
            if policy.jurisdiction is None or order.jurisdiction != policy.jurisdiction:
                raise Rejected(
                    "lawful_order_mismatch",
                    f"lawful order of {order.jurisdiction}; this room's policy jurisdiction is "
                    f"{policy.jurisdiction or 'unset'}",
                )
        return
    needs = " or ".join("+".join(sorted(o)) for o in options)
    if any("customer" in o for o in options):
        raise Rejected(
            "needs_customer", f"{kind} needs {needs}; signed by {'+'.join(sorted(met)) or 'nobody'}"
        )
    raise Rejected("bad_signature", f"{kind} needs {needs}; signed by {'+'.join(sorted(met)) or 'nobody'}")


def verify_document(raw: bytes, topic_kind: str, root: TrustedRoot, ctx: VerifyContext) -> VerifiedDocument:
    """Verify one document received on a topic of ``topic_kind`` (``root``, ``policy``, ...).

    Raises:
        Rejected: with the reason code of the first rule the document breaks.
    """
    if topic_kind not in DOCUMENT_KINDS:
        raise Rejected("wrong_type", f"no documents of kind {topic_kind[:40]!r}")
    signer_keys = _role_keys(root, SIGNER_ROLES.get(topic_kind, frozenset({"root"})))
    # Root rotations may also carry the new root's signatures: capped once the payload is read.
    cap = None if topic_kind == "root" else len(signer_keys)
    env, payload = _parse(raw, topic_kind, ctx.max_bytes, cap)
    version: int = payload["version"]

    if topic_kind == "root":
        old_root_keys = _role_keys(root, frozenset({"root"}))
        _cap_signatures(env, len(old_root_keys) + _peek_new_root_keys(payload))
        good_old = _valid_keyids(env, old_root_keys)
        return _verify_root(env, payload, root, ctx, good_old)

    _cap_signatures(env, len(signer_keys))
    good = _valid_keyids(env, signer_keys)
    met = _met(root.roles, good)

    # Rule 4: some role whose signature could authorise this kind must meet its threshold; the
    # content-dependent table (rule 9) runs after the body is known to be valid.
    eligible = {
        "config": {"fleet"},
        "policy": {"fleet"},
        "command": {"fleet", "customer", "legal"},
        "keys": {"customer", "fleet", "legal"},
        "update": {"fleet"},
    }[topic_kind]
    if not met & eligible:
        raise Rejected(
            "bad_signature", f"no threshold of {'/'.join(sorted(eligible))} keys signed this {topic_kind}"
        )
    try:
        return _verify_authenticated(env, payload, topic_kind, version, root, ctx, good, met)
    except Rejected as exc:
        exc.authenticated = True  # past the signature gate: a signer is accountable for it
        raise


def _peek_new_root_keys(payload: dict[str, Any]) -> int:
    """How many root-role key ids the (not yet validated) new root names, for the signature cap."""
    body = payload.get("body")
    roles = body.get("roles") if isinstance(body, dict) else None
    spec = roles.get("root") if isinstance(roles, dict) else None
    keyids = spec.get("keyids") if isinstance(spec, dict) else None
    return len(keyids) if isinstance(keyids, list) else 0


def _verify_authenticated(
    env: Envelope,
    payload: dict[str, Any],
    topic_kind: str,
    version: int,
    root: TrustedRoot,
    ctx: VerifyContext,
    good: frozenset[str],
    met: frozenset[str],
) -> VerifiedDocument:
    # TUF 5.3.10 / freeze: nothing is accepted under an expired root.
    if root.expires <= ctx.now:
        raise Rejected("expired", f"trusted root v{root.version} expired at {root.expires.isoformat()}")
    # Rule 5: rollback and replay.
    last = ctx.last_versions.get(topic_kind, 0)
    if version <= last:
        raise Rejected("rollback", f"{topic_kind} version {version} is not greater than {last}")
    issued_at, expires = _check_times(payload, ctx)
    # Rule 7: wrong-device replay.
    try:
        targets = Targets.model_validate(payload["targets"])
    except ValidationError as exc:
        raise Rejected("malformed", f"targets: {exc.errors()[0]['msg']}") from exc
    if ctx.device_id not in targets.devices and not set(ctx.groups) & set(targets.groups):
        raise Rejected("not_for_this_device", "targets name neither this device nor one of its groups")
    # Rule 8: strict body.
    model = body_model(topic_kind)
    if model is None:
        raise Rejected("invalid_body", f"this agent has no {topic_kind} body model")
    try:
        body = model.model_validate(payload["body"])
    except ValidationError as exc:
        raise Rejected("invalid_body", _first_error(exc)) from exc
    # Rule 9: who may sign what.
    _authorise(topic_kind, body, met, ctx.policy)
    if isinstance(body, UpdateBody):
        _check_update(body, root, ctx)
    return VerifiedDocument(
        topic_kind,
        version,
        issued_at,
        expires,
        targets,
        body,
        payload_sha256(env.payload),
        tuple(sorted(good)),
        met,
    )


def transparency_note_keys(root: TrustedRoot, origin: str) -> tuple[list[NoteKey], int]:
    """The ``transparency`` role's keys as signed-note verifier keys named ``origin``, and its
    threshold; no keys when the root has no such role (then nothing can be proved logged)."""
    role = root.roles.get("transparency")
    if role is None:
        return [], 1
    keys = [
        NoteKey.of(origin, pub.public)
        for keyid in sorted(role.keyids)
        if isinstance((pub := root.keys[keyid]).public, ed25519.Ed25519PublicKey)
    ]
    return keys, role.threshold


def _check_update(body: UpdateBody, root: TrustedRoot, ctx: VerifyContext) -> None:
    # Rule 10: binary transparency. The checkpoint names its log (origin, first line); the
    # signature must come from the root's transparency keys under that name (c2sp.org/signed-note
    # key id = SHA-256(name || 0x0A || 0x01 || key)[:4]), then RFC 9162 2.1.3.2 places the leaf.
    origin = body.transparency.checkpoint.split("\n", 1)[0]
    try:
        keys, threshold = transparency_note_keys(root, origin)
    except ValueError as exc:  # not a signed-note key name (spaces, "+", empty)
        raise Rejected("not_in_log", f"checkpoint origin is not a log name: {exc}") from exc
    if not keys:
        raise Rejected("not_in_log", f"trusted root v{root.version} has no transparency role: no updates")
    try:
        proof = InclusionProof.from_json(body.transparency.model_dump())
        verify_firmware_included(body.firmware_version, body.length, body.sha256, proof, keys, threshold)
    except (NoteError, ProofError) as exc:
        raise Rejected("not_in_log", f"bundle is not proved to be in the firmware log: {exc}"[:300]) from exc
    # Rule 11: rollback protection of the firmware itself (TUF targets: never go back in version).
    if body.firmware_version <= ctx.firmware_version:
        raise Rejected(
            "rollback",
            f"firmware version {body.firmware_version} is not greater than the running "
            f"{ctx.firmware_version}",
        )


def _check_times(payload: dict[str, Any], ctx: VerifyContext) -> tuple[dt.datetime, dt.datetime]:
    issued_at = _timestamp(payload["issued_at"], "issued_at")
    expires = _timestamp(payload["expires"], "expires")
    # Rule 6: freeze attack (expired) and documents from the future (a clock or a signer gone wrong).
    if expires <= ctx.now:
        raise Rejected("expired", f"expired at {payload['expires']}")
    if issued_at > ctx.now + dt.timedelta(seconds=ctx.clock_skew_s):
        raise Rejected("not_yet_valid", f"issued_at {payload['issued_at']} is in the future")
    return issued_at, expires


def _verify_root(
    env: Envelope, payload: dict[str, Any], trusted: TrustedRoot, ctx: VerifyContext, good_old: frozenset[str]
) -> VerifiedDocument:
    # TUF client workflow 5.3.4: signed by a threshold of the *trusted* root's root keys.
    if "root" not in _met(trusted.roles, good_old):
        raise Rejected(
            "bad_signature", f"root rotation not signed by a threshold of root v{trusted.version}'s keys"
        )
    try:
        return _verify_new_root(env, payload, trusted, ctx, good_old)
    except Rejected as exc:
        exc.authenticated = True
        raise


def _verify_new_root(
    env: Envelope, payload: dict[str, Any], trusted: TrustedRoot, ctx: VerifyContext, good_old: frozenset[str]
) -> VerifiedDocument:
    version: int = payload["version"]
    # 5.3.5: version must be exactly N+1 (rollback below, no skipping ahead).
    if version <= trusted.version:
        raise Rejected("rollback", f"root version {version} is not greater than {trusted.version}")
    if version != trusted.version + 1:
        raise Rejected(
            "version_gap", f"root version {version}; this device needs {trusted.version + 1} first"
        )
    issued_at, expires = _check_times(payload, ctx)
    body = _root_body(payload)
    new = trusted_root_from_body(body, version, expires)
    # 5.3.4 (second half): also signed by a threshold of its *own* root keys.
    good_new = _valid_keyids(env, _role_keys(new, frozenset({"root"})))
    if "root" not in _met(new.roles, good_new):
        raise Rejected("bad_signature", f"root v{version} is not signed by a threshold of its own root keys")
    return VerifiedDocument(
        "root",
        version,
        issued_at,
        expires,
        None,
        body,
        payload_sha256(env.payload),
        tuple(sorted(good_old | good_new)),
        frozenset({"root"}),
    )
