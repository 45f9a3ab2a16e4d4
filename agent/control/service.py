"""``ControlService``: the control plane as one supervised service.

Receives documents from :class:`~agent.control.link.ControlLink`, verifies them
(:func:`~agent.control.verify.verify_document`), applies them (root rotation, transactions for
policy/config, command and key handlers), acks every one with a signed envelope, audits every
outcome and publishes the retained state. Offline (no ``[mqtt] url``) it keeps running on
last-known-good.

Hooks for other subsystems:

- ``commands.register(name, handler)``: media registers ``keyframe``/``restart_pipeline``/
  ``ptz_preset``/``ptz``; privacy registers ``lock``/``unlock``/``deprovision``/``snapshot`` and
  ``keys`` (called with name ``"keys"`` and the key package body as ``args``). A handler that
  declines in the device's current state raises :class:`~agent.control.errors.Refused` (acked
  ``rejected`` with its reason, audited as a rejection); any other exception is ``rolled_back``/
  ``apply_failed``.
- ``lock_state``: a callable returning True while the device is locked; media-affecting documents
  are then rejected with ``locked``.
- ``identity_providers`` / ``state_providers``: extra fields for the retained state (e.g.
  ``identity_providers["hpke"] = lambda: {...public keys...}``, ``state_providers["health"]``).
- ``publish_device(name, payload)``: other device topics (privacy's sealed ``snapshot``).
- ``state_filter``: applied to the state document before it is published (privacy's telemetry
  allow-list); :meth:`ControlService.publish_state` republishes it after a change.
- Deferred outcomes (firmware updates): a handler that raises
  :class:`~agent.control.errors.Deferred` is acked later through :meth:`ControlService.report`;
  ``deferred_owner(kind, sha)`` says whether such an outcome is still to come, so a redelivery of
  the retained document is neither re-run nor acked as a rollback. ``firmware_version`` gives the
  running firmware's version to the verifier (rule 11).
"""

from __future__ import annotations

__all__ = ["MEDIA_AFFECTING", "CommandRegistry", "ControlService", "Progress", "services"]

import asyncio
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
from agent.control.trust import TrustStore
from agent.control.verify import VerifiedDocument, VerifyContext, payload_sha256, verify_document
from agent.errors import StateError
from agent.privacy.policy import PolicyBody

log = structlog.get_logger()

MEDIA_AFFECTING = frozenset({"keyframe", "restart_pipeline", "ptz_preset", "ptz", "snapshot"})


class Progress(Protocol):
    def beat(self) -> None: ...


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


def _peek(raw: bytes, max_bytes: int) -> tuple[int | None, str | None]:
    """Best-effort version and payload digest of a rejected document, for its ack."""
    if len(raw) > max_bytes:
        return None, None
    try:
        env = Envelope.parse(raw)
    except ValueError:
        return None, None
    version = None
    try:
        payload = strict_json(env.payload)
        if isinstance(payload, dict) and isinstance(payload.get("version"), int):
            version = payload["version"]
    except ValueError:
        pass
    return version, payload_sha256(env.payload)


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
        runtime: Any = None,
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
        self._runtime = runtime  # agent.daemon.runtime.Runtime when run by the daemon
        self._tg: asyncio.TaskGroup | None = None
        self.link: ControlLink | None = None
        self.topics = Topics(config.mqtt.prefix, self.device, self.groups)
        self.acks: list[tuple[Ack, Envelope]] = []  # recent acks, newest last (bounded)
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
            "locked": self.lock_state(),
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

    def _publish_state(self) -> None:
        if self._runtime is not None:
            # The daemon's state reporter writes the same fields to <state>/state.json.
            applied = {"root": self.trust.version, **self.state.applied_versions()}
            self._runtime.update_state(
                applied=applied,
                identity=self.state_document(True)["identity"],
                audit_head=self.audit.head_summary(),
            )
        if self.link is not None:
            self.link.publish_nowait(self.topics.state, self._state_bytes(True), retain=True)

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

    def _ack(self, ack: Ack) -> None:
        env = make_ack(self.identity, self.device, ack, self._clock())
        self.acks = [*self.acks[-63:], (ack, env)]
        if self.link is not None:
            self.link.publish_nowait(self.topics.ack, env.to_json())

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
    ) -> bool:
        """Append an audit entry and publish it; False (logged) when the disk refuses it."""
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
        if self.link is not None:
            self.link.publish_nowait(self.topics.audit, json.dumps(entry, sort_keys=True).encode())
        return True

    def _refuse_unrecorded(self, doc: VerifiedDocument, what: str, exc: StateError | None = None) -> None:
        # Fail closed: a document whose acceptance cannot be recorded is not acted on.
        message = f"cannot persist {what}: {exc.reason if exc else 'audit log write failed'}"[:300]
        self._ack(Ack(doc.kind, doc.version, doc.payload_sha256, "rejected", "state_error", message))
        log.error("control_state_error", kind=doc.kind, version=doc.version, what=what)

    async def handle(self, kind: str, raw: bytes) -> None:
        """Verify one document from a ``kind`` topic, then apply it (in a task) and ack it."""
        try:
            if self.trust.root is None:
                raise Rejected("bad_signature", "this device has no trust root")
            doc = verify_document(raw, kind, self.trust.root, self._context())
            if self.lock_state() and (
                kind in ("config", "keys")
                or (isinstance(doc.body, CommandBody) and doc.body.name in MEDIA_AFFECTING)
            ):
                raise Rejected("locked", "the device is locked: media-affecting documents are refused")
        except Rejected as rej:
            version, sha = _peek(raw, self.config.control.max_document_bytes)
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
            self._spawn(self._transaction(doc), f"control.apply.{kind}.v{doc.version}")
            return
        try:
            self.state.accept(doc)  # commands and keys: the version is spent before acting (no replay)
        except StateError as exc:
            self._refuse_unrecorded(doc, "the command version", exc)
            return
        self._spawn(self._command(doc), f"control.{kind}.v{doc.version}")

    def _spawn(self, coro: Any, name: str) -> None:
        if self._tg is None:
            raise RuntimeError("ControlService.handle needs run() to be active")
        self._tg.create_task(coro, name=name)

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
    async def _on_message(self, topic: str, kind: str, payload: bytes) -> None:
        await self.handle(kind, payload)

    async def run(self, progress: Progress) -> None:
        """Run until cancelled: the link (if configured) and the apply tasks, in one TaskGroup."""
        self.health["control"] = "ok"
        self._publish_state()
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
                    tg.create_task(self.link.run(progress.beat), name="control.link")
                while True:
                    progress.beat()
                    await asyncio.sleep(1.0)
            finally:
                self._tg = None


def services(runtime: Any) -> list[ControlService]:
    """The daemon's provider hook (``agent.daemon.main.SERVICE_PROVIDERS``).

    The apply target is ``runtime.apply_target`` when the running system set one, else the file
    target (``<state>/running/<kind>.json``) until media/privacy provide theirs. The service is
    exposed as ``runtime.control`` so later providers can register command handlers and hooks.
    """
    from agent.control.standalone import FileApplyTarget

    target = getattr(runtime, "apply_target", None) or FileApplyTarget(runtime.state_dir / "running")
    service = ControlService(runtime.config, target, state_dir=runtime.state_dir, runtime=runtime)
    runtime.control = service
    return [service]
