"""``roomctl audit verify|fetch``: a room's audit log, checked against its rostered identity key.

``verify FILE --device ID`` checks the hash chain and the device-signed head offline; the key comes
from the roster (``--roster``/``--root``), or from ``--device-key`` (a ``.pub.json`` or the room's
``roomagent identity --json`` output), never from the broker.

``fetch ROOM --out audit.jsonl`` sends the ``audit_fetch`` command (``{"from_seq": n}``, signed by
``--fleet-key`` or ``--customer-key``) on the shared sign-push-wait path, collects the room's
``{p}/devices/{id}/audit_export`` chunks that quote the command's payload sha256
(``{"request", "chunk", "last", "entries", "head"}``), writes the entries as the device's canonical
JSON lines and the signed head beside them (``OUT.head``), then verifies both against the rostered
key. Exit: 0 fetched and verified, 1 the room refused or the log does not verify, 2 usage,
3 no complete export in time, 4 broker unreachable.

A log whose current segment began by recording damage to the one before is reported as
``audit_corrupt`` (exit 1) with the damaged file's sha256 and whether the kept copy beside FILE matches.
"""

from __future__ import annotations

__all__ = ["register", "verify_fetched"]

import argparse
import asyncio
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from agent.control.audit import GENESIS, HEAD_TYPE, ChainBroken, verify_chain
from agent.control.dsse import Envelope
from agent.control.errors import ControlError
from agent.control.signing_keys import PublicKey, parse_public_key
from agent.fleet.common import (
    CliError,
    Warner,
    add_roster_args,
    guarded,
    load_public_key_file,
    load_roster,
    load_signing_keys,
    parse_json_message,
)
from agent.fleet.send import print_outcomes
from agent.fleet.verbs import add_common, run_command, target_rooms
from agent.persist import atomic_write_bytes


def _canonical(entry: Any) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()


def _device_key(args: argparse.Namespace) -> PublicKey:
    if args.device_key is not None:
        return parse_public_key(load_public_key_file(Path(args.device_key)))
    if args.device is None:
        raise CliError("give --device ID (its key comes from --roster) or --device-key FILE")
    return load_roster(args).room(args.device).identity_key()


def _head_path(log_path: Path, given: str | None) -> Path:
    if given:
        return Path(given)
    beside = log_path.with_name(log_path.name + ".head")
    return beside if beside.exists() else log_path.with_name("audit.head")


def _verify(args: argparse.Namespace) -> int:
    log_path = Path(args.file)
    key = _device_key(args)
    try:
        report = verify_chain(log_path.read_bytes(), _head_path(log_path, args.head).read_bytes(), key)
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


@dataclass
class _Export:
    request: str
    chunks: dict[int, dict[str, Any]] = field(default_factory=dict)
    last: int | None = None

    def add(self, chunk: Any) -> bool:
        """Take one chunk if it answers our request; True once every chunk up to the last is here."""
        if not isinstance(chunk, dict) or chunk.get("request") != self.request:
            return self.complete()
        n = chunk.get("chunk")
        if (
            isinstance(n, int)
            and not isinstance(n, bool)
            and 0 <= n < 100_000
            and isinstance(chunk.get("entries"), list)
        ):
            self.chunks[n] = chunk
            if chunk.get("last") is True:
                self.last = n
        return self.complete()

    def complete(self) -> bool:
        return self.last is not None and all(i in self.chunks for i in range(self.last + 1))


def verify_fetched(entries: list[Any], head: Any, key: PublicKey, from_seq: int) -> dict[str, Any]:
    """Check fetched entries and the signed head against ``key``.

    From seq 1 the whole chain is checked (:func:`verify_chain`); from a later seq the fetched
    entries must link to each other and end at the signed head (their first ``prev`` is taken on
    trust from an earlier fetch).

    Raises:
        ChainBroken: naming the first entry that does not verify, or the head.
    """
    lines = b"".join(_canonical(e) + b"\n" for e in entries)
    head_raw = json.dumps(head).encode()
    if from_seq <= 1:
        report = verify_chain(lines, head_raw, key)
        return {"entries": report.entries, "head_seq": report.head_seq, "head_hash": report.head_hash}
    try:
        env = Envelope.parse(head_raw)
        claimed = parse_json_message(env.payload)
    except ValueError as exc:
        raise ChainBroken(None, None, f"head is not a DSSE envelope: {exc}") from exc
    if env.payload_type != HEAD_TYPE or not any(
        s.keyid == key.keyid and key.verify(s.sig, env.pae()) for s in env.signatures
    ):
        raise ChainBroken(None, None, "head is not signed by this device key")
    prev: str | None = None
    seq = from_seq - 1
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or entry.get("seq") != seq + 1:
            raise ChainBroken(seq + 1, number, "entries are not consecutive")
        if prev is not None and entry.get("prev") != prev:
            raise ChainBroken(seq, number, "hash chain broken: entry altered")
        prev = hashlib.sha256(_canonical(entry)).hexdigest()
        seq += 1
    if not isinstance(claimed, dict) or claimed.get("seq") != seq or claimed.get("hash") != (prev or GENESIS):
        raise ChainBroken(
            seq,
            None,
            f"signed head is seq {claimed.get('seq') if isinstance(claimed, dict) else '?'}, "
            f"fetched entries end at seq {seq}",
        )
    return {"entries": len(entries), "head_seq": seq, "head_hash": prev}


def _fetch(args: argparse.Namespace) -> int:
    console = Console(stderr=bool(args.json))
    roster = load_roster(args)
    rooms = target_rooms(args, roster)
    if len(rooms) != 1:
        raise CliError("audit fetch takes exactly one ROOM")
    room = rooms[0]
    if bool(args.fleet_key) == bool(args.customer_key):
        raise CliError("sign audit_fetch with --fleet-key KEY or --customer-key KEY (one of them)")
    keys = load_signing_keys([Path(k) for k in (args.fleet_key or args.customer_key)], args.passphrase_env)
    topic = f"{args.prefix}/devices/{room}/audit_export"
    warner = Warner()
    export = _Export(request="")  # the request id is the command's payload sha256, set once signed

    def on_signed(sha: str) -> None:
        export.request = sha

    def on_chunk(t: str, payload: bytes) -> bool:
        try:
            chunk = parse_json_message(payload)
        except ValueError as exc:
            warner.skip(room, t, str(exc))
            return export.complete()
        return export.add(chunk)

    outcomes, _ = asyncio.run(
        run_command(
            args,
            name="audit_fetch",
            command_args={"from_seq": args.from_seq},
            keys=keys,
            roster=roster,
            rooms=[room],
            extra_topics=(topic,),
            on_extra=on_chunk,
            on_signed=on_signed,
        )
    )
    if not outcomes[room].ok:
        return print_outcomes(outcomes, title=f"audit_fetch {room}", as_json=args.json, console=console)
    if export.last is None or not export.complete():
        print(
            f"roomctl audit fetch: {room} acked, but its export did not arrive within {args.wait:g} s",
            file=sys.stderr,
        )
        return 3
    chunks = [export.chunks[i] for i in range(export.last + 1)]
    entries = [e for c in chunks for e in c["entries"]]
    head = chunks[-1].get("head")
    out = Path(args.out)
    atomic_write_bytes(out, b"".join(_canonical(e) + b"\n" for e in entries), mode=0o600)
    head_path = out.with_name(out.name + ".head")
    atomic_write_bytes(head_path, json.dumps(head).encode() + b"\n", mode=0o600)
    try:
        report = verify_fetched(entries, head, roster.room(room).identity_key(), args.from_seq)
    except ChainBroken as exc:
        print(json.dumps({"ok": False, "device": room, "first_bad_seq": exc.seq, "reason": exc.reason}))
        return 1
    print(json.dumps({"ok": True, "device": room, "out": str(out), "head": str(head_path), **report}))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("audit", help="rooms' audit logs: fetch them, verify them against the roster")
    asub = p.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    v = asub.add_parser("verify", help="verify an audit log's hash chain and the room-signed head")
    v.add_argument("file", help="audit.jsonl (from roomctl audit fetch, or copied from the room)")
    v.add_argument("--device", metavar="ID", help="the room; its key comes from the roster (--roster/--root)")
    v.add_argument(
        "--device-key",
        metavar="FILE",
        help="instead of the roster: the room's key (.pub.json, or its roomagent identity --json output)",
    )
    v.add_argument(
        "--head", metavar="FILE", help="signed head (default: FILE.head, else audit.head beside FILE)"
    )
    add_roster_args(v)
    v.set_defaults(func=guarded("audit verify", _verify))

    f = asub.add_parser("fetch", help="ask a room for its audit log (audit_fetch), write and verify it")
    add_common(f)
    f.add_argument("--out", required=True, metavar="FILE", help="where to write the entries (JSON lines)")
    f.add_argument(
        "--from-seq", type=int, default=0, metavar="N", help="first entry to fetch (default 0: the whole log)"
    )
    f.add_argument("--fleet-key", action="append", metavar="KEY", help="sign with the fleet key (PEM)")
    f.add_argument("--customer-key", action="append", metavar="KEY", help="or with the customer key (PEM)")
    f.set_defaults(func=guarded("audit fetch", _fetch))
