"""``roomctl push`` (publish a signed document, wait for every device's signed ack) and ``roomctl status``.

Devices of a group are found from their retained state (``groups`` field). Acks are matched by the
document's payload sha256 and checked against the device identity key from its retained state.
"""

from __future__ import annotations

__all__ = ["register"]

import argparse
import asyncio
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiomqtt
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agent.control.dsse import Envelope
from agent.control.errors import ControlError
from agent.control.keys import parse_public_key
from agent.fleet.common import CliError, add_broker_args, mqtt_client

_RETAINED_KINDS = ("root", "policy", "config", "update")


async def _collect_states(client: aiomqtt.Client, prefix: str, settle_s: float) -> dict[str, dict[str, Any]]:
    states: dict[str, dict[str, Any]] = {}
    await client.subscribe(f"{prefix}/devices/+/state", qos=1)
    try:
        async with asyncio.timeout(settle_s):
            async for m in client.messages:
                device = str(m.topic).split("/")[-2]
                if isinstance(m.payload, bytes) and m.payload:
                    states[device] = json.loads(m.payload)
    except TimeoutError:
        pass
    return states


def _ack_verified(ack_env: Envelope, state: dict[str, Any] | None) -> bool | None:
    if state is None:
        return None
    try:
        key = parse_public_key(state["identity"]["ed25519"])
    except (KeyError, ValueError, TypeError):
        return None
    return any(s.keyid == key.keyid and key.verify(s.sig, ack_env.pae()) for s in ack_env.signatures)


async def _push(args: argparse.Namespace, console: Console) -> int:
    raw = await asyncio.to_thread(Path(args.envelope).read_bytes)
    env = Envelope.parse(raw)
    kind = env.payload_type.removeprefix("application/vnd.roomagent.").removesuffix("+json")
    sha = hashlib.sha256(env.payload).hexdigest()
    prefix = args.prefix
    results: dict[str, dict[str, Any]] = {}
    async with mqtt_client(args) as client:
        states = await _collect_states(client, prefix, args.settle)
        devices = list(args.device)
        for group in args.group:
            devices += [d for d, s in states.items() if group in s.get("groups", []) and d not in devices]
        if not devices:
            raise CliError("no devices: give --device, or --group with devices whose state names that group")
        await client.subscribe(f"{prefix}/devices/+/ack", qos=1)
        topics: list[tuple[str, bool]] = []
        if kind in _RETAINED_KINDS:
            if args.group and not args.device:
                topics += [(f"{prefix}/groups/{g}/desired/{kind}", True) for g in args.group]
            else:
                topics += [(f"{prefix}/devices/{d}/desired/{kind}", True) for d in devices]
        else:
            leaf = "cmd" if kind == "command" else kind
            topics += [(f"{prefix}/devices/{d}/{leaf}", False) for d in devices]
        for topic, retain in topics:
            await client.publish(topic, raw, qos=1, retain=retain)
        deadline = time.monotonic() + args.wait
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            bar = progress.add_task(f"{kind} -> {len(devices)} device(s)", total=len(devices))
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    async for m in client.messages:
                        parts = str(m.topic).split("/")
                        if parts[-1] != "ack" or not isinstance(m.payload, bytes):
                            continue
                        device = parts[-2]
                        ack_env = Envelope.parse(m.payload)
                        ack = json.loads(ack_env.payload)
                        if device not in devices or ack.get("payload_sha256") != sha or device in results:
                            continue
                        ack["signature_ok"] = _ack_verified(ack_env, states.get(device))
                        results[device] = ack
                        progress.advance(bar)
                        if len(results) == len(devices):
                            break
            except TimeoutError:
                pass
    table = Table(title=f"{kind} v{json.loads(env.payload).get('version')} ({sha[:12]})")
    for col in ("device", "status", "reason", "message", "ack signature"):
        table.add_column(col)
    failed = 0
    for device in devices:
        ack = results.get(device)
        if ack is None:
            failed += 1
            table.add_row(device, "[red]timeout[/red]", "", f"no ack within {args.wait} s", "")
            continue
        ok = ack["status"] == "applied" and ack["signature_ok"] is not False
        failed += 0 if ok else 1
        colour = "green" if ok else "red"
        sig = {True: "ok", False: "BAD", None: "unknown device key"}[ack["signature_ok"]]
        table.add_row(
            device,
            f"[{colour}]{ack['status']}[/{colour}]",
            ack.get("reason") or "",
            (ack.get("message") or "")[:60],
            sig,
        )
    console.print(table)
    if args.json:
        print(json.dumps({d: {k: v for k, v in a.items()} for d, a in results.items()}))
    return 1 if failed else 0


async def _status(args: argparse.Namespace, console: Console) -> int:
    async with mqtt_client(args) as client:
        states = await _collect_states(client, args.prefix, args.settle)
    if args.json:
        print(json.dumps(states))
        return 0
    table = Table(title=f"{len(states)} device(s)")
    for col in ("device", "online", "groups", "root", "policy", "config", "locked", "audit seq"):
        table.add_column(col)
    for device, s in sorted(states.items()):
        applied = s.get("applied", {})
        online = "[green]yes[/green]" if s.get("online") else "[red]no[/red]"
        table.add_row(
            device,
            online,
            ",".join(s.get("groups", [])),
            *(str(applied.get(k, "-")) for k in ("root", "policy", "config")),
            str(s.get("locked", "")),
            str(s.get("audit_head", {}).get("seq", "")),
        )
    console.print(table)
    return 0


def _runner(coro: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        console = Console(stderr=args.json if hasattr(args, "json") else False)
        try:
            return int(asyncio.run(coro(args, console)))
        except (ControlError, OSError, ValueError, aiomqtt.MqttError) as exc:
            print(f"roomctl: {exc}", file=sys.stderr)
            return 2

    return run


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("push", help="publish a signed document and wait for the devices' acks")
    p.add_argument("envelope")
    add_broker_args(p)
    p.add_argument("--device", action="append", default=[], metavar="ID")
    p.add_argument("--group", action="append", default=[], metavar="G")
    p.add_argument("--wait", type=float, default=30.0, metavar="SECONDS")
    p.add_argument("--settle", type=float, default=0.5, help="seconds to collect retained device states")
    p.add_argument("--json", action="store_true", help="also print the acks as JSON")
    p.set_defaults(func=_runner(_push))

    p = sub.add_parser("status", help="fleet table from the devices' retained states")
    add_broker_args(p)
    p.add_argument("--settle", type=float, default=0.5)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_runner(_status))
