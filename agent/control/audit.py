"""The audit log: append-only hash-chained JSON lines, head signed by the device identity key.

Each line is one entry ``{"seq", "time", "event", "kind", "version", "digest", "signers", "outcome",
"reason", "prev"}`` where ``prev`` is the sha256 of the previous line's bytes (64 zeros for the first).
The head (``audit.head``) is a DSSE envelope (``application/vnd.roomagent.audit-head+json``) over
``{"device", "seq", "hash"}`` signed by the device. :func:`verify_chain` checks a log offline and
names the first entry that does not chain (``roomctl audit verify``).
"""

from __future__ import annotations

__all__ = ["GENESIS", "HEAD_TYPE", "AuditLog", "ChainBroken", "ChainReport", "verify_chain"]

import contextlib
import datetime as dt
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from agent.control.dsse import Envelope, strict_json
from agent.control.errors import ControlError
from agent.control.identity import DeviceIdentity
from agent.control.signing_keys import PublicKey
from agent.errors import StateError

log = structlog.get_logger()

GENESIS = "0" * 64
HEAD_TYPE = "application/vnd.roomagent.audit-head+json"


class ChainBroken(ControlError):
    """The audit log does not verify; ``seq`` is the first bad entry (``None``: the head)."""

    def __init__(self, seq: int | None, line: int | None, reason: str) -> None:
        self.seq = seq
        self.line = line
        self.reason = reason
        where = f"entry seq {seq} (line {line})" if line is not None else "head"
        super().__init__(f"{where}: {reason}")


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


class AuditLog:
    """The device's audit log in ``<state>/audit/``; one writer (the control service)."""

    def __init__(self, directory: Path, identity: DeviceIdentity, device: str) -> None:
        self.directory = Path(directory)
        self.path = self.directory / "audit.jsonl"
        self.head_path = self.directory / "audit.head"
        self._identity = identity
        self._device = device
        self.directory.mkdir(parents=True, exist_ok=True)
        self.seq, self.hash = self._recover()
        self._write_head()

    def _recover(self) -> tuple[int, str]:
        """Find the last complete entry; a torn tail (crash mid-append) is cut off."""
        if not self.path.exists():
            return 0, GENESIS
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        seq, last = 0, GENESIS
        offset = 0
        for raw in lines[:-1]:  # the part after the last newline is incomplete by construction
            try:
                entry = json.loads(raw)
                seq = int(entry["seq"])
            except (ValueError, KeyError, TypeError):
                break
            last = hashlib.sha256(raw).hexdigest()
            offset += len(raw) + 1
        if offset != len(data):
            with self.path.open("r+b") as f:
                f.truncate(offset)
                f.flush()
                os.fsync(f.fileno())
        return seq, last

    def append(
        self,
        event: str,
        *,
        kind: str | None = None,
        version: int | None = None,
        digest: str | None = None,
        signers: Sequence[str] = (),
        outcome: str,
        reason: str | None = None,
        message: str | None = None,
        now: dt.datetime | None = None,
    ) -> dict[str, Any]:
        """Append one entry durably, then re-sign the head. Returns the entry."""
        when = now or dt.datetime.now(dt.UTC)
        entry = {
            "seq": self.seq + 1,
            "time": when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "event": event,
            "kind": kind,
            "version": version,
            "digest": digest,
            "signers": list(signers),
            "outcome": outcome,
            "reason": reason,
            "message": (message or "")[:300],
            "prev": self.hash,
        }
        raw = _canonical(entry)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateError(str(self.path), f"cannot open audit log: {exc.strerror or exc}") from exc
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(raw + b"\n")
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError as exc:
                # Keep the chain whole: cut off whatever part of this entry reached the file.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise StateError(str(self.path), f"audit append failed: {exc.strerror or exc}") from exc
        finally:
            os.close(fd)
        self.seq += 1
        self.hash = hashlib.sha256(raw).hexdigest()
        self._write_head()
        return entry

    def _write_head(self) -> None:
        """Replace the signed head (temp + rename, no fsync).

        The head is derived data: the log lines are durable, and the head is re-signed from them at
        every start, so a head lost in a power cut costs nothing; skipping its two fsyncs halves the
        disk flushes per audited event. After a failed write it lags until the next entry.
        """
        tmp = self.head_path.with_name(f".{self.head_path.name}.tmp-{os.getpid()}")
        try:
            tmp.write_bytes(self.head().to_json())
            os.replace(tmp, self.head_path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            log.error("control_audit_head_write_failed", reason=exc.strerror or str(exc))

    def head(self) -> Envelope:
        return self._identity.sign_envelope(
            "audit-head", {"device": self._device, "seq": self.seq, "hash": self.hash}
        )

    def head_summary(self) -> dict[str, Any]:
        """For the retained state: seq, hash and the device-signed head envelope (verifiable offline)."""
        return {"seq": self.seq, "hash": self.hash, "signed": self.head().to_dict()}


@dataclass(frozen=True, slots=True)
class ChainReport:
    entries: int
    head_seq: int
    head_hash: str


def verify_chain(log: bytes, head: bytes, device_key: PublicKey) -> ChainReport:
    """Check every link of the chain and the signed head, offline.

    Raises:
        ChainBroken: naming the first entry that does not chain, or a bad/mismatched head.
    """
    try:
        env = Envelope.parse(head)
        claimed = strict_json(env.payload)
    except ValueError as exc:
        raise ChainBroken(None, None, f"head is not a DSSE envelope: {exc}") from exc
    if env.payload_type != HEAD_TYPE or not any(
        s.keyid == device_key.keyid and device_key.verify(s.sig, env.pae()) for s in env.signatures
    ):
        raise ChainBroken(None, None, "head is not signed by this device key")
    prev = GENESIS
    count = 0
    lines = log.split(b"\n")
    if lines and lines[-1] == b"":
        lines = lines[:-1]
    for number, raw in enumerate(lines, start=1):
        try:
            entry = json.loads(raw)
            seq = int(entry["seq"])
            linked = entry["prev"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ChainBroken(number, number, "not a JSON audit entry") from exc
        if seq != number:
            raise ChainBroken(seq, number, f"seq {seq} where {number} was expected (entry removed or added)")
        if linked != prev:
            # The previous line was changed (its hash moved) or this entry's prev was edited.
            raise ChainBroken(
                number - 1 if number > 1 else number, max(number - 1, 1), "hash chain broken: entry altered"
            )
        if _canonical(entry) != raw:
            raise ChainBroken(seq, number, "entry is not in canonical form (edited)")
        prev = hashlib.sha256(raw).hexdigest()
        count = number
    head_seq = claimed.get("seq") if isinstance(claimed, dict) else None
    if head_seq != count:
        # Lines after the signed head were forged, or the log was cut short.
        first = count if isinstance(head_seq, int) and head_seq < count else None
        raise ChainBroken(first, first, f"signed head is seq {head_seq}, log ends at seq {count}")
    if claimed.get("hash") != prev:
        raise ChainBroken(count, count, "last entry altered (does not match the signed head)")
    return ChainReport(count, count, prev)
