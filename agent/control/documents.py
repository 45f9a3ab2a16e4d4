"""The signed payload of every document, and the strict body model of each kind.

Payload (docs/design.md "Signed documents"): ``{"kind", "version", "issued_at", "expires", "targets",
"body"}``; ``root`` documents carry no ``targets``. Body models are resolved through
:func:`body_model`; the policy and key package bodies live in :mod:`agent.schema`, below every package
that reads them.
"""

from __future__ import annotations

__all__ = [
    "COMMANDS",
    "DOCUMENT_KINDS",
    "INTERVENTIONS",
    "MAINTENANCE_COMMANDS",
    "MAX_BUNDLE_BYTES",
    "OPTIONAL_ROLES",
    "ROLES",
    "ROUTINE_COMMANDS",
    "AckBody",
    "CommandBody",
    "ConfigBody",
    "LawfulOrder",
    "RoleSpec",
    "RootBody",
    "SnapshotArgs",
    "SnapshotRecipient",
    "Targets",
    "TransparencyProof",
    "UpdateBody",
    "UpdateWindow",
    "body_model",
    "payload_type",
]

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.config import CameraSpec, EncoderSection, LogSection, MediaSection
from agent.control.signing_keys import keyid_of, parse_public_key
from agent.schema.key_package import KeysBody
from agent.schema.policy import PolicyBody

DOCUMENT_KINDS = ("root", "policy", "config", "command", "keys", "update")
ROLES = ("root", "fleet", "customer", "legal")
# Roles a root may leave out: roots made before firmware updates existed stay valid, and a device
# whose root has no ``transparency`` role refuses every update (nothing can prove a bundle is logged).
OPTIONAL_ROLES = ("transparency",)
ROUTINE_COMMANDS = frozenset({"keyframe", "restart_pipeline", "ptz_preset", "ptz"})
INTERVENTIONS = frozenset({"lock", "unlock", "deprovision"})
# Device maintenance: the vendor runs the fleet, and a reboot or agent restart changes no privacy
# setting and reveals nothing (the room comes back under the same policy, keys and lock state).
MAINTENANCE_COMMANDS = frozenset({"reboot", "restart_agent"})
COMMANDS = (
    ROUTINE_COMMANDS | INTERVENTIONS | MAINTENANCE_COMMANDS | {"snapshot", "meeting_stop", "audit_fetch"}
)
_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_KEYID = r"^[0-9a-f]{64}$"


def payload_type(kind: str) -> str:
    """``application/vnd.roomagent.<kind>+json``."""
    return f"application/vnd.roomagent.{kind}+json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Targets(_Strict):
    devices: list[Annotated[str, Field(pattern=_ID)]] = Field(default_factory=list)
    groups: list[Annotated[str, Field(pattern=_ID)]] = Field(default_factory=list)


class RoleSpec(_Strict):
    keyids: Annotated[list[Annotated[str, Field(pattern=_KEYID)]], Field(min_length=1)]
    threshold: Annotated[int, Field(ge=1)]

    @model_validator(mode="after")
    def _reachable(self) -> RoleSpec:
        if len(set(self.keyids)) != len(self.keyids):
            raise ValueError("keyids must not repeat")
        if self.threshold > len(self.keyids):
            raise ValueError("threshold exceeds the number of keys: the role could never sign")
        return self


class RootBody(_Strict):
    """TUF-style root: the keys, and for each role its key ids and threshold."""

    keys: dict[Annotated[str, Field(pattern=_KEYID)], dict[str, Any]]
    roles: dict[Literal["root", "fleet", "customer", "legal", "transparency"], RoleSpec]

    @field_validator("keys")
    @classmethod
    def _keys(cls, keys: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        seen: dict[bytes, str] = {}
        for keyid, key in keys.items():
            parsed = parse_public_key(key)  # ValueError names the problem
            if keyid_of(key) != keyid:
                raise ValueError(f"key id {keyid[:12]}... is not the sha256 of its key")
            # One key spelt two ways (hex case, PEM layout) has two key ids; listed twice it would
            # meet a threshold of two alone (TUF counts unique keys).
            if parsed.identity in seen:
                raise ValueError(f"keys {seen[parsed.identity][:12]}... and {keyid[:12]}... are the same key")
            seen[parsed.identity] = keyid
        return keys

    @model_validator(mode="after")
    def _complete(self) -> RootBody:
        missing = [r for r in ROLES if r not in self.roles]
        if missing:
            raise ValueError(f"roles missing: {', '.join(missing)}")
        for name, role in self.roles.items():
            unknown = [k for k in role.keyids if k not in self.keys]
            if unknown:
                raise ValueError(f"role {name} names keys not in keys: {', '.join(k[:12] for k in unknown)}")
        log = self.roles.get("transparency")
        if log is not None and any(self.keys[k].get("keytype") != "ed25519" for k in log.keyids):
            # Checkpoints are C2SP signed notes, whose standard signature type is Ed25519.
            raise ValueError("transparency keys must be Ed25519 (checkpoints are Ed25519 signed notes)")
        return self


class ConfigBody(_Strict):
    """Room configuration pushed by the fleet: each section replaces the local one when present.

    A pushed document never names a local path: the fleet key alone must not be able to make the
    room write media into a file (e.g. over its own audit log) or read one. Sinks are network sinks
    only (``rtp://``); a ``file://`` sink exists only in the local config (which refuses one inside
    the state directory). Cameras name V4L2 device nodes (``/dev/videoN``), nothing else.
    """

    cameras: list[CameraSpec] | None = None
    encoder: EncoderSection | None = None
    media: MediaSection | None = None
    log: LogSection | None = None

    @field_validator("media")
    @classmethod
    def _network_sink_only(cls, media: MediaSection | None) -> MediaSection | None:
        if media is not None and media.sink is not None and not media.sink.startswith("rtp://"):
            raise ValueError("a pushed sink must be a network sink (rtp://HOST:PORT); file sinks are local")
        return media

    @field_validator("cameras")
    @classmethod
    def _device_nodes_only(cls, cameras: list[CameraSpec] | None) -> list[CameraSpec] | None:
        for camera in cameras or ():
            if camera.device is not None and not re.fullmatch(r"/dev/video[0-9]{1,3}", str(camera.device)):
                raise ValueError(f"camera {camera.id}: a pushed camera device must be /dev/videoN")
        return cameras


class LawfulOrder(_Strict):
    issuer: Annotated[str, Field(min_length=1, max_length=200)]
    id: Annotated[str, Field(min_length=1, max_length=200)]
    jurisdiction: Annotated[str, Field(pattern=r"^[A-Z]{2}(-[A-Z0-9]{1,3})?$")]


class _NoArgs(_Strict):
    pass


class _CameraArgs(_Strict):
    camera: Annotated[str, Field(pattern=_ID)] | None = None


class SnapshotRecipient(_Strict):
    """Who the snapshot is sealed to: an HPKE public key (``roomctl hpke-keygen``), base64."""

    kem: Literal["x25519", "mlkem768-x25519"]
    public_key: Annotated[str, Field(min_length=40, max_length=2048, pattern=r"^[A-Za-z0-9+/]+={0,2}$")]


class SnapshotArgs(_CameraArgs):
    """``snapshot`` args: the camera (default: the first one) and the requester's HPKE public key."""

    recipient: SnapshotRecipient


class _PresetArgs(_CameraArgs):
    preset: Annotated[str, Field(pattern=_ID)]


class _PtzArgs(_CameraArgs):
    pan: Annotated[float, Field(ge=-180, le=180)] | None = None
    tilt: Annotated[float, Field(ge=-90, le=90)] | None = None
    zoom: Annotated[float, Field(ge=1, le=100)] | None = None


class MeetingStopArgs(_Strict):
    """``meeting_stop`` args: the meeting whose keys are erased, or ``None`` for every meeting."""

    meeting: Annotated[str, Field(pattern=_ID)] | None = None


class AuditFetchArgs(_Strict):
    """``audit_fetch`` args: export the audit entries with ``seq >= from_seq``."""

    from_seq: Annotated[int, Field(ge=0, le=2**53 - 1)] = 0


class _InterventionArgs(_Strict):
    reason: Annotated[str, Field(max_length=500)] | None = None
    lawful_order: LawfulOrder | None = None


_ARGS: dict[str, type[BaseModel]] = {
    "keyframe": _NoArgs,
    "restart_pipeline": _NoArgs,
    "ptz_preset": _PresetArgs,
    "ptz": _PtzArgs,
    "snapshot": SnapshotArgs,
    "lock": _InterventionArgs,
    "unlock": _InterventionArgs,
    "deprovision": _InterventionArgs,
    "reboot": _NoArgs,
    "restart_agent": _NoArgs,
    "meeting_stop": MeetingStopArgs,
    "audit_fetch": AuditFetchArgs,
}


class CommandBody(_Strict):
    """``{"name", "args"}``; ``args`` is validated by the command's own strict model."""

    name: Literal[
        "keyframe",
        "restart_pipeline",
        "ptz_preset",
        "ptz",
        "snapshot",
        "lock",
        "unlock",
        "deprovision",
        "reboot",
        "restart_agent",
        "meeting_stop",
        "audit_fetch",
    ]
    args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_args(self) -> CommandBody:
        _ARGS[self.name].model_validate(self.args, strict=False)
        return self

    def lawful_order(self) -> LawfulOrder | None:
        raw = self.args.get("lawful_order")
        return None if raw is None else LawfulOrder.model_validate(raw, strict=False)


MAX_BUNDLE_BYTES = 4 * 1024**3  # a room's root file system slot is far smaller
_HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class TransparencyProof(_Strict):
    """Where the bundle sits in the firmware log (RFC 9162 2.1.3 inclusion proof) and the signed
    checkpoint (C2SP tlog-checkpoint) the proof leads to; ``roomctl log prove`` makes it."""

    index: Annotated[int, Field(ge=0)]
    tree_size: Annotated[int, Field(ge=1)]
    proof: Annotated[
        list[Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]{43}=$")]], Field(max_length=64)
    ]
    checkpoint: Annotated[str, Field(min_length=1, max_length=16 * 1024)]


class UpdateWindow(_Strict):
    """Daily UTC window in which the room may reboot into the new firmware (may wrap midnight)."""

    start: Annotated[str, Field(pattern=_HHMM)]
    end: Annotated[str, Field(pattern=_HHMM)]

    @model_validator(mode="after")
    def _not_empty(self) -> UpdateWindow:
        if self.start == self.end:
            raise ValueError("install_window start and end are equal: the window would be empty")
        return self


class UpdateBody(_Strict):
    """A firmware update: the bundle's version, length, SHA-256 and where to fetch it; its place in
    the transparency log; when the room may reboot (``None``: as soon as no meeting runs)."""

    firmware_version: Annotated[int, Field(ge=1, le=2**53 - 1)]
    length: Annotated[int, Field(ge=1, le=MAX_BUNDLE_BYTES)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    urls: Annotated[
        list[Annotated[str, Field(max_length=2048, pattern=r"^https?://[^\s]+$")]],
        Field(min_length=1, max_length=8),
    ]
    transparency: TransparencyProof
    install_window: UpdateWindow | None = None


class AckBody(_Strict):
    """The device's ack (docs/design.md), as the plane reads it."""

    kind: Literal["ack"]
    device: str
    doc_kind: str
    doc_version: int | None
    payload_sha256: str | None
    status: Literal["applied", "rejected", "rolled_back", "superseded"]
    reason: str | None
    message: str
    time: str


_MODELS: dict[str, type[BaseModel]] = {
    "root": RootBody,
    "policy": PolicyBody,
    "config": ConfigBody,
    "command": CommandBody,
    "keys": KeysBody,
    "update": UpdateBody,
}


def body_model(kind: str) -> type[BaseModel] | None:
    """The strict body model of ``kind``; ``None`` when unknown."""
    return _MODELS.get(kind)
