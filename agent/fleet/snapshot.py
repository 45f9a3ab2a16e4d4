"""``roomctl hpke-keygen`` and ``roomctl snapshot``: a room's picture, sealed to the requester.

``hpke-keygen --out FILE`` makes the requester's HPKE key pairs (X25519 and ML-KEM-768+X25519, the
device identity's file format, mode 0600) and prints the public keys.

``snapshot --device ID --broker URL --customer-key K --recipient-key FILE --out OUT.png``:

1. builds a ``snapshot`` command (``args.camera``, ``args.recipient`` = our HPKE public key of
   ``--kem``) targeting that device only, signs it with the customer key (DSSE) and publishes it on
   ``{p}/devices/{id}/cmd`` (QoS 1);
2. waits for the device's ack of that document and its sealed image on ``{p}/devices/{id}/snapshot``;
3. checks the ack and the image message are signed by the room's Ed25519 identity key *from the
   customer-signed roster* (``--roster``), never from the broker: HPKE base mode does not
   authenticate the sender, so without this the broker, which saw our public key in the request,
   could answer with a picture of its own;
4. opens the image with our HPKE private key (``info`` binds device, version and payload digest:
   :func:`agent.privacy.snapshot.snapshot_info`), checks its sha256 and writes ``OUT.png`` atomically.

Exit codes: 0 written, 1 the device refused (reason printed), 2 usage, 3 no answer in time or an
image that does not open, 4 broker unreachable. Nothing but sizes and digests is printed.
"""

from __future__ import annotations

__all__ = ["register"]

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from agent.control.roster import Roster
from agent.control.signing_keys import PrivateKey
from agent.errors import AgentError
from agent.fleet.common import (
    Warner,
    add_broker_args,
    add_roster_args,
    document_version,
    guarded,
    load_roster,
    load_signing_keys,
    mqtt_client,
    parse_json_message,
)
from agent.fleet.send import Publication, deliver, hint_for, sign
from agent.persist import atomic_write_bytes
from agent.privacy.errors import PrivacyError
from agent.privacy.hpke import KEM_NAMES, HpkeIdentity
from agent.privacy.snapshot import open_snapshot, snapshot_signed_by


class _Exit(AgentError):
    def __init__(self, message: str, code: int) -> None:
        self.code = code
        super().__init__(message)


def _ts(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _keygen(args: argparse.Namespace) -> int:
    path = Path(args.out)
    if path.exists():
        print(f"roomctl hpke-keygen: {path} exists; not overwriting a private key", file=sys.stderr)
        return 2
    identity = HpkeIdentity.generate()
    try:
        identity.save(path)
    except AgentError as exc:
        print(f"roomctl hpke-keygen: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(identity.public_keys(), indent=2, sort_keys=True))
    return 0


def build_request(
    *, device: str, camera: str | None, kem: str, public_key: str, version: int, now: dt.datetime, ttl_s: int
) -> dict[str, Any]:
    """The ``snapshot`` command payload (pure)."""
    args: dict[str, Any] = {"recipient": {"kem": kem, "public_key": public_key}}
    if camera is not None:
        args["camera"] = camera
    return {
        "kind": "command",
        "version": version,
        "issued_at": _ts(now),
        "expires": _ts(now + dt.timedelta(seconds=ttl_s)),
        "targets": {"devices": [device], "groups": []},
        "body": {"name": "snapshot", "args": args},
    }


def _load_keys(args: argparse.Namespace) -> tuple[HpkeIdentity, list[PrivateKey]]:
    key_path = Path(args.recipient_key)
    if not key_path.exists():
        raise _Exit(f"--recipient-key {key_path}: no such file (make one with roomctl hpke-keygen)", 2)
    try:
        return HpkeIdentity.load_or_create(key_path), load_signing_keys(
            [Path(args.customer_key)], args.passphrase_env
        )
    except AgentError as exc:
        raise _Exit(str(exc), 2) from exc


async def _snapshot(
    args: argparse.Namespace, identity: HpkeIdentity, customer: list[PrivateKey], roster: Roster
) -> str:
    device_key = roster.room(args.device).identity_key()  # from the roster, never the broker
    version = args.version if args.version is not None else document_version()
    payload = build_request(
        device=args.device,
        camera=args.camera,
        kem=args.kem,
        public_key=identity.public_keys()[args.kem],
        version=version,
        now=dt.datetime.now(dt.UTC).replace(microsecond=0),
        ttl_s=args.ttl,
    )
    env = sign("command", payload, customer)
    sha = hashlib.sha256(env.payload).hexdigest()
    base = f"{args.prefix}/devices/{args.device}"
    warner = Warner()
    sealed: list[bytes] = []

    def on_image(topic: str, body: bytes) -> bool:
        # HPKE base mode does not authenticate the sender: only an image signed by the room's
        # rostered key is taken, so the broker (which saw our public key) cannot answer instead.
        if sealed:
            return True
        try:
            message = parse_json_message(body)
        except ValueError as exc:
            warner.skip(args.device, topic, str(exc))
            return False
        if not isinstance(message, dict) or message.get("doc_version") != version:
            return False
        if not snapshot_signed_by(body, device_key):
            warner.skip(args.device, topic, "an image not signed by the room's rostered key")
            return False
        sealed.append(body)
        return True

    async with mqtt_client(args, timeout=max(10.0, args.timeout)) as client:
        outcomes = await deliver(
            client,
            prefix=args.prefix,
            publications=[Publication(f"{base}/cmd", env.to_json())],
            expected={args.device: sha},
            roster=roster,
            wait_s=args.timeout,
            warner=warner,
            extra_topics=(f"{base}/snapshot",),
            on_extra=on_image,
        )
    outcome = outcomes[args.device]
    if outcome.status == "timeout":
        raise _Exit(f"{args.device}: no ack signed by its rostered key within {args.timeout:g} s", 3)
    if not outcome.verified:
        raise _Exit(f"{args.device}: {outcome.status}: {outcome.message}", 3)
    if outcome.status != "applied":
        hint = hint_for(outcome.reason)
        raise _Exit(
            f"{args.device}: {outcome.status} {outcome.reason}: {outcome.message}"
            + (f" (next step: {hint})" if hint else ""),
            1,
        )
    if not sealed:
        raise _Exit(
            f"{args.device}: applied, but no signed sealed image arrived within {args.timeout:g} s", 3
        )
    try:
        png = open_snapshot(identity, sealed[0], device=args.device, doc_version=version, payload_sha256=sha)
    except PrivacyError as exc:
        raise _Exit(f"{args.device}: the image does not open: {exc.reason}", 3) from exc
    await asyncio.to_thread(atomic_write_bytes, Path(args.out), png)
    return f"{args.out}: {len(png)} bytes, sha256 {hashlib.sha256(png).hexdigest()}"


def _run(args: argparse.Namespace) -> int:
    try:
        identity, customer = _load_keys(args)
        roster = load_roster(args)
        print(asyncio.run(_snapshot(args, identity, customer, roster)))
    except _Exit as exc:
        print(f"roomctl snapshot: {exc}", file=sys.stderr)
        return exc.code
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("hpke-keygen", help="make an HPKE key pair to receive sealed snapshots")
    p.add_argument("--out", required=True, help="private key file to create (mode 0600)")
    p.set_defaults(func=guarded("hpke-keygen", _keygen))

    p = sub.add_parser(
        "snapshot", help="ask a room for one picture, sealed to your HPKE key (customer-signed)"
    )
    p.add_argument("--device", required=True, help="device id")
    p.add_argument("--camera", help="camera id (default: the device's first camera)")
    add_broker_args(p)
    add_roster_args(p)
    p.add_argument("--customer-key", required=True, help="the customer's signing key (PKCS#8 PEM)")
    p.add_argument("--passphrase-env", help="environment variable holding the key's passphrase")
    p.add_argument("--recipient-key", required=True, help="HPKE private key file (roomctl hpke-keygen)")
    p.add_argument("--kem", default="mlkem768-x25519", choices=KEM_NAMES, help="HPKE KEM to seal with")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--version", type=int, help="command version (default: current time in milliseconds)")
    p.add_argument("--ttl", type=int, default=300, help="seconds the command stays valid (default 300)")
    p.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the ack and image")
    p.set_defaults(func=guarded("snapshot", _run))
