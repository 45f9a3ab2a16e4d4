"""Fuzz target: the firmware log's parsers and verifiers (C2SP signed notes and checkpoints, RFC 9162
inclusion proofs), as the device runs them on every ``update`` document.

Any byte string must give a verified result or a ``NoteError``/``ProofError``; anything else escaping
(an IndexError in the signature-line split, a binascii error, a RecursionError in JSON) is a bug. The
first input byte picks the mode: even, the rest is a checkpoint note opened with the log's key; odd,
the rest is the JSON of an inclusion proof checked for a fixed bundle.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import guarded, instrumented, run, unavailable

with instrumented():
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519

        from agent.tlog.errors import NoteError, ProofError
        from agent.tlog.firmware import InclusionProof, firmware_leaf, verify_firmware_included
        from agent.tlog.merkle import inclusion_proof, leaf_hash, root_from_leaf_hashes
        from agent.tlog.note import Checkpoint, NoteKey, format_checkpoint, open_checkpoint, sign_note
    except ModuleNotFoundError as exc:  # pragma: no cover - only while branches land
        unavailable(f"{exc.name} is not built on this branch")

ORIGIN = "roomagent.fuzz/firmware"
KEY = ed25519.Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"roomagent-fuzz-tlog").digest())
KEYS = [NoteKey.of(ORIGIN, KEY.public_key())]
SHA = hashlib.sha256(b"bundle 3").hexdigest()


def _seeds() -> list[bytes]:
    leaves = [
        leaf_hash(firmware_leaf(v, 100 + v, hashlib.sha256(b"bundle %d" % v).hexdigest()))
        for v in range(1, 6)
    ]
    note = sign_note(format_checkpoint(Checkpoint(ORIGIN, 5, root_from_leaf_hashes(leaves))), ORIGIN, KEY)
    proof = InclusionProof(2, 5, tuple(inclusion_proof(2, leaves)), note.encode())
    return [b"\x00" + note.encode(), b"\x01" + json.dumps(proof.to_json()).encode()]


SEEDS = _seeds()


@guarded(NoteError, ProofError)
def TestOneInput(data: bytes) -> None:
    if not data:
        return
    if data[0] % 2 == 0:
        open_checkpoint(data[1:], KEYS)
        return
    try:
        obj = json.loads(data[1:])
    except (ValueError, RecursionError):
        return
    if isinstance(obj, dict):
        verify_firmware_included(3, 103, SHA, InclusionProof.from_json(obj), KEYS)


if __name__ == "__main__":
    run(TestOneInput, seeds=SEEDS)
