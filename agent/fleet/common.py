"""Helpers shared by roomctl's sub-commands: key files, passphrases, broker connections."""

from __future__ import annotations

__all__ = [
    "CliError",
    "add_broker_args",
    "load_public_key_file",
    "load_signing_keys",
    "mqtt_client",
    "passphrase",
]

import argparse
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.control.errors import ControlError, KeyFileError
from agent.control.keys import PrivateKey, key_dict, load_private_key


class CliError(ControlError):
    """A roomctl usage error; printed as one line, exit code 2."""


def passphrase(env_var: str | None) -> bytes | None:
    if env_var is None:
        return None
    value = os.environ.get(env_var)
    if value is None:
        raise CliError(f"--passphrase-env {env_var}: that environment variable is not set")
    return value.encode()


def load_signing_keys(paths: list[Path], env_var: str | None) -> list[PrivateKey]:
    secret = passphrase(env_var)
    out = []
    for path in paths:
        try:
            out.append(load_private_key(path, secret))
        except KeyFileError:
            if secret is None:
                raise
            out.append(load_private_key(path, None))  # a mix of encrypted and plain keys is fine
    return out


def load_public_key_file(path: Path, env_var: str | None = None) -> dict[str, Any]:
    """A public key dict from a ``.pub.json`` file, a device state JSON, or a private PEM key."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(str(path), exc.strerror or str(exc)) from exc
    if data.lstrip().startswith(b"{"):
        obj = json.loads(data)
        if isinstance(obj, dict) and "identity" in obj:  # a device's retained state
            obj = obj["identity"]["ed25519"]
        if not isinstance(obj, dict) or "keyval" not in obj:
            raise KeyFileError(str(path), "not a key dict (keytype, scheme, keyval)")
        return {"keytype": obj["keytype"], "scheme": obj["scheme"], "keyval": obj["keyval"]}
    return key_dict(load_signing_keys([path], env_var)[0].public_key())


def add_broker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    p.add_argument("--ca", type=Path, help="CA certificate (mqtts)")
    p.add_argument("--cert", type=Path, help="client certificate (mqtts)")
    p.add_argument("--key", dest="tls_key", type=Path, help="client private key (mqtts)")
    p.add_argument("--prefix", default="roomagent/v1")


def mqtt_client(
    args: argparse.Namespace, *, identifier: str | None = None, session_expiry_s: int = 0
) -> aiomqtt.Client:
    """A client for ``--broker``; with ``session_expiry_s`` a persistent MQTT 5 session under the
    fixed ``identifier`` (QoS 1 messages wait at the broker while the client reconnects)."""
    parts = urlsplit(args.broker)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise CliError(f"--broker {args.broker!r}: use mqtt://HOST:PORT or mqtts://HOST:PORT")
    tls = None
    if parts.scheme == "mqtts":
        tls = aiomqtt.TLSParameters(
            ca_certs=str(args.ca) if args.ca else None,
            certfile=str(args.cert) if args.cert else None,
            keyfile=str(args.tls_key) if args.tls_key else None,
        )
    port = parts.port or (8883 if tls else 1883)
    properties = None
    if session_expiry_s:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = session_expiry_s
    return aiomqtt.Client(
        parts.hostname,
        port,
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_params=tls,
        timeout=10,
        identifier=identifier or f"roomctl-{os.getpid()}",
        clean_start=False if session_expiry_s else MQTT_CLEAN_START_FIRST_ONLY,
        properties=properties,
    )
