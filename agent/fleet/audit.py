"""``roomctl audit verify FILE --device-key KEY``: check a device's audit chain and signed head offline.

Exit 0: the chain and head verify and the log is whole. Exit 1 with a JSON report: a broken chain
(``first_bad_seq``), or a log whose current segment began by recording damage to the one before
(``audit_corrupt``, with the damaged file's sha256 and whether the kept copy beside FILE matches).
Exit 2: unreadable input.
"""

from __future__ import annotations

__all__ = ["register"]

import argparse
import hashlib
import json
import sys
from pathlib import Path

from agent.control.audit import ChainBroken, verify_chain
from agent.control.errors import ControlError
from agent.control.signing_keys import parse_public_key
from agent.fleet.common import load_public_key_file


def _verify(args: argparse.Namespace) -> int:
    log_path = Path(args.file)
    head_path = Path(args.head) if args.head else log_path.with_name("audit.head")
    try:
        key = parse_public_key(load_public_key_file(Path(args.device_key)))
        report = verify_chain(log_path.read_bytes(), head_path.read_bytes(), key)
    except ChainBroken as exc:
        print(json.dumps({"ok": False, "first_bad_seq": exc.seq, "line": exc.line, "reason": exc.reason}))
        return 1
    except (ControlError, OSError, ValueError) as exc:
        print(f"roomctl: {exc}", file=sys.stderr)
        return 2
    if report.corruption is not None:
        # The chain since the damage verifies, but the log is not whole: the segment before it was
        # damaged on the device (kept there as audit-damaged-<seq>.jsonl).
        c = report.corruption
        kept = log_path.with_name(f"audit-damaged-{c.seq}.jsonl")
        found = None
        if kept.exists():
            found = hashlib.sha256(kept.read_bytes()).hexdigest() == c.damaged_sha256
        print(
            json.dumps(
                {
                    "ok": False,
                    "audit_corrupt": True,
                    "segment_starts_at_seq": c.seq,
                    "damaged_sha256": c.damaged_sha256,
                    "damaged_file": kept.name,
                    "damaged_file_matches": found,
                    "reason": c.message,
                    "entries": report.entries,
                    "head_seq": report.head_seq,
                    "head_hash": report.head_hash,
                }
            )
        )
        return 1
    print(
        json.dumps(
            {
                "ok": True,
                "entries": report.entries,
                "head_seq": report.head_seq,
                "head_hash": report.head_hash,
            }
        )
    )
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("audit", help="device audit logs")
    asub = p.add_subparsers(dest="audit_command", required=True)
    v = asub.add_parser("verify", help="verify the hash chain and the device-signed head")
    v.add_argument("file", help="audit.jsonl copied from the device")
    v.add_argument("--device-key", required=True, help="device public key (.pub.json, or its state JSON)")
    v.add_argument("--head", help="signed head (default: audit.head beside FILE)")
    v.set_defaults(func=_verify)
