"""The audit log alone: chain verification, torn tails after a crash, a failed append leaves no half entry."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from agent.control import audit as audit_module
from agent.control.audit import AuditLog, ChainBroken, verify_chain
from agent.control.identity import DeviceIdentity
from agent.control.signing_keys import parse_public_key
from agent.errors import StateError


def make(tmp_path: Path) -> tuple[AuditLog, DeviceIdentity]:
    identity = DeviceIdentity.load_or_create(tmp_path / "state")
    return AuditLog(tmp_path / "state" / "audit", identity, "room-101"), identity


def test_chain_and_head_verify_and_a_forged_head_does_not(tmp_path: Path) -> None:
    log, identity = make(tmp_path)
    for i in range(3):
        log.append("accepted", kind="config", version=i + 1, digest="ab" * 32, outcome="accepted")
    key = parse_public_key(identity.public_dict)
    report = verify_chain(log.path.read_bytes(), log.head_path.read_bytes(), key)
    assert report.entries == 3
    other = DeviceIdentity.load_or_create(tmp_path / "other")
    with pytest.raises(ChainBroken) as info:
        verify_chain(log.path.read_bytes(), log.head_path.read_bytes(), parse_public_key(other.public_dict))
    assert info.value.seq is None  # the head itself is not this device's
    # Dropping the last entry (hiding it) is caught by the signed head.
    lines = log.path.read_bytes().splitlines(keepends=True)
    with pytest.raises(ChainBroken):
        verify_chain(b"".join(lines[:-1]), log.head_path.read_bytes(), key)


def test_torn_tail_is_cut_at_start(tmp_path: Path) -> None:
    log, _ = make(tmp_path)
    log.append("accepted", kind="config", version=1, digest=None, outcome="accepted")
    with log.path.open("ab") as f:
        f.write(b'{"seq":2,"ti')  # the crash happened mid-append
    again, _ = make(tmp_path)
    assert again.seq == 1
    entry = again.append("applied", kind="config", version=1, digest=None, outcome="applied")
    assert entry["seq"] == 2
    assert len(again.path.read_bytes().splitlines()) == 2


def test_failed_append_leaves_no_half_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log, identity = make(tmp_path)
    log.append("accepted", kind="config", version=1, digest=None, outcome="accepted")
    size = log.path.stat().st_size
    real_write = os.write
    calls = {"n": 0}

    def half_then_enospc(fd: int, data: bytes | memoryview) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data)[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(audit_module.os, "write", half_then_enospc)
    with pytest.raises(StateError):
        log.append("applied", kind="config", version=1, digest=None, outcome="applied")
    monkeypatch.undo()
    assert log.path.stat().st_size == size
    assert log.seq == 1
    log.append("applied", kind="config", version=1, digest=None, outcome="applied")
    verify_chain(log.path.read_bytes(), log.head_path.read_bytes(), parse_public_key(identity.public_dict))


def test_identity_key_is_private_and_stable(tmp_path: Path) -> None:
    first = DeviceIdentity.load_or_create(tmp_path)
    second = DeviceIdentity.load_or_create(tmp_path)
    assert first.keyid == second.keyid
    assert (tmp_path / "identity" / "ed25519.pem").stat().st_mode & 0o777 == 0o600
    assert "PRIVATE" not in repr(first)


def _filled(tmp_path: Path, n: int = 5) -> tuple[AuditLog, DeviceIdentity, bytes]:
    log, identity = make(tmp_path)
    for i in range(n):
        log.append("accepted", kind="command", version=i + 1, digest="cd" * 32, outcome="accepted")
    return log, identity, log.path.read_bytes()


def _assert_new_segment(tmp_path: Path, damaged: bytes, old_seq: int) -> AuditLog:
    again, identity = make(tmp_path)
    kept = list(again.directory.glob("audit-damaged-*.jsonl"))
    assert len(kept) == 1, "the damaged file is kept"
    assert kept[0].read_bytes() == damaged, "kept byte for byte: never truncated, never re-signed"
    assert again.corruption is not None
    assert again.corruption.damaged_sha256 == hashlib.sha256(damaged).hexdigest()
    assert again.seq > old_seq, "the signed head's seq only grows"
    again.append("applied", kind="command", version=9, digest=None, outcome="applied")
    report = verify_chain(
        again.path.read_bytes(), again.head_path.read_bytes(), parse_public_key(identity.public_dict)
    )
    assert report.corruption is not None
    assert report.corruption.damaged_sha256 == again.corruption.damaged_sha256
    assert report.head_seq == again.seq
    return again


def test_damage_in_the_middle_is_kept_and_a_new_segment_records_it(tmp_path: Path) -> None:
    log, _, data = _filled(tmp_path)
    lines = data.split(b"\n")
    # Media bytes interleaved into the log (what a file sink on audit.jsonl did).
    damaged = b"\n".join([*lines[:2], b"\x1a\x45\xdf\xa3 not an entry", *lines[2:]])
    log.path.write_bytes(damaged)
    again = _assert_new_segment(tmp_path, damaged, log.seq)
    assert again.seq == log.seq + 2  # the audit_corrupt entry, then the new one
    assert "line 3" in again.corruption.message  # type: ignore[union-attr]


def test_an_edited_entry_is_kept_and_recorded(tmp_path: Path) -> None:
    log, _, data = _filled(tmp_path)
    damaged = data.replace(b'"version":2', b'"version":7', 1)
    log.path.write_bytes(damaged)
    _assert_new_segment(tmp_path, damaged, log.seq)


def test_a_log_cut_short_below_the_signed_head_is_recorded(tmp_path: Path) -> None:
    log, _, data = _filled(tmp_path)
    damaged = b"".join(data.splitlines(keepends=True)[:2])  # the last three entries removed
    log.path.write_bytes(damaged)
    again = _assert_new_segment(tmp_path, damaged, log.seq)
    assert again.seq == log.seq + 2  # continues above the signed head (5), not the log's end (2)


def test_the_last_entry_altered_against_the_head_is_recorded(tmp_path: Path) -> None:
    log, _, data = _filled(tmp_path)
    damaged = data.replace(b'"version":5', b'"version":6', 1)
    log.path.write_bytes(damaged)
    _assert_new_segment(tmp_path, damaged, log.seq)


def test_only_a_torn_final_line_is_ever_cut(tmp_path: Path) -> None:
    log, identity, data = _filled(tmp_path)
    log.path.write_bytes(data + b'{"seq":6,"time":"2026')
    again, _ = make(tmp_path)
    assert again.corruption is None
    assert again.path.read_bytes() == data
    assert not list(again.directory.glob("audit-damaged-*"))
    verify_chain(
        again.path.read_bytes(), again.head_path.read_bytes(), parse_public_key(identity.public_dict)
    )
