"""Account interventions (lock, unlock, deprovision) and the remote-snapshot gate.

Who may sign (docs/design.md "Who may sign what"): ``customer``, or ``legal`` with a lawful-order reference
whose jurisdiction equals the device's policy jurisdiction. The control verifier enforces it before a
command reaches us, with :func:`authorize_intervention` (pure, shared so the rule lives in one place).

State machine, persisted atomically (``agent.persist``) so a restart cannot unlock a room::

    active --lock--> locked --unlock--> active
    active|locked --deprovision--> deprovisioned   (terminal: keys wiped, media off)

Every transition is audited (the control plane's audit log, through the ``audit`` callback) and
announced in the room (``Camera.announce``: the indicator shows NOTICE on the sim). While locked or
deprovisioned, media stops, meeting keys are refused and :meth:`InterventionState.refusal` gives the
``locked`` reason for everything but the interventions themselves and trust-root/policy documents.
"""

from __future__ import annotations

__all__ = [
    "INTERVENTIONS",
    "InterventionListener",
    "InterventionRecord",
    "InterventionState",
    "LawfulOrder",
    "RoomState",
    "authorize_intervention",
    "check_snapshot",
]

import enum
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Protocol

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.persist import atomic_write_json, read_json
from agent.privacy.errors import InterventionError
from agent.schema.policy import PolicyBody

INTERVENTIONS: frozenset[str] = frozenset({"lock", "unlock", "deprovision"})
_FORMAT = 1


class RoomState(enum.Enum):
    ACTIVE = "active"
    LOCKED = "locked"
    DEPROVISIONED = "deprovisioned"


class LawfulOrder(BaseModel):
    """``args.lawful_order`` of an intervention signed by ``legal``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    issuer: Annotated[str, Field(min_length=1, max_length=200)]
    id: Annotated[str, Field(min_length=1, max_length=200)]
    jurisdiction: Annotated[str, Field(pattern=r"^[A-Z]{2}(-[A-Z0-9]{1,3})?$")]


def authorize_intervention(
    roles_met: Iterable[str], args: Mapping[str, Any], policy: PolicyBody
) -> str | None:
    """Whether an intervention (lock/unlock/deprovision) may run: ``None`` or a rejection reason.

    ``roles_met`` are the roles whose signature threshold the envelope meets. Returns
    ``needs_customer`` when neither customer nor legal signed (or legal signed with no lawful order),
    ``lawful_order_mismatch`` when legal's lawful order is malformed or of another jurisdiction than
    the device's policy jurisdiction (or the device has none).
    """
    roles = set(roles_met)
    if "customer" in roles:
        return None
    if "legal" not in roles:
        return "needs_customer"
    raw = args.get("lawful_order")
    if raw is None:
        return "needs_customer"  # legal alone, with no order at all: as agent.control.verify
    try:
        order = LawfulOrder.model_validate(raw)
    except ValidationError:
        return "lawful_order_mismatch"
    # A room with no jurisdiction set obeys no lawful order without its customer.
    if policy.jurisdiction is None or order.jurisdiction != policy.jurisdiction:
        return "lawful_order_mismatch"
    return None


def check_snapshot(roles_met: Iterable[str], policy: PolicyBody, state: RoomState) -> str | None:
    """Whether a ``snapshot`` command may run: ``None`` or a rejection reason."""
    if "customer" not in set(roles_met):
        return "needs_customer"
    if state is not RoomState.ACTIVE:
        return "locked"
    if not policy.camera.remote_snapshot:
        return "forbidden_by_policy"
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class InterventionRecord:
    """The persisted state: what the room is, since when, by whose order (no personal data)."""

    state: RoomState
    since: str
    command: str | None = None
    role: str | None = None
    order_issuer: str | None = None
    order_id: str | None = None
    order_jurisdiction: str | None = None
    doc_version: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"format": _FORMAT, **asdict(self), "state": self.state.value}

    @classmethod
    def from_json(cls, data: Any) -> InterventionRecord:
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError("unknown intervention state format")
        fields = {k: v for k, v in data.items() if k != "format"}
        fields["state"] = RoomState(fields["state"])
        return cls(**fields)


class Announcer(Protocol):
    """What announces in the room: the HAL camera (``Camera.announce``)."""

    async def announce(self, message: str) -> None: ...


InterventionListener = Callable[[InterventionRecord], Awaitable[None]]
AuditFn = Callable[[str, dict[str, Any]], None]

_MESSAGES = {
    RoomState.LOCKED: "This room has been locked by {who}. Cameras and media are off.",
    RoomState.ACTIVE: "This room has been unlocked by {who}.",
    RoomState.DEPROVISIONED: "This room has been deprovisioned by {who}. Cameras and media are off.",
}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class InterventionState:
    """The room's intervention state, its persistence and the hooks run on each transition.

    Args:
        path: the persisted state file (``<state_dir>/privacy/intervention.json``).
        audit: appends an audit entry (``event``, ``fields``); the control plane's audit log.
        announcers: the room's cameras (each ``announce``s the intervention).
    """

    def __init__(
        self,
        path: Path,
        *,
        audit: AuditFn | None = None,
        announcers: Iterable[Announcer] = (),
        clock: Callable[[], str] = _now,
    ) -> None:
        self._path = Path(path)
        self._audit = audit
        self._announcers = list(announcers)
        self._listeners: list[InterventionListener] = []
        self._clock = clock
        self._log = structlog.get_logger()
        data = read_json(self._path)  # StateError if corrupt: refuse to start rather than guess
        if data is None:
            self._record = InterventionRecord(state=RoomState.ACTIVE, since=clock())
        else:
            try:
                self._record = InterventionRecord.from_json(data)
            except (KeyError, TypeError, ValueError) as exc:
                raise InterventionError("state_corrupt", f"{self._path}: {exc}") from exc

    @property
    def record(self) -> InterventionRecord:
        return self._record

    @property
    def state(self) -> RoomState:
        return self._record.state

    @property
    def media_allowed(self) -> bool:
        return self._record.state is RoomState.ACTIVE

    def add_listener(self, listener: InterventionListener) -> None:
        """Run ``listener(record)`` after each transition (media stops, keys are cleared, ...)."""
        self._listeners.append(listener)

    def set_audit(self, audit: AuditFn | None) -> None:
        """Where intervention audit entries go (the device's audit log)."""
        self._audit = audit

    def add_announcer(self, announcer: Announcer) -> None:
        self._announcers.append(announcer)

    def state_fragment(self) -> dict[str, Any]:
        """For the retained state: ``privacy`` → state, locked flag, since."""
        return {
            "state": self._record.state.value,
            "locked": self._record.state is not RoomState.ACTIVE,
            "since": self._record.since,
        }

    def refusal(self, doc_kind: str, command: str | None = None) -> str | None:
        """``locked`` when a document must be refused in the current state, else ``None``."""
        if self._record.state is RoomState.ACTIVE:
            return None
        if doc_kind in ("root", "policy"):
            return None  # trust and privacy policy stay manageable (a policy can only be stored)
        if doc_kind == "command" and command in INTERVENTIONS:
            return None
        return "locked"

    async def apply(
        self,
        command: str,
        args: Mapping[str, Any],
        *,
        roles_met: Iterable[str],
        policy: PolicyBody,
        doc_version: int | None = None,
    ) -> InterventionRecord:
        """Run an intervention command that the control verifier accepted.

        The signer rule is checked again here (defence in depth: this is the last gate before the room
        changes). Persist first, then run the hooks: a crash after the write still finds the room locked
        on restart.

        Raises:
            InterventionError: ``needs_customer``, ``lawful_order_mismatch``, ``invalid_body`` (not an
                intervention) or ``deprovisioned`` (nothing runs after deprovisioning); state unchanged.
            StateError: the new state could not be persisted; state unchanged.
        """
        if command not in INTERVENTIONS:
            raise InterventionError("invalid_body", f"{command!r} is not an intervention")
        roles = set(roles_met)
        reason = authorize_intervention(roles, args, policy)
        if reason is not None:
            raise InterventionError(reason, f"{command} not authorised")
        old = self._record
        if old.state is RoomState.DEPROVISIONED:
            raise InterventionError("deprovisioned", "the room is deprovisioned; re-provision it locally")
        target = {
            "lock": RoomState.LOCKED,
            "unlock": RoomState.ACTIVE,
            "deprovision": RoomState.DEPROVISIONED,
        }[command]
        role = "customer" if "customer" in roles else "legal"
        order = LawfulOrder.model_validate(args["lawful_order"]) if role == "legal" else None
        new = InterventionRecord(
            state=target,
            since=self._clock() if target is not old.state else old.since,
            command=command,
            role=role,
            order_issuer=order.issuer if order else None,
            order_id=order.id if order else None,
            order_jurisdiction=order.jurisdiction if order else None,
            doc_version=doc_version,
        )
        atomic_write_json(self._path, new.to_json())
        self._record = new
        changed = target is not old.state
        self._log.info(
            "intervention_applied", command=command, role=role, state=target.value, changed=changed
        )
        if self._audit is not None:
            self._audit(
                "intervention",
                {
                    "command": command,
                    "role": role,
                    "state": target.value,
                    "changed": changed,
                    "lawful_order": None if order is None else order.model_dump(),
                    "doc_version": doc_version,
                },
            )
        if changed:
            # Stopping media comes first; a failing hook must not keep the others from running.
            for listener in self._listeners:
                await self._run_hook("listener", listener(new))
            who = (
                "the customer" if role == "customer" else f"a lawful order ({order.issuer if order else ''})"
            )
            message = _MESSAGES[target].format(who=who)
            for announcer in self._announcers:
                await self._run_hook("announce", announcer.announce(message))
        return new

    async def _run_hook(self, kind: str, hook: Awaitable[None]) -> None:
        try:
            await hook
        except Exception as exc:  # the transition is persisted; report the hook and carry on
            self._log.error("intervention_hook_failed", hook=kind, error=type(exc).__name__)
