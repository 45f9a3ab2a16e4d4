"""The privacy policy body and the rule that classifies every change to it.

Outside checks read these JSON paths of a policy body: ``e2ee.required``, ``e2ee.suites``,
``camera.shutter_when_idle``, ``camera.remote_snapshot``, ``camera.remote_ptz``,
``telemetry.level``, ``jurisdiction``, ``updates.mode``. A change that weakens privacy on any axis
needs both the ``fleet`` and the ``customer`` thresholds (docs/design.md "Who may sign what").
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_POLICY",
    "SUITE_STRENGTH",
    "CameraPolicy",
    "Change",
    "E2eePolicy",
    "PolicyBody",
    "TelemetryPolicy",
    "UpdatesPolicy",
    "classify_change",
    "weakenings",
]

import enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# SFrame cipher suites (RFC 9605 §4.5) ranked by strength: 256-bit GCM, then 128-bit GCM, then
# CTR-HMAC with an 80-, 64- and 32-bit tag. A higher number is stronger.
SUITE_STRENGTH: dict[int, int] = {0x0005: 5, 0x0004: 4, 0x0001: 3, 0x0002: 2, 0x0003: 1}
_TELEMETRY_RANK = {"none": 0, "minimal": 1, "standard": 2}
_KEM_RANK = {"x25519": 0, "mlkem768-x25519": 1}
# Who decides about firmware: nobody (pinned), fleet and customer together, or the fleet alone.
# Moving right gives the vendor more power over the room's code, so it is a privacy weakening.
_UPDATES_RANK = {"pinned": 0, "customer_approval": 1, "automatic": 2}
# ISO 3166-1 alpha-2, optionally with an ISO 3166-2 subdivision ("DE", "DE-BY", "US-CA").
_JURISDICTION = r"^[A-Z]{2}(-[A-Z0-9]{1,3})?$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class E2eePolicy(_Strict):
    required: bool = True
    suites: Annotated[list[int], Field(min_length=1)] = Field(default_factory=lambda: [0x0004, 0x0005])
    kem: Literal["x25519", "mlkem768-x25519"] = "x25519"

    @field_validator("suites")
    @classmethod
    def _known_suites(cls, suites: list[int]) -> list[int]:
        unknown = [s for s in suites if s not in SUITE_STRENGTH]
        if unknown:
            raise ValueError(f"unknown SFrame cipher suites {unknown}; RFC 9605 defines 1-5")
        if len(set(suites)) != len(suites):
            raise ValueError("suites must not repeat")
        return suites


class CameraPolicy(_Strict):
    shutter_when_idle: bool = True
    remote_snapshot: bool = False
    remote_ptz: bool = True


class TelemetryPolicy(_Strict):
    level: Literal["none", "minimal", "standard"] = "minimal"
    # Extra field names allowed out beyond what the level itself needs (state/log keys).
    fields: list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.]{0,63}$")]] = Field(default_factory=list)


class UpdatesPolicy(_Strict):
    """Firmware updates: ``automatic`` (fleet signature enough), ``customer_approval`` (the update
    must also carry the customer's signature) or ``pinned`` (no updates at all)."""

    mode: Literal["automatic", "customer_approval", "pinned"] = "customer_approval"


class PolicyBody(_Strict):
    e2ee: E2eePolicy = Field(default_factory=E2eePolicy)
    camera: CameraPolicy = Field(default_factory=CameraPolicy)
    telemetry: TelemetryPolicy = Field(default_factory=TelemetryPolicy)
    updates: UpdatesPolicy = Field(default_factory=UpdatesPolicy)
    jurisdiction: Annotated[str, Field(pattern=_JURISDICTION)] | None = None


DEFAULT_POLICY = PolicyBody()
"""First-boot policy: E2EE required, shutter when idle, no remote snapshot, minimal telemetry, firmware
updates only with the customer's approval."""


class Change(enum.Enum):
    KEEP = "keep"
    TIGHTEN = "tighten"
    WEAKEN = "weaken"


def weakenings(old: PolicyBody, new: PolicyBody) -> list[str]:
    """The JSON paths on which ``new`` gives less privacy than ``old`` (empty: no weakening)."""
    out: list[str] = []
    if old.e2ee.required and not new.e2ee.required:
        out.append("e2ee.required")
    old_s = [SUITE_STRENGTH[s] for s in old.e2ee.suites]
    new_s = [SUITE_STRENGTH[s] for s in new.e2ee.suites]
    # A weaker suite allowed, or the strongest one taken away ("fewer/weaker suites").
    if min(new_s) < min(old_s) or max(new_s) < max(old_s):
        out.append("e2ee.suites")
    if _KEM_RANK[new.e2ee.kem] < _KEM_RANK[old.e2ee.kem]:
        out.append("e2ee.kem")
    if old.camera.shutter_when_idle and not new.camera.shutter_when_idle:
        out.append("camera.shutter_when_idle")
    if new.camera.remote_snapshot and not old.camera.remote_snapshot:
        out.append("camera.remote_snapshot")
    if new.camera.remote_ptz and not old.camera.remote_ptz:
        out.append("camera.remote_ptz")
    if _TELEMETRY_RANK[new.telemetry.level] > _TELEMETRY_RANK[old.telemetry.level]:
        out.append("telemetry.level")
    if set(new.telemetry.fields) - set(old.telemetry.fields):
        out.append("telemetry.fields")
    if _UPDATES_RANK[new.updates.mode] > _UPDATES_RANK[old.updates.mode]:
        out.append("updates.mode")
    # Jurisdiction decides whose lawful orders the room obeys: any change needs the customer.
    if new.jurisdiction != old.jurisdiction:
        out.append("jurisdiction")
    return out


def classify_change(old: PolicyBody, new: PolicyBody) -> Change:
    """Keep, tighten or weaken: weakening on any axis wins over tightening on another."""
    if weakenings(old, new):
        return Change.WEAKEN
    return Change.KEEP if old == new else Change.TIGHTEN
