"""roomctl's command verbs: one sub-command per room command, all on the shared sign-push-wait path.

=====================  ====================  =========================================
verb                   command (name, args)   signed by
=====================  ====================  =========================================
``lock``               ``lock``               ``--customer-key``, or ``--legal-key`` with
``unlock``             ``unlock``             ``--order-issuer/--order-id/--jurisdiction``
``deprovision``        ``deprovision``        (a lawful order of the room's jurisdiction)
``ptz --preset P``     ``ptz_preset``         ``--fleet-key``
``ptz --pan/...``      ``ptz``                ``--fleet-key``
``keyframe``           ``keyframe``           ``--fleet-key``
``restart-pipeline``   ``restart_pipeline``   ``--fleet-key``
``reboot``             ``reboot``             ``--fleet-key``
``restart-agent``      ``restart_agent``      ``--fleet-key``
=====================  ====================  =========================================

Each builds a ``command`` payload targeting exactly the named rooms (rostered ones only), signs it
(DSSE), publishes it on ``{p}/devices/{id}/cmd`` and waits for every room's ack signed by its
rostered identity key (:func:`agent.fleet.send.deliver`). Exit 0 only when every room applied it.
"""

from __future__ import annotations

__all__ = ["register", "run_command"]

import argparse
import asyncio
import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console

from agent.control.roster import Roster
from agent.control.signing_keys import PrivateKey
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
from agent.fleet.send import Outcome, Publication, command_payload, deliver, print_outcomes, sign


def target_rooms(args: argparse.Namespace, roster: Roster) -> list[str]:
    rooms = list(dict.fromkeys(args.rooms))
    for room in rooms:
        roster.room(room)  # not rostered: RosterError names the next step
    for group in args.group or []:
        rooms += [d for d in roster.in_groups([group]) if d not in rooms]
    if not rooms:
        raise CliError("name at least one ROOM (or --group G); rooms come from the roster")
    return rooms


async def run_command(
    args: argparse.Namespace,
    *,
    name: str,
    command_args: Mapping[str, Any],
    keys: list[PrivateKey],
    roster: Roster,
    rooms: list[str],
    extra_topics: tuple[str, ...] = (),
    on_extra: Callable[[str, bytes], bool] | None = None,
    on_signed: Callable[[str], None] | None = None,
) -> tuple[dict[str, Outcome], str]:
    """Sign ``name(command_args)`` for ``rooms``, publish it, wait for the verified acks.

    ``on_signed(sha)`` learns the command's payload sha256 before it is published (devices quote it
    in replies on ``extra_topics``). Returns the outcomes by room and that sha256.
    """
    payload = command_payload(name, command_args, devices=rooms, version=document_version(), ttl_s=args.ttl)
    env = sign("command", payload, keys)
    raw = env.to_json()
    sha = hashlib.sha256(env.payload).hexdigest()
    if on_signed is not None:
        on_signed(sha)
    async with mqtt_client(args, timeout=max(10.0, args.wait)) as client:
        outcomes = await deliver(
            client,
            prefix=args.prefix,
            publications=[Publication(f"{args.prefix}/devices/{room}/cmd", raw) for room in rooms],
            expected=dict.fromkeys(rooms, sha),
            roster=roster,
            wait_s=args.wait,
            warner=Warner(),
            extra_topics=extra_topics,
            on_extra=on_extra,
        )
    return outcomes, sha


def _keys(paths: list[str] | None, args: argparse.Namespace) -> list[PrivateKey]:
    return load_signing_keys([Path(p) for p in paths or []], args.passphrase_env)


def _intervention(args: argparse.Namespace) -> tuple[dict[str, Any], list[PrivateKey]]:
    command_args: dict[str, Any] = {}
    if args.reason:
        command_args["reason"] = args.reason
    order = (args.order_issuer, args.order_id, args.jurisdiction)
    if args.customer_key and args.legal_key:
        raise CliError("give --customer-key or --legal-key, not both")
    if args.legal_key:
        if not all(order):
            raise CliError(
                "--legal-key needs the lawful order: --order-issuer, --order-id and --jurisdiction"
            )
        command_args["lawful_order"] = {"issuer": order[0], "id": order[1], "jurisdiction": order[2]}
        return command_args, _keys(args.legal_key, args)
    if any(order):
        raise CliError("--order-issuer/--order-id/--jurisdiction go with --legal-key")
    if not args.customer_key:
        raise CliError(f"{args.verb} needs --customer-key KEY (or --legal-key with a lawful order)")
    return command_args, _keys(args.customer_key, args)


def _ptz(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    command_args: dict[str, Any] = {}
    if args.camera:
        command_args["camera"] = args.camera
    moves = {k: getattr(args, k) for k in ("pan", "tilt", "zoom") if getattr(args, k) is not None}
    if args.preset and moves:
        raise CliError("--preset moves to a stored position: give it alone, or --pan/--tilt/--zoom")
    if args.preset:
        return "ptz_preset", {**command_args, "preset": args.preset}
    if not moves:
        raise CliError("ptz needs --preset NAME or at least one of --pan/--tilt/--zoom")
    return "ptz", {**command_args, **moves}


def _run(args: argparse.Namespace) -> int:
    console = Console(stderr=bool(args.json))
    roster = load_roster(args)
    rooms = target_rooms(args, roster)
    if args.verb in ("lock", "unlock", "deprovision"):
        name = args.verb
        command_args, keys = _intervention(args)
    elif args.verb == "ptz":
        name, command_args = _ptz(args)
        keys = _keys(args.fleet_key, args)
    else:
        name = args.verb.replace("-", "_")
        command_args = {}
        keys = _keys(args.fleet_key, args)
    if not keys:
        raise CliError(f"{args.verb} needs --fleet-key KEY (routine commands are signed by the fleet)")
    outcomes, _ = asyncio.run(
        run_command(args, name=name, command_args=command_args, keys=keys, roster=roster, rooms=rooms)
    )
    return print_outcomes(
        outcomes, title=f"{name} -> {len(rooms)} room(s)", as_json=args.json, console=console
    )


def add_common(p: argparse.ArgumentParser, *, wait: float = 30.0) -> None:
    p.add_argument("rooms", nargs="*", metavar="ROOM", help="rostered device id(s) to send it to")
    p.add_argument(
        "--group", action="append", metavar="G", help="also every rostered room of group G; repeat"
    )
    add_broker_args(p)
    add_roster_args(p)
    p.add_argument("--passphrase-env", metavar="VAR", help="environment variable holding the key passphrase")
    p.add_argument(
        "--wait",
        type=float,
        default=wait,
        metavar="SECONDS",
        help=f"how long to wait for acks (default {wait:g})",
    )
    p.add_argument(
        "--ttl",
        type=int,
        default=300,
        metavar="SECONDS",
        help="seconds the command stays valid (default 300)",
    )
    p.add_argument(
        "--json", action="store_true", help="print the outcome as one JSON object (table on stderr)"
    )


def _fleet_key(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--fleet-key",
        action="append",
        metavar="KEY",
        help="fleet private key (PEM) that signs routine commands; repeat for a threshold above 1",
    )


_ROUTINE = {
    "keyframe": "ask the rooms' encoders for a keyframe now",
    "restart-pipeline": "restart the rooms' media pipelines",
    "reboot": "reboot the rooms (through logind, after the signed ack)",
    "restart-agent": "restart the rooms' agents (they ack, exit, and systemd starts them again)",
}

_INTERVENTIONS = {
    "lock": "lock the rooms: media stops, meeting keys refused until unlock (customer, or legal + order)",
    "unlock": "unlock the rooms (customer, or legal with a lawful order)",
    "deprovision": "deprovision the rooms for good: keys wiped, media off (customer, or legal with an order)",
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for verb, text in _INTERVENTIONS.items():
        p = sub.add_parser(verb, help=text)
        add_common(p)
        p.add_argument(
            "--customer-key",
            action="append",
            metavar="KEY",
            help="customer private key (PEM); repeat for several",
        )
        p.add_argument(
            "--legal-key",
            action="append",
            metavar="KEY",
            help="legal private key (PEM), with the order below",
        )
        p.add_argument("--order-issuer", metavar="NAME", help="lawful order: the issuing authority")
        p.add_argument("--order-id", metavar="ID", help="lawful order: its reference")
        p.add_argument(
            "--jurisdiction",
            metavar="CC",
            help="lawful order: jurisdiction (ISO 3166, e.g. DE); must be the room's",
        )
        p.add_argument("--reason", help="free text recorded in the rooms' audit logs")
        p.set_defaults(func=guarded(verb, _run), verb=verb)

    p = sub.add_parser("ptz", help="move the rooms' camera: a stored --preset, or --pan/--tilt/--zoom")
    add_common(p)
    _fleet_key(p)
    p.add_argument("--camera", metavar="ID", help="camera id (default: the room's first camera)")
    p.add_argument("--preset", metavar="NAME", help="stored position, e.g. wide")
    p.add_argument("--pan", type=float, metavar="DEG", help="pan angle, -180..180")
    p.add_argument("--tilt", type=float, metavar="DEG", help="tilt angle, -90..90")
    p.add_argument("--zoom", type=float, metavar="X", help="zoom factor, 1..100")
    p.set_defaults(func=guarded("ptz", _run), verb="ptz")

    for verb, text in _ROUTINE.items():
        p = sub.add_parser(verb, help=text)
        add_common(p)
        _fleet_key(p)
        p.set_defaults(func=guarded(verb, _run), verb=verb)
