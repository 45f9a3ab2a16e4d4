"""``roomctl meeting start``: hand out a meeting's SFrame keys, signed by the customer.

1. read each room's HPKE public keys from its retained state (``{p}/devices/{id}/state``,
   ``identity.hpke_attestation``), signed by the room's Ed25519 identity key, which ``--pins``
   pins on first use (the broker cannot substitute its own key for a room's);
2. generate one fresh base key and KID per sending room and seal it with HPKE to every room
   (:func:`agent.privacy.keys.seal_meeting`);
3. build one ``keys`` document per recipient room (targets: that room only), sign it with the
   customer key (DSSE) and publish it on ``{p}/devices/{id}/keys`` (QoS 1, not retained);
4. with ``--wait-acks``, wait for each room's ack of that document and report it.

The fleet operator cannot do this: a device accepts key packages only with the customer threshold.
Key bytes are never printed; only KIDs, epochs and outcomes.
"""

from __future__ import annotations

__all__ = ["MeetingError", "attested_hpke_keys", "build_key_envelopes", "register", "start_meeting"]

import argparse
import asyncio
import datetime as dt
import getpass
import json
import os
import secrets
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.control.documents import payload_type
from agent.control.dsse import Envelope
from agent.control.keys import PrivateKey, keyid_of, load_private_key, parse_public_key
from agent.errors import AgentError
from agent.fleet.web import add_webrtc_arguments, guest_report, register_web, sfu_place
from agent.persist import atomic_write_json
from agent.privacy.errors import KeyDeliveryError
from agent.privacy.keys import KeysBody, seal_meeting_keys

_ID_OK = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"


class MeetingError(AgentError):
    """``roomctl meeting start`` cannot go on; ``exit_code`` says why (2 usage, 3 rooms, 4 broker)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        self.exit_code = exit_code
        super().__init__(message)


def _ts(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_key_envelopes(
    *,
    packages: dict[str, KeysBody],
    customer_key: PrivateKey,
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
        data = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        out[room] = Envelope(payload_type("keys"), data, ()).signed_by(customer_key)
    return out


@dataclass(frozen=True, slots=True)
class _Broker:
    host: str
    port: int
    tls: bool


def _parse_broker(url: str) -> _Broker:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise MeetingError(f"--broker must be mqtt://HOST[:PORT] or mqtts://HOST[:PORT], not {url!r}")
    try:
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError as exc:
        raise MeetingError(f"--broker has a bad port: {url!r}") from exc
    return _Broker(parts.hostname, port, parts.scheme == "mqtts")


def _client(args: argparse.Namespace, broker: _Broker) -> Any:
    import aiomqtt  # imported here: roomctl's start-up stays light

    tls_context = None
    if broker.tls:
        tls_context = ssl.create_default_context(cafile=args.ca)
        if args.cert:
            tls_context.load_cert_chain(args.cert, args.key)
    return aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=f"roomctl-meeting-{secrets.token_hex(4)}",
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_context=tls_context,
        timeout=args.timeout,
    )


async def _read_public_keys(
    client: Any, prefix: str, rooms: Sequence[str], within_s: float
) -> dict[str, Any]:
    """The retained state of every room, by room (waits up to ``within_s`` for all of them)."""
    topics = {f"{prefix}/devices/{room}/state": room for room in rooms}
    for topic in topics:
        await client.subscribe(topic, qos=1)
    states: dict[str, Any] = {}
    try:
        async with asyncio.timeout(within_s):
            async for message in client.messages:
                room = topics.get(str(message.topic))
                if room is None or not isinstance(message.payload, bytes | bytearray):
                    continue
                try:
                    states[room] = json.loads(message.payload)
                except ValueError:
                    continue
                if len(states) == len(rooms):
                    break
    except TimeoutError:
        pass
    for topic in topics:
        await client.unsubscribe(topic)
    return states


_ATTESTATION_TYPE = payload_type("hpke-identity")


def attested_hpke_keys(
    room: str, state: Any, pinned: dict[str, Any] | None
) -> tuple[dict[str, str], dict[str, Any]]:
    """The room's HPKE public keys, checked against its Ed25519 identity (and the pin, if any).

    The retained state travels through the vendor's broker, which could swap a room's HPKE key for
    its own and so read the meeting. The device signs its HPKE keys with its Ed25519 identity key
    (``identity.hpke_attestation``); with a pinned identity key (``--pins``) a swapped identity is
    refused too. Returns (hpke keys, the room's Ed25519 key dict).

    Raises:
        MeetingError: no state, no attestation, a bad signature, or an identity that differs from the pin.
    """
    identity = state.get("identity") if isinstance(state, dict) else None
    if not isinstance(identity, dict):
        raise MeetingError(f"{room}: no identity in its retained state", 3)
    ed25519 = identity.get("ed25519")
    try:
        key = parse_public_key(ed25519)
    except ValueError as exc:
        raise MeetingError(f"{room}: unreadable identity key: {exc}", 3) from exc
    if pinned is not None and keyid_of(pinned) != key.keyid:
        raise MeetingError(
            f"{room}: identity key {key.keyid[:16]} is not the pinned {keyid_of(pinned)[:16]}", 3
        )
    raw = identity.get("hpke_attestation")
    try:
        env = Envelope.parse(json.dumps(raw).encode())
        payload = json.loads(env.payload)
    except ValueError as exc:
        raise MeetingError(f"{room}: no valid HPKE attestation in its state", 3) from exc
    signed = env.payload_type == _ATTESTATION_TYPE and any(
        s.keyid == key.keyid and key.verify(s.sig, env.pae()) for s in env.signatures
    )
    hpke = payload.get("hpke") if isinstance(payload, dict) else None
    if not signed or payload.get("device") != room or not isinstance(hpke, dict):
        raise MeetingError(f"{room}: HPKE keys not signed by the room's identity key", 3)
    if not all(isinstance(v, str) for v in hpke.values()):
        raise MeetingError(f"{room}: malformed HPKE keys", 3)
    return hpke, key.to_dict()


def _load_pins(path: Path | None) -> dict[str, Any]:
    if path is None or not path.exists():
        return {}
    try:
        pins = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise MeetingError(f"--pins {path}: unreadable ({exc})") from exc
    if not isinstance(pins, dict):
        raise MeetingError(f"--pins {path}: not a JSON object of device -> key")
    return pins


async def _wait_acks(
    client: Any, prefix: str, envelopes: dict[str, Envelope], within_s: float
) -> dict[str, dict[str, Any]]:
    """Acks for our documents (matched by payload sha256), by room; rooms that did not ack are absent."""
    import hashlib

    wanted = {room: hashlib.sha256(env.payload).hexdigest() for room, env in envelopes.items()}
    topics = {f"{prefix}/devices/{room}/ack": room for room in envelopes}
    acks: dict[str, dict[str, Any]] = {}
    try:
        async with asyncio.timeout(within_s):
            async for message in client.messages:
                room = topics.get(str(message.topic))
                if room is None or room in acks:
                    continue
                try:
                    ack = json.loads(Envelope.parse(bytes(message.payload)).payload)
                except ValueError:
                    continue
                if isinstance(ack, dict) and ack.get("payload_sha256") == wanted[room]:
                    acks[room] = ack
                    if len(acks) == len(envelopes):
                        break
    except TimeoutError:
        pass
    return acks


async def start_meeting(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``roomctl meeting start``; returns the report printed by the command.

    Raises:
        MeetingError: bad arguments, rooms without HPKE keys, or the broker is unreachable.
    """
    import aiomqtt

    rooms = [r.strip() for r in args.rooms.split(",") if r.strip()]
    if not rooms or len(set(rooms)) != len(rooms) or any(set(r) - set(_ID_OK) for r in rooms):
        raise MeetingError("--rooms must be distinct device ids separated by commas")
    sfu = sfu_place(args)  # before anything else: a bad SFU place or guest list is a usage error
    passphrase = None
    if args.passphrase_env:
        if args.passphrase_env not in os.environ:
            raise MeetingError(f"--passphrase-env: {args.passphrase_env} is not set")
        passphrase = os.environ[args.passphrase_env].encode()
    if args.ask_passphrase:
        passphrase = getpass.getpass("customer key passphrase: ").encode()
    try:
        customer_key = load_private_key(Path(args.customer_key), passphrase)
    except AgentError as exc:
        raise MeetingError(f"--customer-key: {exc}") from exc
    broker = _parse_broker(args.broker)
    meeting = args.meeting or f"m-{secrets.token_hex(6)}"
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    key_expires = _ts(now + dt.timedelta(seconds=args.ttl))
    # Documents of one kind must carry increasing versions: wall-clock seconds do, across invocations.
    version = args.version if args.version is not None else int(time.time())
    try:
        async with _client(args, broker) as client:
            states = await _read_public_keys(client, args.prefix, rooms, args.timeout)
            missing = sorted(room for room in rooms if room not in states)
            if missing:
                raise MeetingError(f"no retained state (HPKE public keys) from: {', '.join(missing)}", 3)
            pins_path = Path(args.pins) if args.pins else None
            pins = _load_pins(pins_path)
            public: dict[str, dict[str, str]] = {}
            new_pins: dict[str, Any] = {}
            for room in rooms:
                public[room], identity_key = attested_hpke_keys(room, states[room], pins.get(room))
                if room not in pins:
                    new_pins[room] = identity_key
            if pins_path is not None and new_pins:
                # Trust on first use: later meetings refuse a room whose identity key changed.
                atomic_write_json(pins_path, {**pins, **new_pins})
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
                packages=packages, customer_key=customer_key, version=version, issued_at=now
            )
            if args.wait_acks:
                for room in rooms:
                    await client.subscribe(f"{args.prefix}/devices/{room}/ack", qos=1)
            for room, env in envelopes.items():
                await client.publish(f"{args.prefix}/devices/{room}/keys", env.to_json(), qos=1)
            acks = await _wait_acks(client, args.prefix, envelopes, args.timeout) if args.wait_acks else {}
    except aiomqtt.MqttError as exc:
        raise MeetingError(f"broker {args.broker}: {exc}", 4) from exc
    return {
        "meeting": meeting,
        "epoch": args.epoch,
        "suite": args.suite,
        "kem": args.kem,
        "version": version,
        "key_expires": key_expires,
        "rooms": {
            room: {
                "kid": next(s.kid for s in packages[room].senders if s.device == room),
                "pinned": None if pins_path is None else ("new" if room in new_pins else "match"),
                "ack": None if room not in acks else acks[room].get("status"),
                "reason": None if room not in acks else acks[room].get("reason"),
            }
            for room in rooms
        },
        **guest_report(sealed, args, meeting),
    }


def _run(args: argparse.Namespace) -> int:
    try:
        report = asyncio.run(start_meeting(args))
    except MeetingError as exc:
        print(f"roomctl meeting start: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(
            f"meeting {report['meeting']} epoch {report['epoch']} suite {report['suite']} kem {report['kem']}"
        )
        for room, info in report["rooms"].items():
            outcome = "" if not args.wait_acks else f"  ack {info['ack'] or 'none'} {info['reason'] or ''}"
            print(f"  {room}: kid {info['kid']}{outcome}")
        for guest, info in report.get("guests", {}).items():
            print(
                f"  guest {guest}: kid {info['kid']}\n    join link (holds the guest's keys): {info['link']}"
            )
    if args.wait_acks and any(info["ack"] != "applied" for info in report["rooms"].values()):
        return 1
    return 0


def register(subparsers: Any) -> None:
    meeting = subparsers.add_parser("meeting", help="E2EE meetings: hand out SFrame keys (customer-signed)")
    sub = meeting.add_subparsers(dest="meeting_command", required=True, metavar="ACTION")
    p = sub.add_parser("start", help="generate, seal, sign and push one meeting epoch's keys to each room")
    p.add_argument(
        "--rooms", required=True, help="device ids, comma-separated (every room sends and receives)"
    )
    p.add_argument("--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    p.add_argument("--customer-key", required=True, help="the customer's signing key (PKCS#8 PEM)")
    p.add_argument("--passphrase-env", help="environment variable holding the key's passphrase")
    p.add_argument("--ask-passphrase", action="store_true", help="prompt for the key's passphrase")
    p.add_argument("--meeting", help="meeting id (default: random)")
    p.add_argument("--epoch", type=int, default=1, help="key epoch; a higher one rotates keys (default 1)")
    p.add_argument(
        "--suite", type=int, default=4, choices=range(1, 6), help="SFrame cipher suite (default 4)"
    )
    p.add_argument(
        "--kem", default="mlkem768-x25519", choices=("x25519", "mlkem768-x25519"), help="HPKE KEM for sealing"
    )
    p.add_argument("--ttl", type=int, default=8 * 3600, help="key lifetime in seconds (default 8 h)")
    p.add_argument("--version", type=int, help="document version (default: current Unix time)")
    p.add_argument(
        "--pins",
        help="JSON file of pinned room identity keys (added on first use; a changed key is refused)",
    )
    p.add_argument("--prefix", default="roomagent/v1", help="MQTT topic prefix")
    p.add_argument("--ca", help="CA certificate for mqtts")
    p.add_argument("--cert", help="client certificate for mqtts")
    p.add_argument("--key", help="client certificate's key for mqtts")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for states and acks")
    p.add_argument(
        "--wait-acks", action="store_true", help="wait for each room's ack; exit 1 unless all applied"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_webrtc_arguments(p)
    p.set_defaults(func=_run)
    register_web(sub)
