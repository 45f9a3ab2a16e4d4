"""``roomctl update push BUNDLE``: roll a firmware bundle out to rooms and follow it to the end.

The bundle must already be in the transparency log (``roomctl log append``): its inclusion proof and
the log's checkpoint go into the ``update`` document, which ``push`` signs with ``--key`` (fleet;
add the customer's key, or pass an envelope the customer countersigned with ``--envelope``, for
rooms under ``updates.mode = customer_approval``). The document is published retained on the
group's (or each device's) ``desired/update`` topic; progress comes from each room's retained state
(``update.phase``/``percent``), the result from its ack, verified against the room's identity key in
the customer-signed roster (``--roster``/``--root``): ``applied`` only once the new slot booted and
passed its health check, ``rolled_back`` with the reason when it fell back.
"""

from __future__ import annotations

__all__ = ["register", "update_payload"]

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import aiomqtt
from rich.console import Console
from rich.table import Table

from agent.control.documents import UpdateBody, payload_type
from agent.control.dsse import Envelope
from agent.control.errors import ControlError
from agent.control.roster import Roster
from agent.fleet.common import (
    CliError,
    Warner,
    add_broker_args,
    add_roster_args,
    load_roster,
    load_signing_keys,
    mqtt_client,
)
from agent.fleet.send import verify_ack
from agent.fleet.tlog import bundle_digest
from agent.tlog.errors import TlogError
from agent.tlog.store import LogStore

_FINAL = ("applied", "rejected", "rolled_back", "superseded")


def _ts(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def update_payload(
    bundle: Path,
    log_dir: Path,
    urls: list[str],
    *,
    devices: list[str],
    groups: list[str],
    window: str | None = None,
    expires_days: float = 7.0,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """The signed payload of an ``update`` document for ``bundle`` (which must be in the log)."""
    length, sha = bundle_digest(bundle)
    store = LogStore(log_dir)
    index = store.find(sha)
    entry = store.entries()[index]
    body: dict[str, Any] = {
        "firmware_version": entry.version,
        "length": length,
        "sha256": sha,
        "urls": urls,
        "transparency": store.prove(index).to_json(),
    }
    if window is not None:
        m = re.fullmatch(r"(\d\d:\d\d)-(\d\d:\d\d)", window)
        if m is None:
            raise CliError("--window is HH:MM-HH:MM (UTC)")
        body["install_window"] = {"start": m.group(1), "end": m.group(2)}
    UpdateBody.model_validate(body)
    t = now or dt.datetime.now(dt.UTC).replace(microsecond=0)
    return {
        "kind": "update",
        # Retained per group and device: a time-based version keeps it increasing across admins.
        "version": int(t.timestamp()),
        "issued_at": _ts(t),
        "expires": _ts(t + dt.timedelta(days=expires_days)),
        "targets": {"devices": devices, "groups": groups},
        "body": body,
    }


def _envelope(args: argparse.Namespace) -> Envelope:
    if args.envelope:
        env = Envelope.parse(Path(args.envelope).read_bytes())
        if env.payload_type != payload_type("update"):
            raise CliError(f"{args.envelope} is not an update envelope")
        _, sha = bundle_digest(Path(args.bundle))
        if json.loads(env.payload)["body"]["sha256"] != sha:
            raise CliError(f"{args.envelope} is for another bundle than {args.bundle}")
        return env
    if not args.url or not args.sign or not args.log:
        raise CliError("give --log, --url and --sign KEY (or a signed --envelope)")
    payload = update_payload(
        Path(args.bundle),
        Path(args.log),
        args.url,
        devices=args.device,
        groups=args.group,
        window=args.window,
        expires_days=args.expires_days,
    )
    env = Envelope(payload_type("update"), json.dumps(payload, separators=(",", ":")).encode(), ())
    for key in load_signing_keys([Path(k) for k in args.sign], args.passphrase_env):
        env = env.signed_by(key)
    return env


def _done(devices: list[str], results: dict[str, dict[str, Any]]) -> bool:
    return bool(devices) and all(d in results for d in devices)


def _take(
    m: aiomqtt.Message,
    sha: str,
    states: dict[str, dict[str, Any]],
    results: dict[str, dict[str, Any]],
    roster: Roster,
    warner: Warner,
) -> None:
    """File one message: a room's retained state, or its final ack for this document (only an ack
    signed by the room's rostered identity key counts; others are warned about and ignored)."""
    parts = str(m.topic).split("/")
    if not isinstance(m.payload, bytes) or len(parts) < 2:
        return
    device = parts[-2]
    if parts[-1] == "state" and m.payload:
        try:
            state = json.loads(m.payload)
        except ValueError:
            return
        if isinstance(state, dict):
            states[device] = state
    elif parts[-1] == "ack" and device not in results:
        try:
            ack, untrusted = verify_ack(device, m.payload, roster)
        except (ValueError, TypeError) as exc:
            warner.skip(device, str(m.topic), str(exc))
            return
        if ack.get("payload_sha256") != sha or ack.get("status") not in _FINAL:
            return
        if untrusted is not None:
            warner.skip(device, str(m.topic), untrusted)
            return
        ack["signature_ok"] = True
        results[device] = ack


def _progress_line(device: str, state: dict[str, Any] | None, ack: dict[str, Any] | None) -> str:
    if ack is not None:
        return f"{device}: {ack['status']} {ack.get('reason') or ''} {ack.get('message', '')[:80]}".rstrip()
    up = (state or {}).get("update") or {}
    pct = up.get("percent")
    return f"{device}: {up.get('phase', 'waiting')}{f' {pct}%' if pct is not None else ''}"


async def _push(args: argparse.Namespace, console: Console) -> int:
    roster = await asyncio.to_thread(load_roster, args)
    warner = Warner()
    env = await asyncio.to_thread(_envelope, args)
    raw = env.to_json()
    sha = hashlib.sha256(env.payload).hexdigest()
    payload = json.loads(env.payload)
    target = payload["body"]["firmware_version"]
    prefix = args.prefix
    states: dict[str, dict[str, Any]] = {}
    results: dict[str, dict[str, Any]] = {}
    devices: list[str] = []
    published = False
    last_line: dict[str, str] = {}
    # A rollout outlives broker restarts: one persistent MQTT 5 session per document (acks published
    # while we reconnect wait at the broker), subscribed before the document goes out; the retained
    # states arrive again after each reconnect.
    ident, expiry = f"roomctl-update-{sha[:16]}", int(args.wait) + 60
    deadline = time.monotonic() + args.wait
    while not (published and _done(devices, results)) and time.monotonic() < deadline:
        try:
            async with mqtt_client(args, identifier=ident, session_expiry_s=expiry) as client:
                await client.subscribe(f"{prefix}/devices/+/ack", qos=1)
                await client.subscribe(f"{prefix}/devices/+/state", qos=1)
                if not published:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(args.settle):
                            async for m in client.messages:
                                _take(m, sha, states, results, roster, warner)
                    devices = _devices(args, roster)
                    topics = (
                        [f"{prefix}/groups/{g}/desired/update" for g in args.group]
                        if args.group and not args.device
                        else [f"{prefix}/devices/{d}/desired/update" for d in devices]
                    )
                    for topic in topics:
                        await client.publish(topic, raw, qos=1, retain=True)
                    published = True
                    console.print(f"update to firmware v{target} ({sha[:12]}) -> {len(devices)} room(s)")
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    while not _done(devices, results):
                        m = await anext(aiter(client.messages))
                        _take(m, sha, states, results, roster, warner)
                        for device in devices:
                            line = _progress_line(device, states.get(device), results.get(device))
                            if last_line.get(device) != line:
                                last_line[device] = line
                                console.print(line)
        except TimeoutError:
            break
        except aiomqtt.MqttError as exc:
            console.print(f"broker connection lost ({exc}); reconnecting")
            await asyncio.sleep(1.0)
    if not published:
        raise CliError(f"could not publish the update within {args.wait:.0f} s")
    table = Table(title=f"firmware v{target} ({sha[:12]})")
    for col in ("device", "status", "reason", "message", "firmware", "ack signature"):
        table.add_column(col)
    failed = 0
    out: dict[str, Any] = {}
    for device in devices:
        ack = results.get(device)
        fw = ((states.get(device) or {}).get("update") or {}).get("firmware_version", "")
        if ack is None:
            failed += 1
            table.add_row(
                device, "[red]timeout[/red]", "", f"no final ack within {args.wait:.0f} s", str(fw), ""
            )
            out[device] = {"status": "timeout", "firmware_version": fw}
            continue
        ok = ack["status"] == "applied"
        failed += 0 if ok else 1
        colour = "green" if ok else "red"
        sig = "ok (rostered key)"
        table.add_row(
            device,
            f"[{colour}]{ack['status']}[/{colour}]",
            ack.get("reason") or "",
            (ack.get("message") or "")[:60],
            str(fw),
            sig,
        )
        out[device] = {**ack, "firmware_version": fw}
    console.print(table)
    if args.json:
        print(json.dumps({"firmware_version": target, "payload_sha256": sha, "rooms": out}))
    return 1 if failed else 0


def _devices(args: argparse.Namespace, roster: Roster) -> list[str]:
    """The rooms to update: ``--device`` ids and the rostered rooms of ``--group`` (never a room's
    own unverified claim of membership)."""
    devices = list(dict.fromkeys(args.device))
    for device in devices:
        roster.room(device)  # RosterError names the next step
    devices += [d for d in roster.in_groups(args.group) if d not in devices] if args.group else []
    if not devices:
        raise CliError("no rooms: give --device ID or --group G with rostered rooms (roomctl roster show)")
    return devices


def _runner(args: argparse.Namespace) -> int:
    console = Console(stderr=True) if args.json else Console()
    try:
        return int(asyncio.run(_push(args, console)))
    except (ControlError, TlogError, OSError, ValueError, aiomqtt.MqttError) as exc:
        print(f"roomctl update: {exc}", file=sys.stderr)
        return 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = sub.add_parser("update", help="roll firmware out to rooms (signed update documents)")
    usub = up.add_subparsers(dest="update_command", required=True)
    p = usub.add_parser("push", help="sign (or take) an update for BUNDLE, publish it, follow every room")
    p.add_argument("bundle", help="the firmware bundle (must be in the transparency log)")
    p.add_argument("--log", metavar="DIR", help="the transparency log directory (not with --envelope)")
    p.add_argument("--url", action="append", default=[], help="where rooms download it; repeat for mirrors")
    p.add_argument(
        "--sign", action="append", default=[], metavar="KEY", help="signing key (fleet; plus customer's)"
    )
    p.add_argument(
        "--envelope", help="an update envelope already signed (e.g. countersigned by the customer)"
    )
    p.add_argument("--window", metavar="HH:MM-HH:MM", help="daily UTC install window (default: any time)")
    p.add_argument(
        "--expires-days",
        type=float,
        default=7.0,
        metavar="DAYS",
        help="document validity in days (default 7)",
    )
    p.add_argument("--passphrase-env", metavar="VAR", help="environment variable holding the key passphrase")
    add_broker_args(p)
    add_roster_args(p)  # rooms and groups come from the roster; each ack is verified against it
    p.add_argument("--device", action="append", default=[], metavar="ID", help="a room to update; repeat")
    p.add_argument("--group", action="append", default=[], metavar="G", help="a group of rooms; repeat")
    p.add_argument("--wait", type=float, default=1800.0, metavar="SECONDS", help="how long to follow")
    p.add_argument("--settle", type=float, default=0.5, help="seconds to collect retained device states")
    p.add_argument("--json", action="store_true", help="print the results as JSON (progress goes to stderr)")
    p.set_defaults(func=_runner)

    p = usub.add_parser("make", help="write the update payload for BUNDLE (sign it with roomctl sign update)")
    p.add_argument("bundle", help="the firmware bundle (must be in the transparency log)")
    p.add_argument("--log", required=True, metavar="DIR", help="the transparency log directory")
    p.add_argument(
        "--url", action="append", required=True, help="where rooms download it; repeat for mirrors"
    )
    p.add_argument("--device", action="append", default=[], metavar="ID", help="a room to update; repeat")
    p.add_argument("--group", action="append", default=[], metavar="G", help="a group of rooms; repeat")
    p.add_argument("--window", metavar="HH:MM-HH:MM", help="daily UTC install window (default: any time)")
    p.add_argument(
        "--expires-days",
        type=float,
        default=7.0,
        metavar="DAYS",
        help="document validity in days (default 7)",
    )
    p.add_argument("--out", help="output file (default: stdout)")
    p.set_defaults(func=_make)


def _make(args: argparse.Namespace) -> int:
    try:
        payload = update_payload(
            Path(args.bundle),
            Path(args.log),
            args.url,
            devices=args.device,
            groups=args.group,
            window=args.window,
            expires_days=args.expires_days,
        )
    except (ControlError, TlogError, OSError, ValueError) as exc:
        print(f"roomctl update: {exc}", file=sys.stderr)
        return 2
    data = json.dumps(payload, indent=2)
    if args.out:
        Path(args.out).write_text(data + "\n")
    else:
        print(data)
    return 0
