"""The firmware log as files: ``roomctl log append|prove|verify`` run on it.

Directory layout: ``origin`` (the log's name, which is also its key name), ``entries.jsonl`` (one
entry per line: version, length, sha256, name), ``checkpoint`` (the latest signed checkpoint) and
``checkpoints/<size>`` (every checkpoint ever signed, so an auditor can ask for consistency from any
of them). Each file is written atomically; the entries are written before the checkpoint, so a crash
leaves a checkpoint that covers a prefix of the entries, which the next append re-signs.
"""

from __future__ import annotations

__all__ = ["Entry", "LogStore"]

import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.errors import StateError
from agent.persist import atomic_write_bytes
from agent.tlog.errors import LogStoreError
from agent.tlog.firmware import InclusionProof, firmware_leaf
from agent.tlog.merkle import consistency_proof, inclusion_proof, leaf_hash, root_from_leaf_hashes
from agent.tlog.note import Checkpoint, format_checkpoint, parse_checkpoint, sign_note


@dataclass(frozen=True, slots=True)
class Entry:
    version: int
    length: int
    sha256: str
    name: str

    def leaf_hash(self) -> bytes:
        return leaf_hash(firmware_leaf(self.version, self.length, self.sha256))


class LogStore:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

    # -- reading ---------------------------------------------------------------------------------
    def origin(self) -> str:
        try:
            return (self.dir / "origin").read_text().strip()
        except OSError as exc:
            raise LogStoreError(str(self.dir / "origin"), exc.strerror or str(exc)) from exc

    def entries(self) -> list[Entry]:
        path = self.dir / "entries.jsonl"
        if not path.exists():
            return []
        out: list[Entry] = []
        try:
            for line in path.read_text().splitlines():
                obj = json.loads(line)
                out.append(
                    Entry(int(obj["version"]), int(obj["length"]), str(obj["sha256"]), str(obj["name"]))
                )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LogStoreError(str(path), f"unreadable entry near line {len(out) + 1}: {exc}") from exc
        return out

    def checkpoint_note(self, size: int | None = None) -> bytes:
        path = self.dir / "checkpoint" if size is None else self.dir / "checkpoints" / str(size)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise LogStoreError(str(path), exc.strerror or str(exc)) from exc

    def find(self, sha256: str) -> int:
        for i, e in enumerate(self.entries()):
            if e.sha256 == sha256:
                return i
        raise LogStoreError(str(self.dir), f"no entry with sha256 {sha256}")

    # -- writing ---------------------------------------------------------------------------------
    def init(self, origin: str) -> None:
        if (self.dir / "origin").exists():
            if self.origin() != origin:
                raise LogStoreError(str(self.dir), f"log origin is {self.origin()!r}, not {origin!r}")
            return
        self._write(self.dir / "origin", origin.encode() + b"\n")

    def append(self, entry: Entry, key: ed25519.Ed25519PrivateKey) -> tuple[int, bytes]:
        """Append ``entry`` (refused if its sha256 or version is already logged); returns its index
        and the new signed checkpoint."""
        entries = self.entries()
        for e in entries:
            if e.sha256 == entry.sha256:
                raise LogStoreError(str(self.dir), f"bundle {entry.sha256[:12]}... is already entry")
            if e.version == entry.version:
                raise LogStoreError(str(self.dir), f"firmware version {entry.version} is already logged")
        entries.append(entry)
        lines = "".join(
            json.dumps(
                {"version": e.version, "length": e.length, "sha256": e.sha256, "name": e.name},
                sort_keys=True,
            )
            + "\n"
            for e in entries
        )
        self._write(self.dir / "entries.jsonl", lines.encode())
        note = self.sign_checkpoint(key, entries)
        return len(entries) - 1, note

    def sign_checkpoint(self, key: ed25519.Ed25519PrivateKey, entries: list[Entry] | None = None) -> bytes:
        entries = self.entries() if entries is None else entries
        root = root_from_leaf_hashes([e.leaf_hash() for e in entries])
        text = format_checkpoint(Checkpoint(self.origin(), len(entries), root))
        note = sign_note(text, self.origin(), key).encode()
        self._write(self.dir / "checkpoints" / str(len(entries)), note)
        self._write(self.dir / "checkpoint", note)
        return note

    def prove(self, index: int) -> InclusionProof:
        """Inclusion proof of entry ``index`` against the latest checkpoint."""
        note = self.checkpoint_note()
        text = note.decode().rsplit("\n\n", 1)[0] + "\n"
        size = parse_checkpoint(text).size
        hashes = [e.leaf_hash() for e in self.entries()[:size]]
        return InclusionProof(index, size, tuple(inclusion_proof(index, hashes)), note)

    def consistency(self, first: int) -> list[bytes]:
        return consistency_proof(first, [e.leaf_hash() for e in self.entries()])

    def _write(self, path: Path, data: bytes) -> None:
        try:
            atomic_write_bytes(path, data, mode=0o644)
        except StateError as exc:
            raise LogStoreError(exc.path, exc.reason) from exc
