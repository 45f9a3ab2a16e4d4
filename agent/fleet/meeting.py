"""``roomctl meeting start|stop|web``: hand out a meeting's SFrame keys, or end it; signed by the customer.

``start``:

1. take each room's HPKE public keys from the customer-signed roster (``--roster``), never from the
   broker, and check that they chain to the room's rostered Ed25519 identity key (the room signed
   them at enrollment: :func:`agent.control.roster.attested_hpke`); a room that fails is named and
   the meeting does not start (exit 3). A broker client that rewrites a room's retained state with
   its own keys changes nothing here;
2. generate one fresh base key and KID per sender (each room, then each ``--guest`` browser) and seal
   it with HPKE to every room (:func:`agent.privacy.key_packages.seal_meeting_keys`); with
   ``--sfu-url``/``--sfu-room`` the WebRTC meeting place goes into every package (customer-signed),
   and each guest gets a join link whose ``#fragment`` carries its keys (:mod:`agent.fleet.web`);
3. build one ``keys`` document per recipient room (targets: that room only), sign it with the
   customer key (DSSE) and publish it on ``{p}/devices/{id}/keys`` (QoS 1, not retained) through the
   shared sign-push-wait path (:mod:`agent.fleet.send`);
4. with ``--wait-acks``, wait for each room's ack, which counts only when signed by its rostered key.

``stop`` sends the ``meeting_stop`` command (``{"meeting": id or null}``) to the rooms: their keys of
that meeting (or all) are erased and media stops. Only the customer may sign it.

The fleet operator can do neither: a device accepts key packages and ``meeting_stop`` only with the
customer threshold. Key bytes are never printed (only KIDs, epochs and outcomes), except a guest's
keys inside the join link the customer asked for with ``--guest``.

``web`` serves the browser client (``web/``) locally for a first try (:mod:`agent.fleet.web`).
"""

from __future__ import annotations

__all__ = ["MeetingError", "build_key_envelopes", "register", "rostered_hpke_keys"]

import argparse
import asyncio
import datetime as dt
import getpass
import hashlib
import json
import secrets
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from agent.control.dsse import Envelope
from agent.control.roster import Roster, RosterError, attested_hpke
from agent.control.signing_keys import PrivateKey
from agent.errors import AgentError
from agent.fleet.common import (
    CliError,
    Warner,
    add_broker_args,
    add_roster_args,
    document_version,
    guarded,
    load_roster,
    load_signing_keys,
    mqtt_client,
)
from agent.fleet.send import Publication, command_payload, deliver, print_outcomes, sign
from agent.fleet.web import add_webrtc_arguments, guest_report, register_web, sfu_place
from agent.privacy.errors import KeyDeliveryError
from agent.privacy.key_packages import seal_meeting_keys
from agent.schema.key_package import KeysBody

_ID_OK = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"


class MeetingError(AgentError):
    """``roomctl meeting`` cannot go on; ``exit_code`` says why (2 usage, 3 rooms, 4 broker)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        self.exit_code = exit_code
        super().__init__(message)


def _ts(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_key_envelopes(
    *,
    packages: dict[str, KeysBody],
    customer_keys: list[PrivateKey],
    version: int,
    issued_at: dt.datetime,
) -> dict[str, Envelope]:
    """One customer-signed ``keys`` envelope per recipient room (pure; no I/O)."""
    out: dict[str, Envelope] = {}
    for room, body in packages.items():
        payload = {
            "kind": "keys",
            "version": version,
            "issued_at": _ts(issued_at),
            # The document lives as long as its keys: a late delivery of expired keys is refused.
            "expires": body.key_expires,
            "targets": {"devices": [room], "groups": []},
            "body": body.model_dump(exclude_none=True),
        }
        out[room] = sign("keys", payload, customer_keys)
    return out


def rostered_hpke_keys(roster: Roster, rooms: list[str]) -> dict[str, dict[str, str]]:
    """Each room's HPKE public keys from the roster, checked against its rostered identity key.

    Raises:
        MeetingError: (exit 3) naming every room that is not rostered or whose attestation fails.
    """
    public: dict[str, dict[str, str]] = {}
    problems: list[str] = []
    for room in rooms:
        entry = roster.rooms.get(room)
        if entry is None:
            problems.append(f"{room}: not in the roster (enroll it: roomctl roster add)")
            continue
        try:
            public[room] = attested_hpke(room, entry.identity_key(), entry.hpke, entry.hpke_attestation)
        except RosterError as exc:
            problems.append(str(exc))
    if problems:
        raise MeetingError("meeting not started: " + "; ".join(problems), 3)
    return public


def _rooms(args: argparse.Namespace, roster: Roster) -> list[str]:
    rooms = [r.strip() for r in (args.rooms or "").split(",") if r.strip()]
    for group in getattr(args, "group", None) or []:
        rooms += [d for d in roster.in_groups([group]) if d not in rooms]
    if not rooms or len(set(rooms)) != len(rooms) or any(set(r) - set(_ID_OK) for r in rooms):
        raise MeetingError("--rooms must be distinct device ids separated by commas (or give --group)")
    return rooms


def _customer_keys(args: argparse.Namespace) -> list[PrivateKey]:
    typed = getpass.getpass("customer key passphrase: ").encode() if args.ask_passphrase else None
    return load_signing_keys([Path(k) for k in args.customer_key], args.passphrase_env, secret_given=typed)


async def _start(args: argparse.Namespace, console: Console) -> int:
    sfu = sfu_place(args)  # before anything else: a bad SFU place or guest list is a usage error
    roster = load_roster(args)
    rooms = _rooms(args, roster)
    public = rostered_hpke_keys(roster, rooms)
    customer_keys = _customer_keys(args)
    meeting = args.meeting or f"m-{secrets.token_hex(6)}"
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    key_expires = _ts(now + dt.timedelta(seconds=args.ttl))
    version = args.version if args.version is not None else document_version()
    try:
        sealed = seal_meeting_keys(
            meeting=meeting,
            epoch=args.epoch,
            suite=args.suite,
            key_expires=key_expires,
            rooms=public,
            kem=args.kem,
            guests=tuple(args.guest or ()),
            sfu=sfu,
        )
    except KeyDeliveryError as exc:
        raise MeetingError(str(exc), 3) from exc
    packages = sealed.packages
    envelopes = build_key_envelopes(
        packages=packages, customer_keys=customer_keys, version=version, issued_at=now
    )
    pubs = [
        Publication(f"{args.prefix}/devices/{room}/keys", env.to_json()) for room, env in envelopes.items()
    ]
    expected = {room: hashlib.sha256(env.payload).hexdigest() for room, env in envelopes.items()}
    async with mqtt_client(args, timeout=args.timeout) as client:
        outcomes = await deliver(
            client,
            prefix=args.prefix,
            publications=pubs,
            expected=expected,
            roster=roster,
            wait_s=args.timeout if args.wait_acks else 0.0,
            warner=Warner(),
        )
    report = {
        "meeting": meeting,
        "epoch": args.epoch,
        "suite": args.suite,
        "kem": args.kem,
        "version": version,
        "key_expires": key_expires,
        "rooms": {
            room: {
                "kid": next(s.kid for s in packages[room].senders if s.device == room),
                "ack": outcomes[room].status if args.wait_acks else None,
                "reason": outcomes[room].reason if args.wait_acks else None,
                "ack_verified": outcomes[room].verified if args.wait_acks else None,
            }
            for room in rooms
        },
        **guest_report(sealed, args, meeting),
    }
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(f"meeting {meeting} epoch {args.epoch} suite {args.suite} kem {args.kem}")
        for room, info in report["rooms"].items():
            outcome = ""
            if args.wait_acks:
                mark = "" if info["ack_verified"] else " (not verified)"
                outcome = f"  ack {info['ack']}{mark} {info['reason'] or ''}"
            print(f"  {room}: kid {info['kid']}{outcome}")
        for guest, info in report.get("guests", {}).items():
            print(
                f"  guest {guest}: kid {info['kid']}\n    join link (holds the guest's keys): {info['link']}"
            )
    if args.wait_acks and not all(o.ok for o in outcomes.values()):
        return 1
    return 0


async def _stop(args: argparse.Namespace, console: Console) -> int:
    roster = load_roster(args)
    rooms = _rooms(args, roster)
    for room in rooms:
        roster.room(room)
    keys = _customer_keys(args)
    payload = command_payload(
        "meeting_stop", {"meeting": args.meeting}, devices=rooms, version=document_version(), ttl_s=args.ttl
    )
    env = sign("command", payload, keys)
    raw = env.to_json()
    sha = hashlib.sha256(env.payload).hexdigest()
    async with mqtt_client(args, timeout=args.timeout) as client:
        outcomes = await deliver(
            client,
            prefix=args.prefix,
            publications=[Publication(f"{args.prefix}/devices/{room}/cmd", raw) for room in rooms],
            expected=dict.fromkeys(rooms, sha),
            roster=roster,
            wait_s=args.timeout,
            warner=Warner(),
        )
    which = f"meeting {args.meeting}" if args.meeting else "all meetings"
    return print_outcomes(outcomes, title=f"meeting_stop ({which})", as_json=args.json, console=console)


def _runner(name: str, coro: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        console = Console(stderr=bool(args.json))
        try:
            return int(asyncio.run(coro(args, console)))
        except MeetingError as exc:
            print(f"roomctl {name}: {exc}", file=sys.stderr)
            return exc.exit_code
        except CliError as exc:
            print(f"roomctl {name}: {exc}", file=sys.stderr)
            return 2

    return guarded(name, run)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rooms", help="device ids, comma-separated (every room sends and receives); rooms must be rostered"
    )
    p.add_argument("--group", action="append", metavar="G", help="every rostered room of group G; repeat")
    add_broker_args(p)
    add_roster_args(p)
    p.add_argument(
        "--customer-key",
        action="append",
        required=True,
        metavar="KEY",
        help="the customer's signing key (PKCS#8 PEM); repeat for a threshold above 1",
    )
    p.add_argument(
        "--passphrase-env", metavar="VAR", help="environment variable holding the key's passphrase"
    )
    p.add_argument("--ask-passphrase", action="store_true", help="prompt for the key's passphrase")
    p.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS", help="seconds to wait for acks (default 10)"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def register(subparsers: Any) -> None:
    meeting = subparsers.add_parser(
        "meeting", help="E2EE meetings: hand out SFrame keys, end meetings (customer)"
    )
    sub = meeting.add_subparsers(dest="meeting_command", required=True, metavar="ACTION")
    p = sub.add_parser("start", help="generate, seal, sign and push one meeting epoch's keys to each room")
    _common(p)
    p.add_argument("--meeting", help="meeting id (default: random)")
    p.add_argument("--epoch", type=int, default=1, help="key epoch; a higher one rotates keys (default 1)")
    p.add_argument(
        "--suite", type=int, default=4, choices=range(1, 6), help="SFrame cipher suite (RFC 9605; default 4)"
    )
    p.add_argument(
        "--kem", default="mlkem768-x25519", choices=("x25519", "mlkem768-x25519"), help="HPKE KEM for sealing"
    )
    p.add_argument("--ttl", type=int, default=8 * 3600, metavar="SECONDS", help="key lifetime (default 8 h)")
    p.add_argument("--version", type=int, help="document version (default: current time in milliseconds)")
    p.add_argument(
        "--wait-acks",
        action="store_true",
        help="wait for each room's signed ack; exit 1 unless all applied with a verified ack",
    )
    add_webrtc_arguments(p)
    p.set_defaults(func=_runner("meeting start", _start))

    p = sub.add_parser("stop", help="end a meeting in the rooms: keys erased, media stopped (meeting_stop)")
    _common(p)
    p.add_argument("--meeting", help="the meeting to end (default: every meeting on those rooms)")
    p.add_argument(
        "--ttl",
        type=int,
        default=300,
        metavar="SECONDS",
        help="seconds the command stays valid (default 300)",
    )
    p.set_defaults(func=_runner("meeting stop", _stop))

    register_web(sub)
