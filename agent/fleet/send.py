"""The one sign-push-wait path of roomctl: every document roomctl sends goes through :func:`deliver`.

1. the caller signs a payload (:func:`sign`) or brings a signed envelope (``roomctl push FILE``);
2. :func:`deliver` subscribes to the rooms' ack topics *before* publishing (QoS 1), publishes each
   message, then collects one ack per room, matched by the document's payload sha256;
3. an ack counts only when it is a DSSE envelope signed by the room's *rostered* identity key and
   names that room (:func:`verify_ack`). A forged ack (unsigned, signed by a key planted in the
   retained state, or another room's) never ends the wait: roomctl keeps waiting for the genuine
   one, and reports the room as ``forged`` when none came;
4. garbage on an ack topic (invalid UTF-8, a JSON list, not JSON, deep nesting) is skipped with one
   warning line naming the device and the topic (:class:`~agent.fleet.common.Warner`).

:func:`print_outcomes` prints the table (or ``--json``) and returns the exit code: 0 when every room
applied it with a verified ack, else 1.
"""

from __future__ import annotations

__all__ = [
    "Outcome",
    "Publication",
    "command_payload",
    "deliver",
    "hint_for",
    "print_outcomes",
    "sign",
    "verify_ack",
]

import asyncio
import datetime as dt
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiomqtt
from rich.console import Console
from rich.table import Table

from agent.control.documents import payload_type
from agent.control.dsse import Envelope
from agent.control.roster import Roster
from agent.control.signing_keys import PrivateKey
from agent.fleet.common import Warner, parse_json_message

ACK_TYPE = payload_type("ack")


def _ts(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def command_payload(
    name: str, args: Mapping[str, Any], *, devices: Sequence[str], version: int, ttl_s: int
) -> dict[str, Any]:
    """A ``command`` payload targeting exactly ``devices`` (pure)."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return {
        "kind": "command",
        "version": version,
        "issued_at": _ts(now),
        "expires": _ts(now + dt.timedelta(seconds=ttl_s)),
        "targets": {"devices": list(devices), "groups": []},
        "body": {"name": name, "args": dict(args)},
    }


def sign(kind: str, payload: Mapping[str, Any], keys: Sequence[PrivateKey]) -> Envelope:
    data = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    env = Envelope(payload_type(kind), data, ())
    for key in keys:
        env = env.signed_by(key)
    return env


@dataclass(frozen=True, slots=True)
class Publication:
    topic: str
    raw: bytes
    retain: bool = False


@dataclass(slots=True)
class Outcome:
    """What happened at one room: ``status`` is the device's (``applied``, ``rejected``, ...) when a
    verified ack came, else ``timeout`` / ``forged`` (only unverifiable acks came)."""

    device: str
    status: str
    reason: str | None = None
    message: str = ""
    verified: bool = False
    ack: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.verified and self.status == "applied"


def verify_ack(device: str, data: bytes, roster: Roster) -> tuple[dict[str, Any], str | None]:
    """Parse an ack from ``device``'s ack topic; return (ack payload, why it is not trusted or None).

    Raises:
        ValueError: not an ack envelope at all (garbage: skip it).
    """
    parse_json_message(data)  # size and nesting bounded before the strict parser runs
    env = Envelope.parse(data)
    if env.payload_type != ACK_TYPE:
        raise ValueError("not a DSSE ack envelope")
    ack = parse_json_message(env.payload)
    if not isinstance(ack, dict):
        raise ValueError("ack payload is not a JSON object")
    room = roster.rooms.get(device)
    if room is None:
        return ack, "the device is not in the roster: nothing to verify its ack with"
    key = room.identity_key()
    pae = env.pae()
    if not any(s.keyid == key.keyid and key.verify(s.sig, pae) for s in env.signatures):
        return ack, "not signed by the room's rostered identity key"
    if ack.get("device") != device or ack.get("kind") != "ack":
        return ack, f"signed ack names device {str(ack.get('device'))[:64]!r}"
    return ack, None


def _device_of(topic: str, prefix: str, leaf: str) -> str | None:
    head, tail = f"{prefix}/devices/", f"/{leaf}"
    if topic.startswith(head) and topic.endswith(tail):
        device = topic[len(head) : -len(tail)]
        return device if device and "/" not in device else None
    return None


async def deliver(
    client: aiomqtt.Client,
    *,
    prefix: str,
    publications: Sequence[Publication],
    expected: Mapping[str, str],
    roster: Roster,
    wait_s: float,
    warner: Warner,
    extra_topics: Sequence[str] = (),
    on_extra: Any = None,
) -> dict[str, Outcome]:
    """Publish, then wait up to ``wait_s`` for a verified ack from every room of ``expected``
    (device -> payload sha256 of the document it should ack).

    ``extra_topics`` are subscribed too; their messages go to ``on_extra(topic, payload) -> bool``
    (True: the caller has what it waited for from that topic). The wait ends when every room has a
    verified ack and ``on_extra`` (if any) reported done, or at the deadline.
    """
    for device in expected:
        await client.subscribe(f"{prefix}/devices/{device}/ack", qos=1)
    for topic in extra_topics:
        await client.subscribe(topic, qos=1)
    for pub in publications:
        await client.publish(pub.topic, pub.raw, qos=1, retain=pub.retain)
    verified: dict[str, Outcome] = {}
    suspect: dict[str, Outcome] = {}
    extra_done = on_extra is None
    deadline = time.monotonic() + wait_s
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            async for message in client.messages:
                topic = str(message.topic)
                payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
                found = _device_of(topic, prefix, "ack")
                if found is None or found not in expected:
                    if on_extra is not None and any(_match(t, topic) for t in extra_topics):
                        extra_done = bool(on_extra(topic, bytes(payload))) or extra_done
                else:
                    device = found
                    try:
                        ack, untrusted = verify_ack(device, bytes(payload), roster)
                    except (ValueError, TypeError) as exc:
                        warner.skip(device, topic, str(exc))
                        continue
                    if ack.get("payload_sha256") != expected[device] or device in verified:
                        continue
                    outcome = Outcome(
                        device,
                        str(ack.get("status")),
                        None if ack.get("reason") is None else str(ack.get("reason")),
                        str(ack.get("message") or ""),
                        untrusted is None,
                        ack,
                    )
                    if untrusted is None:
                        verified[device] = outcome
                    else:
                        suspect[device] = Outcome(device, "forged", "unverified_ack", untrusted, False, ack)
                if len(verified) == len(expected) and extra_done:
                    break
    except TimeoutError:
        pass
    out: dict[str, Outcome] = {}
    for device in expected:
        if device in verified:
            out[device] = verified[device]
        elif device in suspect:
            out[device] = suspect[device]
        else:
            out[device] = Outcome(device, "timeout", None, f"no verified ack within {wait_s:g} s")
    return out


def _match(pattern: str, topic: str) -> bool:
    p, t = pattern.split("/"), topic.split("/")
    if len(p) != len(t):
        return False
    return all(a in ("+", b) for a, b in zip(p, t, strict=True))


_HINTS = {
    "bad_signature": "sign it with the role's key(s): roomctl sign KIND FILE --key KEY",
    "needs_customer": (
        "this needs the customer's signature too (a weakening names its fields in the message): "
        "countersign with roomctl sign KIND FILE --key CUSTOMER_KEY"
    ),
    "forbidden_by_policy": (
        "the room's policy forbids it (policy body camera.remote_snapshot for snapshot, "
        "camera.remote_ptz for ptz): push a policy allowing it, signed by fleet and customer"
    ),
    "rollback": "the room has seen this or a newer version: bump version and sign again",
    "expired": "the document has expired: re-issue it with a later expires",
    "not_yet_valid": "issued_at is in the future: check this machine's clock",
    "locked": "the room is locked: roomctl unlock ROOM --customer-key KEY first",
    "lawful_order_mismatch": "the order's jurisdiction must equal the room's policy jurisdiction",
    "not_for_this_device": "the targets name neither this room nor one of its groups",
    "unverified_ack": (
        "an ack not signed by the room's rostered key came (broker-level forgery?); the room may be "
        "offline, or re-enrolled: compare roomagent identity --json on it with roomctl roster show"
    ),
}


def hint_for(reason: str | None) -> str:
    return _HINTS.get(reason or "", "")


def print_outcomes(
    outcomes: Mapping[str, Outcome], *, title: str, as_json: bool, console: Console, extra: Any = None
) -> int:
    """Print a table (or one JSON object); return 0 when every room applied with a verified ack."""
    failed = [o for o in outcomes.values() if not o.ok]
    if as_json:
        report: dict[str, Any] = {
            "title": title,
            "ok": not failed,
            "rooms": {
                d: {k: v for k, v in asdict(o).items() if k != "ack"} | {"hint": hint_for(o.reason) or None}
                for d, o in outcomes.items()
            },
        }
        if extra is not None:
            report["result"] = extra
        print(json.dumps(report, sort_keys=True))
        return 1 if failed else 0
    table = Table(title=title)
    for col in ("device", "status", "reason", "message", "ack"):
        table.add_column(col)
    for device, o in outcomes.items():
        colour = "green" if o.ok else "red"
        ack = "verified" if o.verified else ("FORGED" if o.status == "forged" else "-")
        table.add_row(device, f"[{colour}]{o.status}[/{colour}]", o.reason or "", o.message[:80], ack)
    console.print(table)
    for o in failed:  # the whole message: a refusal names what to change (e.g. weakened policy fields)
        console.print(f"{o.device}: {o.status} {o.reason or ''}: {o.message}", soft_wrap=True)
    hints = {hint_for(o.reason) for o in failed} - {""}
    for hint in sorted(hints):
        console.print(f"next step: {hint}")
    return 1 if failed else 0
