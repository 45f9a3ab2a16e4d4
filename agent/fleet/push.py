"""``roomctl push`` (publish a signed document, wait for every room's signed ack) and ``roomctl status``.

Rooms and groups come from the customer-signed roster (``--roster``), never from the broker: a group
is the roster's rooms that list it. Acks go through the shared path (:mod:`agent.fleet.send`): only an
ack signed by the room's rostered identity key counts.

``status`` reads the retained states and checks each against the roster: the identity key and HPKE
keys must be the enrolled ones and the audit head must carry the room's signature; otherwise the room
is shown ``forged`` (or ``unverified`` when it is not rostered or shows nothing signed). The other
state fields (online, versions, locked) are reported by the device without a signature; the signed
acks of ``push --wait`` are the evidence of what a room applied.
"""

from __future__ import annotations

__all__ = ["register", "verify_state"]

import argparse
import asyncio
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import aiomqtt
from rich.console import Console
from rich.table import Table

from agent.control.audit import HEAD_TYPE
from agent.control.dsse import Envelope
from agent.control.errors import Rejected
from agent.control.roster import Roster
from agent.control.signing_keys import keyid_of
from agent.control.verify import VerifyContext, verify_document
from agent.fleet.common import (
    CliError,
    Warner,
    add_broker_args,
    add_roster_args,
    guarded,
    load_root,
    load_roster,
    mqtt_client,
    parse_json_message,
)
from agent.fleet.send import Publication, deliver, print_outcomes
from agent.schema.policy import DEFAULT_POLICY, PolicyBody, weakenings

_RETAINED_KINDS = ("root", "policy", "config", "update")


def _read_envelope(path: Path) -> tuple[bytes, Envelope, str]:
    raw = path.read_bytes()
    try:
        obj = parse_json_message(raw)
    except ValueError as exc:
        raise CliError(f"{path}: not JSON ({exc}); push takes a signed envelope (roomctl sign)") from exc
    if isinstance(obj, dict) and "payloadType" not in obj and "kind" in obj:
        kind = obj.get("kind")
        raise CliError(
            f"{path} is an unsigned {kind} payload: sign it first, e.g. "
            f"roomctl sign {kind} {path} --key FLEET_KEY --out {path.stem}.env.json, then push that file"
        )
    env = Envelope.parse(raw)
    kind = env.payload_type.removeprefix("application/vnd.roomagent.").removesuffix("+json")
    if not env.signatures:
        raise CliError(
            f"{path} has no signatures: sign it with roomctl sign {kind} {path} --key KEY --out SIGNED"
        )
    if kind == "roster":
        raise CliError(f"{path} is a roster: it stays with roomctl (--roster) and is never pushed to rooms")
    return raw, env, kind


def _devices(args: argparse.Namespace, roster: Roster) -> list[str]:
    devices = list(dict.fromkeys(args.device))
    for device in devices:
        roster.room(device)  # RosterError names the next step
    if args.group:
        in_groups = roster.in_groups(args.group)
        if not in_groups:
            raise CliError(f"no rostered room is in group(s) {', '.join(args.group)} (roomctl roster show)")
        devices += [d for d in in_groups if d not in devices]
    if not devices:
        raise CliError("no rooms: give --device ID or --group G (rooms and groups come from the roster)")
    return devices


async def _push(args: argparse.Namespace, console: Console) -> int:
    raw, env, kind = _read_envelope(Path(args.envelope))
    roster = load_roster(args)
    devices = _devices(args, roster)
    sha = hashlib.sha256(env.payload).hexdigest()
    prefix = args.prefix
    pubs: list[Publication] = []
    if kind in _RETAINED_KINDS:
        if args.group and not args.device:
            pubs += [Publication(f"{prefix}/groups/{g}/desired/{kind}", raw, True) for g in args.group]
        else:
            pubs += [Publication(f"{prefix}/devices/{d}/desired/{kind}", raw, True) for d in devices]
    else:
        leaf = "cmd" if kind == "command" else kind
        pubs += [Publication(f"{prefix}/devices/{d}/{leaf}", raw, False) for d in devices]
    warner = Warner()
    async with mqtt_client(args) as client:
        if kind == "policy":
            for note in await _policy_preflight(client, args, raw, roster, devices, warner):
                console.print(note, soft_wrap=True)
        with console.status(f"{kind} -> {len(devices)} room(s), waiting up to {args.wait:g} s for acks"):
            outcomes = await deliver(
                client,
                prefix=prefix,
                publications=pubs,
                expected=dict.fromkeys(devices, sha),
                roster=roster,
                wait_s=args.wait,
                warner=warner,
            )
    try:
        version = json.loads(env.payload).get("version")
    except (ValueError, AttributeError):
        version = "?"
    return print_outcomes(
        outcomes, title=f"{kind} v{version} ({sha[:12]})", as_json=args.json, console=console
    )


async def _retained(
    client: aiomqtt.Client, topics: list[str], settle_s: float, warner: Warner
) -> dict[str, bytes]:
    """The retained messages of ``topics`` (collected until the broker is quiet for ``settle_s``)."""
    for t in topics:
        await client.subscribe(t, qos=1)
    found: dict[str, bytes] = {}
    messages = aiter(client.messages)
    loop = asyncio.get_running_loop()
    give_up = loop.time() + 10 * settle_s
    while True:
        try:
            async with asyncio.timeout(max(0.0, min(settle_s, give_up - loop.time()))):
                m = await anext(messages)
        except TimeoutError:
            break
        if str(m.topic) in topics and isinstance(m.payload, bytes | bytearray) and m.payload:
            found[str(m.topic)] = bytes(m.payload)
    for t in topics:
        await client.unsubscribe(t)
    return found


async def _policy_preflight(
    client: aiomqtt.Client,
    args: argparse.Namespace,
    raw: bytes,
    roster: Roster,
    devices: list[str],
    warner: Warner,
) -> list[str]:
    """Say before pushing which rooms will refuse a policy as an unsigned weakening, and why.

    The baseline is what each room would run: the newest policy on its retained desired topics
    (its own and its rostered groups') that verifies against the trust root, else the first-boot
    policy. The check is the room's own (:func:`agent.control.verify.verify_document`), so a
    weakening without the customer's signature is named with its fields
    (:func:`agent.schema.policy.weakenings`).
    """
    root = load_root(args.root)
    now = dt.datetime.now(dt.UTC)
    prefix = args.prefix
    topics = sorted(
        {f"{prefix}/devices/{d}/desired/policy" for d in devices}
        | {f"{prefix}/groups/{g}/desired/policy" for d in devices for g in roster.rooms[d].groups}
    )
    retained = await _retained(client, topics, 0.3, warner)
    notes: list[str] = []
    for device in devices:
        groups = tuple(roster.rooms[device].groups)
        ctx = VerifyContext(device_id=device, groups=groups, now=now)
        baseline, source = DEFAULT_POLICY, "the first-boot policy"
        mine = [
            f"{prefix}/devices/{device}/desired/policy",
            *(f"{prefix}/groups/{g}/desired/policy" for g in groups),
        ]
        best = 0
        for t in mine:
            if t not in retained:
                continue
            try:
                doc = verify_document(retained[t], "policy", root, ctx)
            except (Rejected, ValueError, RecursionError):
                continue
            if doc.version > best and isinstance(doc.body, PolicyBody):
                best, baseline, source = doc.version, doc.body, f"policy v{doc.version} on the broker"
        try:
            verify_document(raw, "policy", root, VerifyContext(device, groups, now, policy=baseline))
        except Rejected as exc:
            if exc.reason == "needs_customer":
                try:
                    new = PolicyBody.model_validate(json.loads(Envelope.parse(raw).payload)["body"])
                    fields = ", ".join(weakenings(baseline, new)) or "?"
                except (ValueError, KeyError, TypeError):
                    fields = "?"
                notes.append(
                    f"{device}: this policy weakens {fields} (compared with {source}) and lacks the "
                    "customer's signature: the room will refuse it (needs_customer); countersign it: "
                    f"roomctl sign policy {args.envelope} --key CUSTOMER_KEY --out SIGNED"
                )
    return notes


def verify_state(device: str, state: Any, roster: Roster) -> tuple[str, str]:
    """(trust, reason) of a retained state: ``verified``, ``forged`` or ``unverified``."""
    room = roster.rooms.get(device)
    if room is None:
        return "unverified", "not in the roster"
    if not isinstance(state, dict):
        return "forged", "not a JSON object"
    if state.get("device") != device:
        return "forged", f"state names device {str(state.get('device'))[:40]!r}"
    identity = state.get("identity")
    key = room.identity_key()
    try:
        claimed = identity["ed25519"]  # type: ignore[index]
        same = keyid_of(claimed) == key.keyid
    except (KeyError, TypeError, AttributeError):
        same = False
    if not same:
        return "forged", "identity key is not the enrolled one"
    if isinstance(identity, dict) and "hpke" in identity and identity["hpke"] != room.hpke:
        return "forged", "HPKE keys are not the enrolled ones"
    head = state.get("audit_head")
    signed = head.get("signed") if isinstance(head, dict) else None
    if signed is None:
        return "unverified", "no signed audit head in the state"
    try:
        env = Envelope.parse(json.dumps(signed).encode())
        claimed_head = json.loads(env.payload)
    except (ValueError, TypeError, RecursionError):
        return "forged", "audit head is not a DSSE envelope"
    pae = env.pae()
    if env.payload_type != HEAD_TYPE or not any(
        s.keyid == key.keyid and key.verify(s.sig, pae) for s in env.signatures
    ):
        return "forged", "audit head is not signed by the enrolled key"
    if (
        not isinstance(claimed_head, dict)
        or claimed_head.get("device") != device
        or claimed_head.get("seq") != head.get("seq")  # type: ignore[union-attr]
        or claimed_head.get("hash") != head.get("hash")  # type: ignore[union-attr]
    ):
        return "forged", "audit head fields differ from the signed head"
    return "verified", "identity and signed audit head match the roster"


async def _collect_states(
    client: aiomqtt.Client, prefix: str, settle_s: float, warner: Warner
) -> dict[str, Any]:
    states: dict[str, Any] = {}
    head, tail = f"{prefix}/devices/", "/state"
    await client.subscribe(f"{prefix}/devices/+/state", qos=1)
    # Retained states arrive in a burst after the subscription: collect until the broker has been
    # quiet for ``settle_s`` (a busy machine delays the burst), at most ten times that in all.
    loop = asyncio.get_running_loop()
    give_up = loop.time() + 10 * settle_s
    messages = aiter(client.messages)
    while True:
        try:
            async with asyncio.timeout(max(0.0, min(settle_s, give_up - loop.time()))):
                m = await anext(messages)
        except TimeoutError:
            break
        topic = str(m.topic)
        if not (topic.startswith(head) and topic.endswith(tail)):
            continue
        device = topic[len(head) : -len(tail)]
        payload = m.payload if isinstance(m.payload, bytes | bytearray) else b""
        if not payload:
            continue  # a cleared retained state
        try:
            state = parse_json_message(bytes(payload))
        except ValueError as exc:
            warner.skip(device, topic, str(exc))
            continue
        if not isinstance(state, dict):
            warner.skip(device, topic, f"a JSON {type(state).__name__}, not an object")
            continue
        states[device] = state
    return states


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)[:24]


async def _status(args: argparse.Namespace, console: Console) -> int:
    roster = load_roster(args)
    warner = Warner()
    async with mqtt_client(args) as client:
        states = await _collect_states(client, args.prefix, args.settle, warner)
    report: dict[str, Any] = {}
    for device in sorted(set(roster.rooms) | set(states)):
        state = states.get(device)
        if state is None:
            trust, reason = "no state", "no retained state on the broker"
        else:
            trust, reason = verify_state(device, state, roster)
        room = roster.rooms.get(device)
        report[device] = {
            "trust": trust,
            "reason": reason,
            "rostered": room is not None,
            "groups": list(room.groups) if room is not None else [],
            "state": state,
        }
    if args.json:
        print(json.dumps(report, sort_keys=True))
        return 0
    table = Table(title=f"{len(roster.rooms)} rostered room(s), {len(states)} state(s)")
    for col in ("device", "trust", "online", "groups", "root", "policy", "config", "locked", "audit seq"):
        table.add_column(col)
    for device, row in report.items():
        s: dict[str, Any] = row["state"] if isinstance(row["state"], dict) else {}
        trust = row["trust"]
        colour = {"verified": "green", "forged": "red"}.get(trust, "yellow")
        applied: dict[str, Any] = s["applied"] if isinstance(s.get("applied"), dict) else {}
        shown = trust != "forged"  # a forged state's claims are not shown as facts
        online = s.get("online") if shown else None
        head: dict[str, Any] = s["audit_head"] if isinstance(s.get("audit_head"), dict) else {}
        table.add_row(
            device,
            f"[{colour}]{trust}[/{colour}]",
            "-" if online is None else ("[green]yes[/green]" if online else "[red]no[/red]"),
            ",".join(row["groups"]) or "-",
            *(_cell(applied.get(k)) if shown else "?" for k in ("root", "policy", "config")),
            _cell(s.get("locked")) if shown else "?",
            _cell(head.get("seq")) if trust == "verified" else "-",
        )
    console.print(table)
    for device, row in report.items():
        if row["trust"] in ("forged", "unverified"):
            console.print(f"{device}: {row['trust']}: {row['reason']}")
    return 0


def _runner(name: str, coro: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        console = Console(stderr=bool(getattr(args, "json", False)))
        return int(asyncio.run(coro(args, console)))

    return guarded(name, run)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("push", help="publish a signed document and wait for the rooms' signed acks")
    p.add_argument("envelope", help="a signed envelope (roomctl sign KIND FILE --key KEY --out FILE)")
    add_broker_args(p)
    add_roster_args(p)
    p.add_argument("--device", action="append", default=[], metavar="ID", help="a rostered room; repeat")
    p.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="G",
        help="every rostered room in group G; retained documents go to the group topic; repeat",
    )
    p.add_argument(
        "--wait", type=float, default=30.0, metavar="SECONDS", help="how long to wait for acks (default 30)"
    )
    p.add_argument(
        "--json", action="store_true", help="print the outcome as one JSON object (table on stderr)"
    )
    p.set_defaults(func=_runner("push", _push))

    p = sub.add_parser("status", help="rooms' retained states, each checked against its rostered key")
    add_broker_args(p)
    add_roster_args(p)
    p.add_argument(
        "--settle",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="collect retained states until the broker is quiet this long (default 0.5)",
    )
    p.add_argument(
        "--json", action="store_true", help="print {device: {trust, reason, groups, state}} as JSON"
    )
    p.set_defaults(func=_runner("status", _status))
