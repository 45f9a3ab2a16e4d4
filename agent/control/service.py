"""``ControlService``: the control plane as one supervised service.

Receives documents from :class:`~agent.control.link.ControlLink`, verifies them
(:func:`~agent.control.verify.verify_document`), applies them (root rotation, transactions for
policy/config, command and key handlers), acks every one with a signed envelope, audits every
outcome and publishes the retained state. Offline (no ``[mqtt] url``) it keeps running on
last-known-good.

Hooks for other subsystems (connected in ONE place, the composition root ``agent.daemon.room``):

- ``commands.register(name, handler)``: media registers ``keyframe``/``restart_pipeline``/
  ``ptz_preset``/``ptz``; privacy registers ``lock``/``unlock``/``deprovision``/``snapshot``/
  ``meeting_stop`` and ``keys`` (called with name ``"keys"`` and the key package body as ``args``);
  the control plane itself ``audit_fetch``; the daemon ``reboot``/``restart_agent``. The room refuses
  to start unless every command of the schema has exactly one handler (:meth:`CommandRegistry.missing`).
  A handler that
  declines in the device's current state raises :class:`~agent.control.errors.Refused` (acked
  ``rejected`` with its reason, audited as a rejection); any other exception is ``rolled_back``/
  ``apply_failed``.
- ``lock_state``: a callable returning True while the device is locked; media-affecting documents
  are then rejected with ``locked``.
- ``identity_providers`` / ``state_providers``: extra fields for the retained state (e.g.
  ``identity_providers["hpke"] = lambda: {...public keys...}``, ``state_providers["health"]``).
- ``publish_device(name, payload)``: other device topics (privacy's sealed ``snapshot``).
- ``state_filter``: applied to the state document before it is published (privacy's telemetry
  allow-list, so only what the policy lets leave reaches the broker);
  :meth:`ControlService.publish_state` republishes it after a change.
- ``device_state``: the daemon's runtime (:class:`DeviceState`), whose snapshot is the base of the
  state document and which learns the applied versions, identity, audit head and link state.
- Deferred outcomes (firmware updates): a handler that raises
  :class:`~agent.control.errors.Deferred` is acked later through :meth:`ControlService.report`;
  ``deferred_owner(kind, sha)`` says whether such an outcome is still to come, so a redelivery of
  the retained document is neither re-run nor acked as a rollback. ``firmware_version`` gives the
  running firmware's version to the verifier (rule 11).
"""

from __future__ import annotations

__all__ = ["MEDIA_AFFECTING", "CommandRegistry", "ControlService", "DeviceState"]

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import structlog

from agent import __version__
from agent.config import AgentConfig
from agent.control.ack import Ack, make_ack
from agent.control.apply import (
    TRANSACTIONAL,
    ApplyTarget,
    CommandHandler,
    ControlState,
    Outcome,
    Transactions,
)
from agent.control.audit import AuditLog
from agent.control.documents import CommandBody
from agent.control.dsse import Envelope, strict_json
from agent.control.errors import REASONS, Deferred, LinkError, Reason, Refused, Rejected
from agent.control.identity import DeviceIdentity
from agent.control.link import ControlLink, Topics
from agent.control.rejections import Intake, RejectionLedger, plausible
from agent.control.trust import TrustStore
from agent.control.verify import (
    MAX_VERSION,
    SIGNER_ROLES,
    VerifiedDocument,
    VerifyContext,
    payload_sha256,
    verify_document,
)
from agent.errors import StateError
from agent.schema.policy import PolicyBody
from agent.service import Progress

log = structlog.get_logger()

_TURN_S = 0.25  # link state reaches state.json within this
_OFFLINE_FLUSH_S = 2.0  # within the daemon's 5 s stop deadline
_CLOCKS = ("updated_at", "agent")  # change every call: not a reason to republish


def _content(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in _CLOCKS}


MEDIA_AFFECTING = frozenset({"keyframe", "restart_pipeline", "ptz_preset", "ptz", "snapshot"})


class DeviceState(Protocol):
    """The daemon's device state (``agent.daemon.runtime.Runtime``) as the control plane sees it."""

    def state_snapshot(self) -> dict[str, Any]: ...

    def update_state(self, **fields: Any) -> None: ...


class CommandRegistry:
    """Command handlers by name (one owner per name)."""

    def __init__(self) -> None:
        self._handlers: dict[str, CommandHandler] = {}

    def register(self, name: str, handler: CommandHandler) -> None:
        if name in self._handlers:
            raise ValueError(f"command {name!r} already has a handler")
        self._handlers[name] = handler

    def get(self, name: str) -> CommandHandler | None:
        return self._handlers.get(name)

    def names(self) -> frozenset[str]:
        return frozenset(self._handlers)

    def missing(self, expected: frozenset[str]) -> list[str]:
        """The names in ``expected`` without a handler (sorted)."""
        return sorted(expected - self._handlers.keys())


def _peek(raw: bytes, max_bytes: int) -> tuple[int | None, str | None]:
    """Best-effort version and payload digest of a rejected document, for its ack (never raises)."""
    if len(raw) > max_bytes:
        return None, None
    try:
        env = Envelope.parse(raw)
    except Exception:  # the same bounded parser as verification; any failure means "unknown"
        return None, None
    version = None
    try:
        payload = strict_json(env.payload)
        value = payload.get("version") if isinstance(payload, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_VERSION:
            version = value
    except Exception:  # noqa: S110 - a payload we cannot read simply has no version in the ack
        pass
    return version, payload_sha256(env.payload)


def _kind_of(topic: str) -> str:
    tail = topic.rsplit("/", 1)[-1]
    return {"cmd": "command"}.get(tail, tail)


class ControlService:
    """Implements the daemon's ``Service`` contract (``name``, ``async run(progress)``)."""

    name = "control"

    def __init__(
        self,
        config: AgentConfig,
        target: ApplyTarget,
        *,
        state_dir: Path | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        device_state: DeviceState | None = None,
        state_interval_s: float | None = None,
    ) -> None:
        self.config = config
        self.device = config.device.id
        self.groups = tuple(config.device.groups)
        state = Path(state_dir) if state_dir is not None else config.state_dir()
        self.identity = DeviceIdentity.load_or_create(state)
        self.trust = TrustStore(state, config.trust.root, max_bytes=config.control.max_document_bytes)
        self.state = ControlState(state)
        self.audit = AuditLog(state / "audit", self.identity, self.device)
        self.transactions = Transactions(self.state, target, health_timeout_s=config.control.health_timeout_s)
        self.target = target
        self.commands = CommandRegistry()
        self.lock_state: Callable[[], bool] = lambda: False
        self.identity_providers: dict[str, Callable[[], Any]] = {}
        self.state_providers: dict[str, Callable[[], Any]] = {}
        self.state_filter: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self.deferred_owner: Callable[[str, str], bool] = lambda kind, sha: False
        self.firmware_version: Callable[[], int] = lambda: 0
        self.health: dict[str, Any] = {"control": "starting"}
        self._clock = clock
        self._runtime = device_state  # the daemon's runtime (None stand-alone and in unit tests)
        self._state_interval_s = (
            state_interval_s if state_interval_s is not None else config.state.report_interval_s
        )
        self._published: dict[str, Any] | None = None  # last retained state, minus clocks
        self._will_applied: dict[str, Any] | None = None  # the versions the registered will reports
        self.online = False
        self._tg: asyncio.TaskGroup | None = None
        self.link: ControlLink | None = None
        self.topics = Topics(config.mqtt.prefix, self.device, self.groups)
        self.acks: list[tuple[Ack, Envelope]] = []  # recent acks, newest last (bounded)
        # Exceptions the message boundary caught that no rule names (a bug to fix; the fuzz targets
        # fail on any).
        self.unexpected_errors = 0
        self.intake = Intake(garbage_per_s=config.control.unsigned_per_s_per_topic)
        self._flushed_unprocessed: dict[str, int] = {}
        self._signer_ids: tuple[int, dict[str, frozenset[bytes]]] = (-1, {})
        self.rejections = RejectionLedger(
            acks_per_s=config.control.rejection_acks_per_s,
            audit_budget_bytes=config.control.rejection_audit_bytes_per_day,
            flush_interval_s=config.control.rejection_flush_s,
        )
        for kind, pending in self.state.recover():
            self.audit.append(
                "apply_interrupted",
                kind=kind,
                version=pending["version"],
                digest=pending["sha"],
                outcome="recovered",
                message=f"attempt {pending['attempts']}",
            )

    # -- state -----------------------------------------------------------------------------------
    def state_document(self, online: bool) -> dict[str, Any]:
        applied = {"root": self.trust.version, **self.state.applied_versions()}
        identity: dict[str, Any] = {"ed25519": self.identity.public_dict, "keyid": self.identity.keyid}
        for name, provider in self.identity_providers.items():
            identity[name] = provider()
        base: dict[str, Any] = self._runtime.state_snapshot() if self._runtime is not None else {}
        doc: dict[str, Any] = {
            **base,
            "device": self.device,
            "groups": list(self.groups),
            "online": online,
            "agent_version": __version__,
            "applied": applied,
            "health": {**base.get("health", {}), **self.health},
            "identity": identity,
            "audit_head": self.audit.head_summary(),
            # Damage to the audit log found at start (kept, a new segment begun): until an operator
            # has looked, every state says so.
            "audit_corrupt": self.audit.corruption_summary(),
            "locked": self.lock_state(),
            "rejections": {
                **self.rejections.summary(),
                **{f"unprocessed {t}": {"count": n} for t, n in sorted(self.intake.unprocessed.items())},
            },
        }
        for name, provider in self.state_providers.items():
            doc[name] = provider()
        return doc

    def _state_bytes(self, online: bool) -> bytes:
        doc = self.state_document(online)
        if self.state_filter is not None:
            doc = self.state_filter(doc)
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    def publish_state(self) -> None:
        """Publish the retained state now (another subsystem's part of it changed)."""
        self._publish_state()

    def publish_device(self, name: str, payload: bytes) -> None:
        """Publish ``payload`` on ``{prefix}/devices/{id}/{name}`` (QoS 1, not retained), e.g. a
        sealed snapshot. Dropped (logged) while the device runs offline."""
        if "/" in name or name in ("state", "ack", "audit", "cmd", "keys", "desired"):
            raise ValueError(f"not a free device topic: {name!r}")
        if self.link is None:
            log.warning("control_publish_offline", topic_name=name, size=len(payload))
            return
        self.link.publish_nowait(f"{self.topics.base}/{name}", payload)

    def current_state(self) -> dict[str, Any]:
        """The state document now (``online`` = link connected), before the telemetry filter.

        The daemon's state reporter writes it to ``<state>/state.json``: every field retained on the
        broker, with the same values, plus the local diagnostics the allow-list keeps on the device.
        """
        return self.state_document(self.online)

    def _publish_state(self) -> None:
        applied = {"root": self.trust.version, **self.state.applied_versions()}
        if self._runtime is not None:
            self._runtime.update_state(
                applied=applied,
                identity=self.state_document(True)["identity"],
                audit_head=self.audit.head_summary(),
                audit_corrupt=self.audit.corruption_summary(),
            )
        if self.link is not None:
            payload = self._state_bytes(True)
            self.link.publish_nowait(self.topics.state, payload, retain=True)
            self._published = _content(json.loads(payload))
            if applied != self._will_applied and self.link.connected.is_set():
                # The will registered at connect names older versions: a crash now would report
                # them. Re-register it (docs/adr/0020-last-will-refresh.md).
                self._will_applied = applied
                self.link.refresh_will()

    def _republish_if_changed(self) -> None:
        """Publish the retained state again when its content (not just its clocks) changed, e.g. media
        counters or a service's health: at most once per report interval."""
        if self.link is None or not self.link.connected.is_set():
            return
        if _content(json.loads(self._state_bytes(True))) != self._published:
            self._publish_state()

    async def _say_offline(self) -> None:
        """Before a clean disconnect (SIGTERM): the retained state says ``online: false`` with the
        versions applied now; a clean DISCONNECT suppresses the will, so nobody else would."""
        if self.link is None:
            return
        self.link.close()  # no will refresh or reconnect from now on
        if not self.link.connected.is_set():
            return
        self.link.publish_nowait(self.topics.state, self._state_bytes(False), retain=True)
        delivered = await self.link.flush(_OFFLINE_FLUSH_S)
        log.info("control_offline_published", delivered=delivered)

    # -- documents -------------------------------------------------------------------------------
    def _context(self) -> VerifyContext:
        policy = self.state.last_known_good("policy")
        assert isinstance(policy, PolicyBody)
        last = self.state.last_versions()
        last["root"] = self.trust.version
        for kind in TRANSACTIONAL:
            # Only a newer version may supersede the transaction in progress.
            running = self.transactions.running(kind)
            if running is not None:
                last[kind] = max(last.get(kind, 0), running.version)
        return VerifyContext(
            self.device,
            self.groups,
            self._clock(),
            last,
            policy,
            self.config.control.max_document_bytes,
            self.config.control.clock_skew_s,
            self.firmware_version(),
        )

    def _ack(self, ack: Ack, *, priority: bool = True) -> None:
        """Sign and queue an ack. Acks of authenticated documents go first in the outbound queue
        and are never dropped; acks of unauthenticated rejections wait with everything else."""
        env = make_ack(self.identity, self.device, ack, self._clock())
        self.acks = [*self.acks[-63:], (ack, env)]
        if self.link is not None:
            self.link.publish_nowait(self.topics.ack, env.to_json(), priority=priority)

    def _audit(
        self,
        event: str,
        *,
        kind: str,
        version: int | None,
        digest: str | None,
        signers: tuple[str, ...] = (),
        outcome: str,
        reason: str | None = None,
        message: str | None = None,
        unauthenticated: bool = False,
    ) -> bool:
        """Append an audit entry and publish it; False (logged) when the disk refuses it.

        ``unauthenticated`` entries count against the rejection ledger's daily byte budget."""
        try:
            entry = self.audit.append(
                event,
                kind=kind,
                version=version,
                digest=digest,
                signers=signers,
                outcome=outcome,
                reason=reason,
                message=message,
                now=self._clock(),
            )
        except StateError as exc:
            log.error("control_audit_write_failed", audit_event=event, kind=kind, reason=exc.reason)
            return False
        line = json.dumps(entry, sort_keys=True).encode()
        if unauthenticated:
            self.rejections.spend(len(line) + 1)
        if self.link is not None:
            self.link.publish_nowait(self.topics.audit, line)
        return True

    def _refuse_unrecorded(self, doc: VerifiedDocument, what: str, exc: StateError | None = None) -> None:
        # Fail closed: a document whose acceptance cannot be recorded is not acted on.
        message = f"cannot persist {what}: {exc.reason if exc else 'audit log write failed'}"[:300]
        self._ack(Ack(doc.kind, doc.version, doc.payload_sha256, "rejected", "state_error", message))
        log.error("control_state_error", kind=doc.kind, version=doc.version, what=what)

    async def handle(self, kind: str, raw: bytes, topic: str | None = None) -> None:
        """Verify one document from a ``kind`` topic, then apply it (in a task) and ack it.

        The message boundary: nothing an untrusted message does escapes from here. Every failure
        becomes a typed rejection (acked and audited, or counted when unauthenticated) and the
        link stays up (a retained poison message would otherwise kill it on every reconnect).
        """
        try:
            await self._handle(kind, raw, topic or kind)
        except Exception as exc:  # CancelledError is a BaseException: it passes
            self.unexpected_errors += 1
            log.error("control_message_failed", kind=kind, error=type(exc).__name__)
            with contextlib.suppress(Exception):
                self._reject(kind, raw, topic or kind, Rejected("malformed", f"{type(exc).__name__}"))

    def _verify(self, kind: str, raw: bytes) -> VerifiedDocument:
        if self.trust.root is None:
            raise Rejected("bad_signature", "this device has no trust root")
        try:
            doc = verify_document(raw, kind, self.trust.root, self._context())
        except Rejected:
            raise
        except Exception as exc:
            # A bug or a resource limit in parsing is still the sender's input: typed, never fatal.
            self.unexpected_errors += 1
            log.error("control_verify_failed", kind=kind, error=type(exc).__name__)
            raise Rejected("malformed", f"could not parse: {type(exc).__name__}") from exc
        if self.lock_state() and (
            kind in ("config", "keys")
            or (isinstance(doc.body, CommandBody) and doc.body.name in MEDIA_AFFECTING)
        ):
            self._refuse_locked(doc)
        return doc

    def _refuse_locked(self, doc: VerifiedDocument) -> None:
        """A verified document refused while locked is *remembered* as refused (its version spent,
        its outcome recorded): a redelivery after the unlock is acked ``rejected`` again, never
        applied without a new signed action."""
        message = "the device is locked: media-affecting documents are refused"
        if doc.kind not in TRANSACTIONAL:
            try:
                self.state.accept(doc)
                self.state.record(doc, Outcome("rejected", "locked", message))
            except StateError as exc:
                log.error("control_state_write_failed", kind=doc.kind, version=doc.version, reason=exc.reason)
        raise Rejected("locked", message, authenticated=True)

    def _reject(
        self,
        kind: str,
        raw: bytes,
        topic: str,
        rej: Rejected,
        peeked: tuple[int | None, str | None] | None = None,
    ) -> None:
        version, sha = peeked if peeked is not None else _peek(raw, self.config.control.max_document_bytes)
        if not rej.authenticated:
            admission = self.rejections.admit(rej.reason, topic, raw, self._clock())
            if admission.audit:
                self._audit(
                    "rejected",
                    kind=kind,
                    version=version,
                    digest=sha,
                    outcome="rejected",
                    reason=rej.reason,
                    message=rej.message,
                    unauthenticated=True,
                )
            if admission.ack:
                self._ack(Ack(kind, version, sha, "rejected", rej.reason, rej.message), priority=False)
            log.debug("control_rejected", kind=kind, reason=rej.reason, version=version)
            return
        self._audit(
            "rejected",
            kind=kind,
            version=version,
            digest=sha,
            outcome="rejected",
            reason=rej.reason,
            message=rej.message,
        )
        self._ack(Ack(kind, version, sha, "rejected", rej.reason, rej.message))
        log.info("control_rejected", kind=kind, reason=rej.reason, version=version)

    def flush_rejections(self) -> None:
        """Write the coalesced counters of unauthenticated rejections (due every flush interval)."""
        unprocessed = dict(self.intake.unprocessed)
        for topic, total in sorted(unprocessed.items()):
            new = total - self._flushed_unprocessed.get(topic, 0)
            if new > 0:
                self.rejections.count_unprocessed(topic, new, self._clock())
        self._flushed_unprocessed = unprocessed
        for reason, topic, message in self.rejections.flush(self._clock()):
            self._audit(
                "rejections_coalesced",
                kind=_kind_of(topic),
                version=None,
                digest=None,
                outcome="rejected",
                reason=reason,
                message=message,
                unauthenticated=True,
            )

    async def _handle(self, kind: str, raw: bytes, topic: str) -> None:
        try:
            doc = self._verify(kind, raw)
        except Rejected as rej:
            # (Garbage that is not even an envelope is not parsed a second time.)
            version, sha = (
                (None, None) if rej.unreadable else _peek(raw, self.config.control.max_document_bytes)
            )
            running = self.transactions.running(kind)
            if rej.reason == "rollback" and sha is not None:
                earlier = self.state.outcome(kind, sha)
                if earlier is not None:  # redelivery (retained or QoS 1 duplicate): ack again, no re-apply
                    self._ack(
                        Ack(
                            kind,
                            version,
                            sha,
                            earlier.status,
                            earlier.reason,
                            earlier.message,
                        )
                    )
                    return
            if rej.reason == "rollback" and running is not None and running.payload_sha256 == sha:
                return  # duplicate of the transaction in progress: its ack follows
            if rej.reason == "rollback" and sha is not None and self.deferred_owner(kind, sha):
                return  # redelivery of a document whose outcome is still to come (update)
            self._reject(kind, raw, topic, rej, (version, sha))
            return
        if not self._audit(
            "accepted",
            kind=kind,
            version=doc.version,
            digest=doc.payload_sha256,
            signers=doc.signer_keyids,
            outcome="accepted",
            message="+".join(sorted(doc.roles)),
        ):
            self._refuse_unrecorded(doc, "the audit entry")
            return
        if kind == "root":
            try:
                self.trust.rotate(doc, raw)
            except StateError as exc:
                self._refuse_unrecorded(doc, "the new root", exc)
                return
            self._finish(doc, Outcome("applied", None, f"root v{doc.version} trusted"))
            self._publish_state()
            return
        if kind in TRANSACTIONAL:
            superseded = await self.transactions.supersede(kind)
            if superseded is not None:
                self._finish(
                    superseded,
                    Outcome("superseded", "superseded", f"superseded by v{doc.version}"),
                    audit_event="superseded",
                )
            self._spawn(self._transaction(doc), f"control.apply.{kind}.v{doc.version}", doc)
            return
        try:
            self.state.accept(doc)  # commands and keys: the version is spent before acting (no replay)
        except StateError as exc:
            self._refuse_unrecorded(doc, "the command version", exc)
            return
        self._spawn(self._command(doc), f"control.{kind}.v{doc.version}", doc)

    def _spawn(self, coro: Any, name: str, doc: VerifiedDocument) -> None:
        if self._tg is None:
            coro.close()
            raise RuntimeError("ControlService.handle needs run() to be active")
        self._tg.create_task(self._guarded(coro, doc), name=name)

    async def _guarded(self, coro: Any, doc: VerifiedDocument) -> None:
        """An apply task never takes the control service (and its link) down with it: whatever it
        raises is acked ``rolled_back``/``apply_failed`` (CancelledError passes)."""
        try:
            await coro
        except Exception as exc:
            self.unexpected_errors += 1
            log.error("control_apply_crashed", kind=doc.kind, version=doc.version, error=type(exc).__name__)
            with contextlib.suppress(Exception):
                self._ack(
                    Ack(
                        doc.kind,
                        doc.version,
                        doc.payload_sha256,
                        "rolled_back",
                        "apply_failed",
                        type(exc).__name__,
                    )
                )

    def _finish(self, doc: VerifiedDocument, outcome: Outcome, audit_event: str | None = None) -> None:
        if doc.kind not in TRANSACTIONAL:  # transactions record their outcome in the same atomic write
            try:
                self.state.record(doc, outcome)
            except StateError as exc:
                log.error("control_state_write_failed", kind=doc.kind, version=doc.version, reason=exc.reason)
        self._audit(
            audit_event or outcome.status,
            kind=doc.kind,
            version=doc.version,
            digest=doc.payload_sha256,
            signers=doc.signer_keyids,
            outcome=outcome.status,
            reason=outcome.reason,
            message=outcome.message,
        )
        self._ack(
            Ack(
                doc.kind,
                doc.version,
                doc.payload_sha256,
                outcome.status,
                outcome.reason,
                outcome.message,
            )
        )

    async def _transaction(self, doc: VerifiedDocument) -> None:
        outcome = await self.transactions.run(doc)  # CancelledError (superseded/shutdown) propagates
        self._finish(doc, outcome)
        self._publish_state()

    async def _command(self, doc: VerifiedDocument) -> None:
        name: str
        if isinstance(doc.body, CommandBody):
            name, args = doc.body.name, doc.body.args
        else:
            name, args = doc.kind, doc.body.model_dump(mode="json")
        handler = self.commands.get(name)
        if handler is None:
            self._finish(doc, Outcome("rolled_back", "apply_failed", f"no handler for {name} on this device"))
            return
        try:
            message = await handler(name, args, doc)
        except Deferred:  # the owner acks it later through report()
            log.info("control_deferred", kind=doc.kind, version=doc.version)
            return
        except Refused as exc:  # declined in the device's current state: a rejection, nothing changed
            reason: Reason = exc.reason if exc.reason in REASONS else "invalid_body"  # type: ignore[assignment]
            self._finish(doc, Outcome("rejected", reason, exc.message[:300]))
            log.info("control_refused", kind=doc.kind, command=name, reason=reason, version=doc.version)
            return
        except Exception as exc:  # a handler may fail in any way; the command simply did not happen
            self._finish(doc, Outcome("rolled_back", "apply_failed", f"{type(exc).__name__}: {exc}"[:300]))
            return
        self._finish(doc, Outcome("applied", None, message[:300]))
        self._publish_state()

    def report(
        self, kind: str, version: int, sha: str, signers: tuple[str, ...], outcome: Outcome
    ) -> None:
        """Record, audit and ack the outcome of a document whose handler raised ``Deferred`` (it may
        come after a reboot: everything needed is passed in, nothing is taken from memory)."""
        try:
            self.state.record_outcome(kind, sha, outcome)
        except StateError as exc:
            log.error("control_state_write_failed", kind=kind, version=version, reason=exc.reason)
        self._audit(
            outcome.status,
            kind=kind,
            version=version,
            digest=sha,
            signers=signers,
            outcome=outcome.status,
            reason=outcome.reason,
            message=outcome.message,
        )
        self._ack(Ack(kind, version, sha, outcome.status, outcome.reason, outcome.message))
        self._publish_state()

    # -- service ---------------------------------------------------------------------------------
    def _track_link(self) -> None:
        online = self.link is not None and self.link.connected.is_set()
        if online != self.online:
            self.online = online
            if self._runtime is not None:
                self._runtime.update_state(online=online)
            if online:
                self._published = None  # the link published a fresh state on connect

    def _signer_keyids(self, kind: str) -> frozenset[bytes]:
        """Key ids (ASCII, lower case) of the keys that may sign ``kind`` under the trusted root."""
        root = self.trust.root
        if root is None:
            return frozenset()
        version, cache = self._signer_ids
        if version != root.version:
            cache = {}
            for name in (*SIGNER_ROLES, "root"):
                roles = SIGNER_ROLES.get(name, frozenset({"root"}))
                cache[name] = frozenset(
                    k.encode() for r in roles if r in root.roles for k in root.roles[r].keyids
                )
            self._signer_ids = (root.version, cache)
        return cache.get(kind, frozenset())

    async def _on_message(self, topic: str, kind: str, payload: bytes) -> None:
        """The link's callback: triage into the intake lanes (never blocks, never raises)."""
        try:
            likely = plausible(payload, self._signer_keyids(kind), self.config.control.max_document_bytes)
            self.intake.put(topic, kind, payload, likely, self._clock())
        except Exception as exc:  # nothing a message does ends the link
            self.unexpected_errors += 1
            log.error("control_intake_failed", kind=kind, error=type(exc).__name__)

    async def _intake_worker(self) -> None:
        """Verify and apply what the link delivered: plausible documents first, garbage after."""
        while True:
            item = self.intake.take()
            if item is None:
                await self.intake.ready.wait()
                continue
            topic, kind, payload = item
            await self.handle(kind, payload, topic)
            await asyncio.sleep(0)  # let the link read on between messages

    async def run(self, progress: Progress) -> None:
        """Run until cancelled: the link (if configured) and the apply tasks, in one TaskGroup."""
        self.health["control"] = "ok"
        self._publish_state()
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                try:
                    self.link = ControlLink(
                        self.config.mqtt, self.topics, self._on_message, self._state_bytes
                    )
                except LinkError as exc:
                    log.info("control_offline", reason=str(exc))
                    self.link = None
                if self.link is not None:
                    # The will of the first connection carries the versions applied at start.
                    self._will_applied = {"root": self.trust.version, **self.state.applied_versions()}
                    tg.create_task(self._intake_worker(), name="control.intake")
                    tg.create_task(self.link.run(progress.beat), name="control.link")
                next_report = loop.time() + self._state_interval_s
                try:
                    while True:
                        progress.beat()
                        self._track_link()
                        if loop.time() >= next_report:
                            next_report = loop.time() + self._state_interval_s
                            self._republish_if_changed()
                        if self.rejections.flush_due(self._clock()):
                            self.flush_rejections()
                        await asyncio.sleep(_TURN_S)
                except asyncio.CancelledError:
                    await self._say_offline()  # the link is still up: the TaskGroup cancels it after
                    raise
            finally:
                self._tg = None
                with contextlib.suppress(Exception):  # best effort at shutdown; counts are in the state
                    self.flush_rejections()
