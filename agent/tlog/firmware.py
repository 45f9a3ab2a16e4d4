"""What the firmware log commits to, and the device's pure check that a bundle is in it.

Each leaf is the text ``roomagent-firmware v1`` / ``version N`` / ``length L`` / ``sha256 HEX``
(one item per line): it binds the firmware version to the exact bundle bytes, so a log entry cannot be
reused for other bytes or another version.
"""

from __future__ import annotations

__all__ = ["InclusionProof", "firmware_leaf", "verify_firmware_included"]

import base64
import re
from collections.abc import Iterable
from dataclasses import dataclass

from agent.tlog.errors import ProofError
from agent.tlog.merkle import leaf_hash, verify_inclusion
from agent.tlog.note import Checkpoint, NoteKey, open_checkpoint

_HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)
MAX_PROOF_HASHES = 64  # a path in a tree of up to 2^64 leaves


def firmware_leaf(version: int, length: int, sha256: str) -> bytes:
    """The leaf data of one firmware bundle."""
    if not _HEX64.fullmatch(sha256):
        raise ValueError("sha256 is 64 lowercase hex digits")
    return f"roomagent-firmware v1\nversion {version}\nlength {length}\nsha256 {sha256}\n".encode()


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """An entry's place in the log: index, the tree size proved against, the path, the checkpoint."""

    index: int
    tree_size: int
    proof: tuple[bytes, ...]
    checkpoint: bytes  # the signed note

    @classmethod
    def from_json(cls, obj: dict[str, object]) -> InclusionProof:
        """From ``{"index", "tree_size", "proof": [base64...], "checkpoint": note text}``.

        Raises:
            ProofError: wrong shape.
        """
        index, size, path, note = (obj.get(k) for k in ("index", "tree_size", "proof", "checkpoint"))
        if not isinstance(index, int) or not isinstance(size, int) or isinstance(index, bool):
            raise ProofError("index and tree_size are integers")
        if not isinstance(path, list) or len(path) > MAX_PROOF_HASHES or not isinstance(note, str):
            raise ProofError("proof is a list of at most 64 hashes, checkpoint a string")
        try:
            hashes = tuple(base64.b64decode(p, validate=True) for p in path if isinstance(p, str))
        except ValueError as exc:  # binascii.Error, or non-ASCII text
            raise ProofError("proof hashes are base64") from exc
        if len(hashes) != len(path):
            raise ProofError("proof hashes are base64 strings")
        try:
            checkpoint = note.encode()
        except UnicodeEncodeError as exc:  # JSON may carry lone surrogates ("\\udddd"): not UTF-8 text
            raise ProofError("checkpoint is not UTF-8 text") from exc
        return cls(index, size, hashes, checkpoint)

    def to_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "tree_size": self.tree_size,
            "proof": [base64.b64encode(p).decode() for p in self.proof],
            "checkpoint": self.checkpoint.decode(),
        }


def verify_firmware_included(
    version: int,
    length: int,
    sha256: str,
    proof: InclusionProof,
    keys: Iterable[NoteKey],
    threshold: int = 1,
) -> Checkpoint:
    """Check that the bundle (version, length, sha256) is in the log the ``keys`` sign for.

    Steps: the checkpoint is a signed note of a trusted log key (signed-note); its size is the tree
    size the proof is for; the leaf hash (RFC 9162 2.1.1) with the proof leads to its root (2.1.3.2).

    Raises:
        NoteError: the checkpoint is not signed by the log key or is malformed.
        ProofError: the proof does not place this bundle in that tree.
    """
    cp = open_checkpoint(proof.checkpoint, keys, threshold)
    if cp.size != proof.tree_size:
        raise ProofError(f"proof is for tree size {proof.tree_size}; the checkpoint has {cp.size}")
    leaf = leaf_hash(firmware_leaf(version, length, sha256))
    verify_inclusion(leaf, proof.index, cp.size, proof.proof, cp.root)
    return cp
