"""``roomctl hpke-keygen`` and ``roomctl snapshot``: a room's picture, sealed to the requester.

``hpke-keygen --out FILE`` makes the requester's HPKE key pairs (X25519 and ML-KEM-768+X25519, the
device identity's file format, mode 0600) and prints the public keys.

``snapshot --device ID --broker URL --customer-key K --recipient-key FILE --out OUT.png``:

1. builds a ``snapshot`` command (``args.camera``, ``args.recipient`` = our HPKE public key of
   ``--kem``) targeting that device only, signs it with the customer key (DSSE) and publishes it on
   ``{p}/devices/{id}/cmd`` (QoS 1);
2. waits for the device's ack of that document and its sealed image on ``{p}/devices/{id}/snapshot``;
3. checks the image message is signed by the device's Ed25519 identity (``--device-key``, else the
   key in its retained state): HPKE base mode does not authenticate the sender, so without this the
   broker, which saw our public key in the request, could answer with a picture of its own;
4. opens the image with our HPKE private key (``info`` binds device, version and payload digest:
   :func:`agent.privacy.snapshot.snapshot_info`), checks its sha256 and writes ``OUT.png`` atomically.

Exit codes: 0 written, 1 the device refused (reason printed), 2 usage, 3 no answer in time or an
image that does not open, 4 broker unreachable. Nothing but sizes and digests is printed.
"""

from __future__ import annotations

__all__ = ["register"]

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiomqtt

from agent.control.documents import payload_type
from agent.control.dsse import Envelope
from agent.control.signing_keys import PrivateKey, PublicKey, parse_public_key
from agent.errors import AgentError
from agent.fleet.common import load_public_key_file, load_signing_keys, mqtt_client
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


async def _snapshot(args: argparse.Namespace, identity: HpkeIdentity, customer: list[PrivateKey]) -> str:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    version = args.version if args.version is not None else int(time.time())
    payload = build_request(
        device=args.device,
        camera=args.camera,
        kem=args.kem,
        public_key=identity.public_keys()[args.kem],
        version=version,
        now=now,
        ttl_s=args.ttl,
    )
    data = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    env = Envelope(payload_type("command"), data, ())
    for key in customer:
        env = env.signed_by(key)
    sha = hashlib.sha256(data).hexdigest()
    base = f"{args.prefix}/devices/{args.device}"
    device_key = (
        None if args.device_key is None else parse_public_key(load_public_key_file(Path(args.device_key)))
    )
    state_key: PublicKey | None = None
    ack: dict[str, Any] | None = None
    sealed: bytes | None = None
    try:
        async with mqtt_client(args) as client:
            if device_key is None:
                await client.subscribe(f"{base}/state", qos=1)  # retained: the identity key first
            await client.subscribe(f"{base}/ack", qos=1)
            await client.subscribe(f"{base}/snapshot", qos=1)
            await client.publish(f"{base}/cmd", env.to_json(), qos=1)
            try:
                async with asyncio.timeout(args.timeout):
                    async for message in client.messages:
                        body = bytes(message.payload)
                        if str(message.topic) == f"{base}/state":
                            with contextlib.suppress(ValueError, KeyError, TypeError):
                                state_key = parse_public_key(json.loads(body)["identity"]["ed25519"])
                            continue
                        if str(message.topic) == f"{base}/ack":
                            try:
                                got = json.loads(Envelope.parse(body).payload)
                            except ValueError:
                                continue
                            if isinstance(got, dict) and got.get("payload_sha256") == sha:
                                ack = got
                        elif sealed is None:
                            try:
                                if json.loads(body).get("doc_version") == version:
                                    sealed = body
                            except (ValueError, AttributeError):
                                continue
                        if ack is not None and (ack.get("status") != "applied" or sealed is not None):
                            break
            except TimeoutError:
                pass
    except aiomqtt.MqttError as exc:
        raise _Exit(f"broker {args.broker}: {exc}", 4) from exc
    if ack is None:
        raise _Exit(f"{args.device}: no ack within {args.timeout:g} s", 3)
    if ack.get("status") != "applied":
        raise _Exit(f"{args.device}: {ack.get('status')} {ack.get('reason')}: {ack.get('message')}", 1)
    if sealed is None:
        raise _Exit(f"{args.device}: applied, but no sealed image arrived within {args.timeout:g} s", 3)
    identity_key = device_key or state_key
    if identity_key is None:
        raise _Exit(
            f"{args.device}: no identity key (--device-key, or its retained state) to check the image", 3
        )
    if not snapshot_signed_by(sealed, identity_key):
        raise _Exit(f"{args.device}: the image is not signed by the device's identity key", 3)
    try:
        png = open_snapshot(identity, sealed, device=args.device, doc_version=version, payload_sha256=sha)
    except PrivacyError as exc:
        raise _Exit(f"{args.device}: the image does not open: {exc.reason}", 3) from exc
    await asyncio.to_thread(atomic_write_bytes, Path(args.out), png)
    return f"{args.out}: {len(png)} bytes, sha256 {hashlib.sha256(png).hexdigest()}"


def _run(args: argparse.Namespace) -> int:
    try:
        identity, customer = _load_keys(args)
        print(asyncio.run(_snapshot(args, identity, customer)))
    except _Exit as exc:
        print(f"roomctl snapshot: {exc}", file=sys.stderr)
        return exc.code
    except AgentError as exc:
        print(f"roomctl snapshot: {exc}", file=sys.stderr)
        return 2
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("hpke-keygen", help="make an HPKE key pair to receive sealed snapshots")
    p.add_argument("--out", required=True, help="private key file to create (mode 0600)")
    p.set_defaults(func=_keygen)

    p = sub.add_parser(
        "snapshot", help="ask a room for one picture, sealed to your HPKE key (customer-signed)"
    )
    p.add_argument("--device", required=True, help="device id")
    p.add_argument("--camera", help="camera id (default: the device's first camera)")
    p.add_argument("--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    p.add_argument("--ca", type=Path, help="CA certificate (mqtts)")
    p.add_argument("--cert", type=Path, help="client certificate (mqtts)")
    p.add_argument("--key", dest="tls_key", type=Path, help="client private key (mqtts)")
    p.add_argument("--prefix", default="roomagent/v1")
    p.add_argument("--customer-key", required=True, help="the customer's signing key (PKCS#8 PEM)")
    p.add_argument("--passphrase-env", help="environment variable holding the key's passphrase")
    p.add_argument("--recipient-key", required=True, help="HPKE private key file (roomctl hpke-keygen)")
    p.add_argument("--kem", default="mlkem768-x25519", choices=KEM_NAMES, help="HPKE KEM to seal with")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument(
        "--device-key",
        help="the device's identity public key (key dict or saved state JSON); default: its retained state",
    )
    p.add_argument("--version", type=int, help="command version (default: current Unix time)")
    p.add_argument("--ttl", type=int, default=300, help="seconds the command stays valid (default 300)")
    p.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the ack and image")
    p.set_defaults(func=_run)
