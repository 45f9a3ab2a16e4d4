"""The audit log: append-only hash-chained JSON lines, head signed by the device identity key.

Each line is one entry ``{"seq", "time", "event", "kind", "version", "digest", "signers", "outcome",
"reason", "prev"}`` where ``prev`` is the sha256 of the previous line's bytes (64 zeros for the first).
The head (``audit.head``) is a DSSE envelope (``application/vnd.roomagent.audit-head+json``) over
``{"device", "seq", "hash"}`` signed by the device. :func:`verify_chain` checks a log offline and
names the first entry that does not chain (``roomctl audit verify``).

Recovery at start may drop only a torn final line (the bytes after the last newline: a crash in the
middle of an append). Damage anywhere else (a line that is not an entry, a broken chain, an edited
entry, a log shorter than the signed head says) is never truncated or re-signed: the damaged file
is kept byte for byte as ``audit-damaged-<seq>.jsonl`` and a new segment starts in ``audit.jsonl``
whose first entry (event ``audit_corrupt``) records the damaged file's name, size and sha256 (also
its ``prev``, so the new chain is anchored to exactly those bytes). Sequence numbers continue above
both the last good entry and the last signed head: the head's seq only grows, so anyone comparing
heads sees a rollback. :attr:`AuditLog.corruption` (and the device state's ``audit_corrupt``) says
that the current segment began that way.
"""

from __future__ import annotations

__all__ = [
    "CORRUPT_EVENT",
    "GENESIS",
    "HEAD_TYPE",
    "AuditLog",
    "ChainBroken",
    "ChainReport",
    "Corruption",
    "verify_chain",
]

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
from agent.control.signing_keys import PublicKey, parse_public_key
from agent.errors import StateError
from agent.persist import atomic_write_bytes

log = structlog.get_logger()

GENESIS = "0" * 64
HEAD_TYPE = "application/vnd.roomagent.audit-head+json"
CORRUPT_EVENT = "audit_corrupt"
_HEX64 = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class Corruption:
    """The first entry of a segment started after damage: what was damaged and how it is kept."""

    seq: int  # the seq of the audit_corrupt entry
    damaged_sha256: str
    message: str


@dataclass(frozen=True, slots=True)
class _Scan:
    seq: int  # last good entry's seq (0: none)
    hash: str  # last good line's sha256
    problem: str | None  # first damage found, in words
    line: int | None  # its line number
    corruption: Corruption | None  # the segment's first entry records earlier damage


def _is_hex64(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX64


def _scan(lines: list[bytes]) -> _Scan:
    """Check complete lines as a chain; stop at the first damage (never raises)."""
    seq, last, corruption = 0, GENESIS, None
    for number, raw in enumerate(lines, start=1):
        try:
            entry = strict_json(raw)
        except ValueError:
            return _Scan(seq, last, "not a JSON audit entry", number, corruption)
        if not isinstance(entry, dict) or not isinstance(entry.get("seq"), int) or "prev" not in entry:
            return _Scan(seq, last, "not an audit entry", number, corruption)
        if _canonical(entry) != raw:
            return _Scan(seq, last, "entry is not in canonical form (edited)", number, corruption)
        if (
            number == 1
            and entry.get("event") == CORRUPT_EVENT
            and entry["seq"] >= 1
            and _is_hex64(entry["prev"])
        ):
            # A segment started after damage: anchored to the damaged file's digest.
            corruption = Corruption(entry["seq"], entry["prev"], str(entry.get("message", "")))
        elif entry["seq"] != seq + 1:
            return _Scan(seq, last, f"seq {entry['seq']} where {seq + 1} was expected", number, corruption)
        elif entry["prev"] != last:
            return _Scan(seq, last, "hash chain broken: an entry was altered", number, corruption)
        seq, last = entry["seq"], hashlib.sha256(raw).hexdigest()
    return _Scan(seq, last, None, None, corruption)


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
        self.corruption: Corruption | None = None
        self.seq, self.hash = self._recover()
        self._write_head()

    def _signed_head(self) -> tuple[int, str | None]:
        """The last head this device signed (seq, hash); (0, None) when missing or not ours."""
        try:
            env = Envelope.parse(self.head_path.read_bytes())
            claimed = strict_json(env.payload)
        except (OSError, ValueError):
            return 0, None
        key = parse_public_key(self._identity.public_dict)
        if env.payload_type != HEAD_TYPE or not any(key.verify(s.sig, env.pae()) for s in env.signatures):
            return 0, None
        if not isinstance(claimed, dict) or not isinstance(claimed.get("seq"), int):
            return 0, None
        hash_ = claimed.get("hash")
        return max(0, claimed["seq"]), hash_ if isinstance(hash_, str) else None

    def _recover(self) -> tuple[int, str]:
        """Find the last complete entry. Only a torn final line is cut off; any other damage starts a
        new segment (see the module docstring)."""
        head_seq, head_hash = self._signed_head()
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            if head_seq == 0:
                return 0, GENESIS
            return self._new_segment(
                b"", head_seq, f"the log is missing; the signed head is at seq {head_seq}"
            )
        except OSError as exc:
            raise StateError(str(self.path), f"cannot read audit log: {exc.strerror or exc}") from exc
        complete = data[: data.rfind(b"\n") + 1]  # after the last newline: torn by construction
        scan = _scan(complete.split(b"\n")[:-1])
        problem = scan.problem
        where = f"line {scan.line}" if scan.line is not None else "its end"
        if problem is None and scan.seq < head_seq:
            problem = (
                f"the log ends at seq {scan.seq}; the signed head is at seq {head_seq} (entries removed)"
            )
        elif problem is None and scan.seq == head_seq and head_hash is not None and head_hash != scan.hash:
            problem = f"entry seq {scan.seq} does not match the signed head (altered)"
            where = f"seq {scan.seq}"
        if problem is not None:
            return self._new_segment(data, max(scan.seq, head_seq), f"damaged at {where}: {problem}")
        if len(complete) != len(data):
            with self.path.open("r+b") as f:
                f.truncate(len(complete))
                f.flush()
                os.fsync(f.fileno())
            log.warning("control_audit_torn_tail_cut", bytes=len(data) - len(complete))
        self.corruption = scan.corruption
        return scan.seq, scan.hash

    def _new_segment(self, damaged: bytes, last_seq: int, problem: str) -> tuple[int, str]:
        """Keep the damaged file as it is, and start ``audit.jsonl`` afresh with an entry recording it."""
        seq = last_seq + 1
        kept = self.directory / f"audit-damaged-{seq}.jsonl"
        digest = hashlib.sha256(damaged).hexdigest()
        try:
            if self.path.exists():
                os.replace(self.path, kept)
            message = f"{kept.name} ({len(damaged)} bytes, sha256 {digest}) {problem}"
            entry = {
                "seq": seq,
                "time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "event": CORRUPT_EVENT,
                "kind": None,
                "version": None,
                "digest": digest,
                "signers": [],
                "outcome": "recovered",
                "reason": None,
                "message": message[:300],
                "prev": digest,
            }
            raw = _canonical(entry)
            atomic_write_bytes(self.path, raw + b"\n", mode=0o600)
        except OSError as exc:
            raise StateError(
                str(self.path), f"cannot start a new audit segment: {exc.strerror or exc}"
            ) from exc
        self.corruption = Corruption(seq, digest, message[:300])
        log.error("control_audit_corrupt", kept=kept.name, sha256=digest, problem=problem[:200], seq=seq)
        return seq, hashlib.sha256(raw).hexdigest()

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

    def corruption_summary(self) -> dict[str, Any] | None:
        """For the retained state's ``audit_corrupt``: where the current segment starts and why."""
        c = self.corruption
        return None if c is None else {"seq": c.seq, "damaged_sha256": c.damaged_sha256, "message": c.message}


@dataclass(frozen=True, slots=True)
class ChainReport:
    entries: int
    head_seq: int
    head_hash: str
    first_seq: int = 1
    corruption: Corruption | None = None  # the segment starts by recording damage to the one before


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
    lines = log.split(b"\n")
    if lines and lines[-1] == b"":
        lines = lines[:-1]
    scan = _scan(lines)
    if scan.problem is not None:
        line = scan.line or 1
        # Number the bad entry by its position in the segment (seq continues across segments).
        first = scan.corruption.seq if scan.corruption is not None else 1
        bad = first + line - 1
        if "altered" in scan.problem and line > 1:
            # The previous line was changed (its hash moved) or this entry's prev was edited.
            bad, line = bad - 1, line - 1
        raise ChainBroken(bad, line, scan.problem)
    count = scan.seq
    first_seq = scan.corruption.seq if scan.corruption is not None else 1
    head_seq = claimed.get("seq") if isinstance(claimed, dict) else None
    if head_seq != count:
        # Lines after the signed head were forged, or the log was cut short.
        beyond = count if isinstance(head_seq, int) and head_seq < count else None
        raise ChainBroken(beyond, beyond, f"signed head is seq {head_seq}, log ends at seq {count}")
    if claimed.get("hash") != scan.hash:
        raise ChainBroken(count, count, "last entry altered (does not match the signed head)")
    return ChainReport(len(lines), count, scan.hash, first_seq, scan.corruption)
