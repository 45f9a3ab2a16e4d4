"""``roomctl log append|prove|verify``: the firmware transparency log, run from a directory.

``append`` logs a bundle (its version, length and SHA-256) and signs a new checkpoint with the
``transparency`` key; ``prove`` prints the inclusion proof an ``update`` document carries; ``verify``
recomputes the tree from the entries, checks the latest checkpoint's signature and root, and, given
an older checkpoint someone kept, proves the log only grew since (RFC 9162 2.1.4 consistency).
"""

from __future__ import annotations

__all__ = ["bundle_digest", "register"]

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.control.errors import ControlError, Rejected
from agent.control.signing_keys import parse_public_key
from agent.control.verify import transparency_note_keys, verify_initial_root
from agent.fleet.common import CliError, load_public_key_file, load_signing_keys
from agent.persist import atomic_write_bytes
from agent.tlog.errors import ProofError, TlogError
from agent.tlog.merkle import root_from_leaf_hashes, verify_consistency
from agent.tlog.note import NoteKey, open_checkpoint

DEFAULT_ORIGIN = "roomagent.example/firmware"


def bundle_digest(path: Path) -> tuple[int, str]:
    """Length and SHA-256 (hex) of a bundle file, read in chunks."""
    h = hashlib.sha256()
    n = 0
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def _note_keys(args: argparse.Namespace, origin: str) -> tuple[list[NoteKey], int]:
    if args.root is not None:
        root = verify_initial_root(Path(args.root).read_bytes())
        keys, threshold = transparency_note_keys(root, origin)
        if not keys:
            raise CliError(f"{args.root}: this root has no transparency role")
        return keys, threshold
    if args.key is not None:
        key = parse_public_key(load_public_key_file(Path(args.key), args.passphrase_env))
        if not isinstance(key.public, ed25519.Ed25519PublicKey):
            raise CliError("the transparency key must be Ed25519")
        return [NoteKey.of(origin, key.public)], 1
    raise CliError("give --root ROOT (its transparency role) or --key KEY to check signatures")


def _append(args: argparse.Namespace) -> int:
    from agent.tlog.store import Entry, LogStore

    keys = load_signing_keys([Path(args.key)], args.passphrase_env)
    if not isinstance(keys[0], ed25519.Ed25519PrivateKey):
        raise CliError("the transparency key must be Ed25519")
    store = LogStore(Path(args.log))
    if args.origin is not None or not (Path(args.log) / "origin").exists():
        store.init(args.origin or DEFAULT_ORIGIN)
    length, sha = bundle_digest(Path(args.bundle))
    index, note = store.append(Entry(args.version, length, sha, Path(args.bundle).name), keys[0])
    out = {"index": index, "tree_size": index + 1, "version": args.version, "length": length, "sha256": sha}
    print(json.dumps({**out, "checkpoint": note.decode()}))
    return 0


def _prove(args: argparse.Namespace) -> int:
    from agent.tlog.store import LogStore

    store = LogStore(Path(args.log))
    _, sha = bundle_digest(Path(args.bundle))
    index = store.find(sha)
    entry = store.entries()[index]
    proof = store.prove(index)
    doc: dict[str, Any] = {
        "leaf": {"version": entry.version, "length": entry.length, "sha256": entry.sha256},
        **proof.to_json(),
    }
    data = json.dumps(doc, indent=2).encode()
    if args.out:
        atomic_write_bytes(Path(args.out), data + b"\n", mode=0o644)
    else:
        sys.stdout.write(data.decode() + "\n")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from agent.tlog.store import LogStore

    store = LogStore(Path(args.log))
    origin = store.origin()
    keys, threshold = _note_keys(args, origin)
    entries = store.entries()
    latest = open_checkpoint(store.checkpoint_note(), keys, threshold)
    if latest.origin != origin or latest.size > len(entries):
        raise ProofError(f"checkpoint of size {latest.size} for {latest.origin!r}; log has {len(entries)}")
    hashes = [e.leaf_hash() for e in entries]
    # Recompute the root from the entries themselves: the checkpoint must vouch for exactly them.
    if root_from_leaf_hashes(hashes[: latest.size]) != latest.root:
        raise ProofError(f"entries do not hash to the checkpoint's root at size {latest.size}")
    result: dict[str, Any] = {"origin": origin, "size": latest.size, "root": latest.root.hex(), "ok": True}
    if args.checkpoint is not None:
        old = open_checkpoint(Path(args.checkpoint).read_bytes(), keys, threshold)
        if old.origin != origin:
            raise ProofError(f"--checkpoint is of log {old.origin!r}, not {origin!r}")
        from agent.tlog.merkle import consistency_proof

        proof = consistency_proof(old.size, hashes[: latest.size]) if old.size else []
        verify_consistency(old.size, latest.size, old.root, latest.root, proof)
        result["consistent_from"] = old.size
    result["entries"] = [
        {"index": i, "version": e.version, "length": e.length, "sha256": e.sha256, "name": e.name}
        for i, e in enumerate(entries[: latest.size])
    ]
    print(json.dumps(result, indent=2))
    return 0


def _guard(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except (TlogError, ControlError, OSError, ValueError) as exc:
            text = exc.message if isinstance(exc, Rejected) else str(exc)
            print(f"roomctl log: {text}", file=sys.stderr)
            return 1 if isinstance(exc, TlogError) else 2

    return run


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    log = sub.add_parser("log", help="the firmware transparency log (append, prove, verify)")
    lsub = log.add_subparsers(dest="log_command", required=True)
    p = lsub.add_parser("append", help="log a bundle and sign a new checkpoint")
    p.add_argument("bundle", help="the firmware bundle file (.raucb)")
    p.add_argument("--log", required=True, metavar="DIR", help="the transparency log directory")
    p.add_argument("--key", required=True, help="the transparency private key (Ed25519 PEM)")
    p.add_argument("--version", required=True, type=int, help="firmware version (integer, increasing)")
    p.add_argument("--origin", help=f"the log's name, on the first append (default {DEFAULT_ORIGIN})")
    p.add_argument("--passphrase-env", metavar="VAR", help="environment variable holding the key passphrase")
    p.set_defaults(func=_guard(_append))
    p = lsub.add_parser("prove", help="print the inclusion proof of a bundle (for its update document)")
    p.add_argument("bundle", help="the firmware bundle file (must be in the log)")
    p.add_argument("--log", required=True, metavar="DIR", help="the transparency log directory")
    p.add_argument("--out", help="output file (default: stdout)")
    p.set_defaults(func=_guard(_prove))
    p = lsub.add_parser(
        "verify", help="check the log's checkpoint, and that it only grew since --checkpoint (exit 1 if not)"
    )
    p.add_argument("--log", required=True, metavar="DIR", help="the transparency log directory")
    p.add_argument("--checkpoint", help="an older checkpoint note you kept")
    p.add_argument("--root", help="trust root envelope: check signatures with its transparency role")
    p.add_argument("--key", help="or: the transparency public key (.pub.json or PEM)")
    p.add_argument("--passphrase-env", metavar="VAR", help="environment variable holding the key passphrase")
    p.set_defaults(func=_guard(_verify))
