"""``roomctl roster add|remove|show``: the customer's signed list of enrolled rooms.

``add ROOM --identity identity.json --groups hq --customer-key KEY --root root.json --roster FILE``
reads the identity a room printed at installation (``roomagent identity --json``), checks that its
HPKE attestation is signed by its Ed25519 key and names ROOM, adds (or replaces) the room, bumps the
version and re-signs the roster with the customer key(s). ``remove ROOM`` takes a room out the same
way. ``show`` verifies the roster against the trust root's customer threshold and prints it.

Every roster roomctl reads must carry the customer threshold of ``--root``: one signed by the
vendor's fleet key alone is refused (see :mod:`agent.control.roster`).
"""

from __future__ import annotations

__all__ = ["register"]

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from agent.control.roster import (
    Roster,
    RosterBody,
    RosterError,
    RosterRoom,
    attested_hpke,
    roster_envelope,
)
from agent.control.signing_keys import parse_public_key
from agent.fleet.common import (
    CliError,
    add_roster_args,
    guarded,
    load_root,
    load_roster,
    load_signing_keys,
    parse_json_message,
)
from agent.persist import atomic_write_bytes


def _read_identity(path: Path, room: str) -> dict[str, Any]:
    try:
        data = parse_json_message(path.read_bytes())
    except ValueError as exc:
        raise CliError(
            f"--identity {path}: not JSON ({exc}); use the output of roomagent identity --json"
        ) from exc
    if not isinstance(data, dict) or not {"device", "ed25519", "hpke", "hpke_attestation"} <= set(data):
        raise CliError(
            f"--identity {path}: not an enrollment identity (roomagent identity --json on the room)"
        )
    if data["device"] != room:
        raise CliError(f"--identity {path} is room {str(data['device'])[:64]!r}, not {room!r}")
    try:
        key = parse_public_key(data["ed25519"])
    except ValueError as exc:
        raise CliError(f"--identity {path}: bad ed25519 key: {exc}") from exc
    if not isinstance(data["hpke"], dict):
        raise CliError(f"--identity {path}: hpke is not an object")
    # Enrollment is the first place the chain is checked: the HPKE keys are what the room signed.
    attested_hpke(room, key, data["hpke"], data["hpke_attestation"])
    return data


def _existing(args: argparse.Namespace) -> Roster | None:
    if args.roster is None:
        raise CliError("--roster FILE is required (the file to create or update; or set $ROOMCTL_ROSTER)")
    if not Path(args.roster).exists():
        return None
    # An expired roster may be renewed; one signed by anyone but the customer is still refused.
    return load_roster(args, allow_expired=True)


def _write(args: argparse.Namespace, old: Roster | None, rooms: dict[str, RosterRoom]) -> Roster:
    root = load_root(args.root)
    keys = load_signing_keys([Path(k) for k in args.customer_key], args.passphrase_env)
    customer = args.customer or (old.body.customer if old is not None else "customer")
    body = RosterBody(customer=customer, rooms=dict(sorted(rooms.items())))
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    env = roster_envelope(
        body,
        version=(old.version + 1) if old is not None else 1,
        issued_at=now,
        expires=now + dt.timedelta(days=args.expires_days),
        signers=keys,
    )
    raw = env.to_json()
    from agent.control.roster import verify_roster  # the same check every reader makes

    try:
        verified = verify_roster(raw, root, now=now)
    except RosterError as exc:
        raise CliError(
            f"{exc}: --customer-key must be the customer key(s) of --root "
            f"({root.roles['customer'].threshold} needed)"
        ) from exc
    atomic_write_bytes(Path(args.roster), raw + b"\n", mode=0o644)
    return verified


def _add(args: argparse.Namespace) -> int:
    identity = _read_identity(Path(args.identity), args.room)
    old = _existing(args)
    rooms = dict(old.rooms) if old is not None else {}
    groups = [g for g in (args.groups or "").split(",") if g] if args.groups is not None else None
    if groups is None:
        previous = rooms.get(args.room)
        groups = list(previous.groups) if previous is not None else list(identity.get("groups") or [])
    try:
        rooms[args.room] = RosterRoom.model_validate(
            {
                "ed25519": identity["ed25519"],
                "hpke": identity["hpke"],
                "hpke_attestation": identity["hpke_attestation"],
                "groups": groups,
            }
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        raise CliError(f"--identity {args.identity}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from exc
    new = _write(args, old, rooms)
    verb = "replaced" if old is not None and args.room in old.rooms else "added"
    print(f"{args.room} {verb}: roster v{new.version}, {len(new.rooms)} room(s) -> {args.roster}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    old = _existing(args)
    if old is None or args.room not in old.rooms:
        raise CliError(f"{args.room} is not in the roster {args.roster}")
    rooms = {d: r for d, r in old.rooms.items() if d != args.room}
    new = _write(args, old, rooms)
    print(f"{args.room} removed: roster v{new.version}, {len(new.rooms)} room(s) -> {args.roster}")
    return 0


def _show(args: argparse.Namespace) -> int:
    roster = load_roster(args)
    if args.json:
        print(
            json.dumps(
                {
                    "customer": roster.body.customer,
                    "version": roster.version,
                    "issued_at": roster.issued_at.isoformat(),
                    "expires": roster.expires.isoformat(),
                    "signed_by": list(roster.signer_keyids),
                    "rooms": {
                        d: {
                            "keyid": r.identity_key().keyid,
                            "ed25519": r.ed25519,
                            "groups": list(r.groups),
                            "hpke": sorted(r.hpke),
                        }
                        for d, r in roster.rooms.items()
                    },
                },
                sort_keys=True,
            )
        )
        return 0
    table = Table(
        title=f"roster of {roster.body.customer}: v{roster.version}, expires {roster.expires:%Y-%m-%d}"
    )
    for col in ("device", "identity key id", "groups", "HPKE KEMs"):
        table.add_column(col)
    for device, room in roster.rooms.items():
        table.add_row(
            device, room.identity_key().keyid[:16], ",".join(room.groups) or "-", ",".join(sorted(room.hpke))
        )
    Console().print(table)
    return 0


def _signer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--customer-key",
        action="append",
        required=True,
        metavar="KEY",
        help="customer private key (PEM) that signs the roster; repeat to meet a threshold above 1",
    )
    p.add_argument("--passphrase-env", metavar="VAR", help="environment variable holding the key passphrase")
    p.add_argument(
        "--customer",
        metavar="NAME",
        help="customer name recorded in the roster (default: kept, else 'customer')",
    )
    p.add_argument(
        "--expires-days", type=int, default=365, metavar="DAYS", help="roster validity in days (default 365)"
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("roster", help="the customer-signed list of enrolled rooms roomctl trusts")
    rsub = p.add_subparsers(dest="roster_command", required=True, metavar="ACTION")

    a = rsub.add_parser("add", help="enroll (or re-enroll) a room from its roomagent identity --json output")
    a.add_argument("room", metavar="ROOM", help="the room's device id")
    a.add_argument(
        "--identity", required=True, metavar="FILE", help="the room's identity (roomagent identity --json)"
    )
    a.add_argument(
        "--groups",
        metavar="G1,G2",
        help="the room's groups, comma-separated (default: kept from the roster, else the identity's)",
    )
    _signer_args(a)
    add_roster_args(a)
    a.set_defaults(func=guarded("roster add", _add))

    r = rsub.add_parser("remove", help="take a room out of the roster (re-signs it)")
    r.add_argument("room", metavar="ROOM", help="the room's device id")
    _signer_args(r)
    add_roster_args(r)
    r.set_defaults(func=guarded("roster remove", _remove))

    s = rsub.add_parser("show", help="verify the roster against the trust root and print it")
    add_roster_args(s)
    s.add_argument("--json", action="store_true", help="print the roster as JSON")
    s.set_defaults(func=guarded("roster show", _show))
