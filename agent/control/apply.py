"""Apply transactions: stage -> validate -> apply -> health check -> commit, or roll back.

The control state (``<state>/control/state.json``, written atomically with :mod:`agent.persist`)
holds per kind the last accepted version (the rollback floor), the applied version and payload
digest, the last-known-good body, the staged (pending) transaction and the outcome of recent
payload digests (idempotent redelivery). A crash at any instant leaves the old or the new file; a
pending transaction found at start was interrupted: it is dropped so the retained document, when
redelivered, is applied again, unless it already crashed the agent twice (then ``rolled_back``).
"""

from __future__ import annotations

__all__ = [
    "ApplyTarget",
    "CommandHandler",
    "ControlState",
    "HealthCheckFailed",
    "Outcome",
    "Transactions",
]

import asyncio
import copy
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import structlog
from pydantic import BaseModel

from agent.control.ack import Status
from agent.control.documents import ConfigBody, body_model
from agent.control.errors import ControlError, Reason
from agent.control.verify import VerifiedDocument
from agent.errors import StateError
from agent.persist import atomic_write_json, read_json
from agent.schema.policy import DEFAULT_POLICY

log = structlog.get_logger()

TRANSACTIONAL = ("policy", "config")
_MAX_OUTCOMES = 32
_MAX_CRASHES = 2


class ApplyTarget(Protocol):
    """The running system as the control plane sees it."""

    async def apply(self, kind: str, body: BaseModel) -> None:
        """Make ``body`` the running ``kind`` (policy/config); raise to fail the apply."""

    async def healthy(self, timeout_s: float) -> bool:
        """True once the system works again (e.g. encrypted frames flowing) within ``timeout_s``."""


class CommandHandler(Protocol):
    async def __call__(self, name: str, args: Mapping[str, Any], doc: VerifiedDocument) -> str:
        """Carry out a command (or a ``keys`` document: name ``"keys"``); returns a short message."""


class HealthCheckFailed(ControlError):
    def __init__(self, kind: str, timeout_s: float) -> None:
        super().__init__(f"{kind}: system not healthy within {timeout_s} s after apply")


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Status
    reason: Reason | None
    message: str


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _mutation(
    method: Callable[Concatenate[ControlState, _P], _R],
) -> Callable[Concatenate[ControlState, _P], _R]:
    """Memory follows disk: if the write fails (ENOSPC, EIO), the in-memory state is restored too."""

    @functools.wraps(method)
    def wrapper(self: ControlState, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        before = copy.deepcopy(self._data)
        try:
            return method(self, *args, **kwargs)
        except BaseException:
            self._data = before
            raise

    return wrapper


def _empty() -> dict[str, Any]:
    return {"last_versions": {}, "applied": {}, "lkg": {}, "pending": {}, "outcomes": {}}


class ControlState:
    """The persisted control state; every mutation is written before it is visible."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "control" / "state.json"
        data = read_json(self.path)
        self._data: dict[str, Any] = _empty() if data is None else {**_empty(), **data}

    def _save(self) -> None:
        atomic_write_json(self.path, self._data)

    # -- reads ---------------------------------------------------------------------------------
    def last_versions(self) -> dict[str, int]:
        return dict(self._data["last_versions"])

    def applied_versions(self) -> dict[str, int]:
        return {k: v["version"] for k, v in self._data["applied"].items()}

    def outcome(self, kind: str, sha: str) -> Outcome | None:
        found = self._data["outcomes"].get(kind, {}).get(sha)
        if found is None:
            return None
        return Outcome(found["status"], found.get("reason"), found["message"])

    def pending(self) -> dict[str, Any]:
        return dict(self._data["pending"])

    def last_known_good(self, kind: str) -> BaseModel:
        """The body to run for ``kind``: the last committed one, else the built-in default."""
        raw = self._data["lkg"].get(kind)
        if kind == "policy":
            return DEFAULT_POLICY if raw is None else DEFAULT_POLICY.model_validate(raw)
        if kind == "config":
            return ConfigBody() if raw is None else ConfigBody.model_validate(raw)
        model = body_model(kind)
        if model is None or raw is None:
            raise KeyError(kind)
        return model.model_validate(raw)

    # -- writes --------------------------------------------------------------------------------
    def _record(self, kind: str, sha: str, outcome: Outcome) -> None:
        outcomes = self._data["outcomes"].setdefault(kind, {})
        outcomes[sha] = {"status": outcome.status, "reason": outcome.reason, "message": outcome.message}
        while len(outcomes) > _MAX_OUTCOMES:
            outcomes.pop(next(iter(outcomes)))

    @_mutation
    def record(self, doc: VerifiedDocument, outcome: Outcome) -> None:
        """Remember a command's or key package's outcome so a redelivery is acked, not re-run."""
        self._record(doc.kind, doc.payload_sha256, outcome)
        self._save()

    @_mutation
    def record_outcome(self, kind: str, sha: str, outcome: Outcome) -> None:
        """Remember the outcome of a document reported later (:class:`~agent.control.errors.Deferred`)."""
        self._record(kind, sha, outcome)
        self._save()

    @_mutation
    def accept(self, doc: VerifiedDocument) -> None:
        """Raise the rollback floor of a non-transactional kind (command, keys, root)."""
        self._data["last_versions"][doc.kind] = doc.version
        self._save()

    @_mutation
    def stage(self, doc: VerifiedDocument) -> None:
        prev = self._data["pending"].get(doc.kind)
        attempts = prev["attempts"] + 1 if prev and prev["sha"] == doc.payload_sha256 else 1
        self._data["pending"][doc.kind] = {
            "version": doc.version,
            "sha": doc.payload_sha256,
            "attempts": attempts,
            "body": doc.body.model_dump(mode="json"),
        }
        self._save()

    @_mutation
    def commit(self, doc: VerifiedDocument, outcome: Outcome) -> None:
        self._data["pending"].pop(doc.kind, None)
        self._data["last_versions"][doc.kind] = doc.version
        self._data["applied"][doc.kind] = {"version": doc.version, "sha": doc.payload_sha256}
        self._data["lkg"][doc.kind] = doc.body.model_dump(mode="json")
        self._record(doc.kind, doc.payload_sha256, outcome)
        self._save()

    @_mutation
    def finish_without_commit(self, doc: VerifiedDocument, outcome: Outcome) -> None:
        """Rolled back or superseded: the version is spent (no replay), last-known-good stays."""
        pending = self._data["pending"].get(doc.kind)
        if pending is not None and pending["sha"] == doc.payload_sha256:
            self._data["pending"].pop(doc.kind)
        floor = self._data["last_versions"].get(doc.kind, 0)
        self._data["last_versions"][doc.kind] = max(floor, doc.version)
        self._record(doc.kind, doc.payload_sha256, outcome)
        self._save()

    @_mutation
    def recover(self) -> list[tuple[str, dict[str, Any]]]:
        """At start: drop interrupted transactions (retried on redelivery) or give up on poison ones.

        Returns the (kind, pending) pairs that were interrupted.
        """
        interrupted = list(self._data["pending"].items())
        for kind, pending in interrupted:
            if pending["attempts"] >= _MAX_CRASHES:
                self._data["last_versions"][kind] = max(
                    self._data["last_versions"].get(kind, 0), pending["version"]
                )
                self._record(
                    kind,
                    pending["sha"],
                    Outcome("rolled_back", "apply_failed", "apply interrupted by agent crashes twice"),
                )
                self._data["pending"].pop(kind)
        if interrupted:
            self._save()
        return interrupted


class Transactions:
    """Runs one transaction per kind at a time; a newer version supersedes the running one."""

    def __init__(self, state: ControlState, target: ApplyTarget, *, health_timeout_s: float) -> None:
        self._state = state
        self._target = target
        self._timeout = health_timeout_s
        self._running: dict[str, tuple[VerifiedDocument, asyncio.Task[Outcome]]] = {}
        self._superseded: set[int] = set()

    def running(self, kind: str) -> VerifiedDocument | None:
        entry = self._running.get(kind)
        return entry[0] if entry else None

    async def supersede(self, kind: str) -> VerifiedDocument | None:
        """Cancel the running transaction of ``kind`` (a newer version arrived); returns its document."""
        entry = self._running.get(kind)
        if entry is None:
            return None
        doc, task = entry
        self._superseded.add(id(task))
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        return doc

    async def run(self, doc: VerifiedDocument) -> Outcome:
        """stage -> apply -> health -> commit, or roll back to last-known-good."""
        task = asyncio.current_task()
        assert task is not None
        self._running[doc.kind] = (doc, task)
        try:
            return await self._transaction(doc, task)
        finally:
            if self._running.get(doc.kind, (None, None))[1] is task:
                del self._running[doc.kind]

    async def _transaction(self, doc: VerifiedDocument, task: asyncio.Task[Any]) -> Outcome:
        try:
            self._state.stage(doc)
        except StateError as exc:
            # Nothing was applied; the version is not spent (the disk is the problem, not the document).
            log.error("control_stage_failed", kind=doc.kind, version=doc.version, reason=exc.reason)
            return Outcome("rejected", "state_error", f"cannot persist the transaction: {exc.reason}"[:300])
        try:
            await self._target.apply(doc.kind, doc.body)
            if not await self._target.healthy(self._timeout):
                raise HealthCheckFailed(doc.kind, self._timeout)
        except asyncio.CancelledError:
            if id(task) in self._superseded:
                self._superseded.discard(id(task))
                out = Outcome("superseded", "superseded", "a newer version arrived during the apply")
                self._finish_quietly(doc, out)
                log.info("control_apply_superseded", kind=doc.kind, version=doc.version)
            raise
        except Exception as exc:  # the target may fail in any way: that is what rollback is for
            reason: Reason = "health_check_failed" if isinstance(exc, HealthCheckFailed) else "apply_failed"
            await self._roll_back(doc.kind)
            out = Outcome("rolled_back", reason, f"{type(exc).__name__}: {exc}"[:300])
            self._finish_quietly(doc, out)
            log.warning("control_apply_rolled_back", kind=doc.kind, version=doc.version, reason=reason)
            return out
        out = Outcome("applied", None, f"{doc.kind} v{doc.version} applied and healthy")
        try:
            self._state.commit(doc, out)
        except StateError as exc:
            # Applied but not durable: run last-known-good again so disk and system agree.
            await self._roll_back(doc.kind)
            out = Outcome("rolled_back", "state_error", f"cannot commit: {exc.reason}"[:300])
            self._finish_quietly(doc, out)
            log.error("control_commit_failed", kind=doc.kind, version=doc.version, reason=exc.reason)
            return out
        log.info("control_applied", kind=doc.kind, version=doc.version)
        return out

    def _finish_quietly(self, doc: VerifiedDocument, out: Outcome) -> None:
        try:
            self._state.finish_without_commit(doc, out)
        except StateError as exc:
            # The staged record stays on disk; recover() drops it at the next start.
            log.error("control_state_write_failed", kind=doc.kind, version=doc.version, reason=exc.reason)

    async def _roll_back(self, kind: str) -> None:
        try:
            await self._target.apply(kind, self._state.last_known_good(kind))
        except Exception as exc:
            log.error("control_rollback_failed", kind=kind, error=type(exc).__name__)
