"""Helpers shared by roomctl's sub-commands: key files, passphrases, broker connections."""

from __future__ import annotations

__all__ = [
    "BrokerArgs",
    "CliError",
    "add_broker_args",
    "broker_urls",
    "load_public_key_file",
    "load_signing_keys",
    "mqtt_client",
    "passphrase",
]

import argparse
import contextlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import structlog

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


OPERATION_TIMEOUT_S = 30.0


def _split_brokers(value: str) -> list[str]:
    return [url.strip() for url in value.split(",") if url.strip()]


def add_broker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--broker",
        required=True,
        action="append",
        type=_split_brokers,
        metavar="URL[,URL...]",
        help="mqtt://HOST:PORT or mqtts://HOST:PORT; repeat it or separate by commas to name several "
        "endpoints of one clustered broker (tried in order, the next one when a connect fails)",
    )
    p.add_argument(
        "--mqtt-protocol",
        choices=("5", "3.1.1"),
        default="5",
        help="MQTT protocol version (3.1.1 for brokers such as NATS that speak only 3.1.1; default 5)",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds to wait for one endpoint before trying the next (default 5)",
    )
    p.add_argument("--ca", type=Path, help="CA certificate (mqtts)")
    p.add_argument("--cert", type=Path, help="client certificate (mqtts)")
    p.add_argument("--key", dest="tls_key", type=Path, help="client private key (mqtts)")
    p.add_argument("--prefix", default="roomagent/v1")


def broker_urls(args: argparse.Namespace) -> list[str]:
    """``--broker`` as a flat list of URLs (repeated and comma-separated forms mixed)."""
    value = args.broker
    if isinstance(value, str):
        value = [_split_brokers(value)]
    urls = [url for group in value for url in (group if isinstance(group, list) else [group])]
    if not urls:
        raise CliError("--broker: give at least one mqtt:// or mqtts:// URL")
    return urls


@dataclass(frozen=True, slots=True)
class BrokerArgs:
    """One endpoint of ``--broker`` checked: host, port, TLS."""

    url: str
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerArgs:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError as exc:
            raise CliError(f"--broker {url!r}: bad port") from exc
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise CliError(f"--broker {url!r}: use mqtt://HOST:PORT or mqtts://HOST:PORT")
        tls = parts.scheme == "mqtts"
        return cls(url, parts.hostname, port or (8883 if tls else 1883), tls)


def _client_for(args: argparse.Namespace, broker: BrokerArgs) -> aiomqtt.Client:
    tls = None
    if broker.tls:
        tls = aiomqtt.TLSParameters(
            ca_certs=str(args.ca) if args.ca else None,
            certfile=str(args.cert) if args.cert else None,
            keyfile=str(args.tls_key) if args.tls_key else None,
        )
    v5 = getattr(args, "mqtt_protocol", "5") == "5"
    timeout = float(getattr(args, "connect_timeout", 10.0))
    client = aiomqtt.Client(
        broker.host,
        broker.port,
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        tls_params=tls,
        timeout=timeout,
        identifier=f"roomctl-{os.getpid()}",
    )
    client._client.connect_timeout = timeout  # private: paho's TCP/TLS connect timeout
    return client


@contextlib.asynccontextmanager
async def mqtt_client(args: argparse.Namespace) -> AsyncIterator[aiomqtt.Client]:
    """A connected client on the first ``--broker`` endpoint that answers (in the order given).

    Raises ``aiomqtt.MqttError`` (the last endpoint's error) when none does.
    """
    brokers = [BrokerArgs.parse(url) for url in broker_urls(args)]
    if len({b.tls for b in brokers}) > 1:
        raise CliError("--broker mixes mqtt:// and mqtts:// endpoints")
    last: aiomqtt.MqttError | None = None
    for broker in brokers:
        client = _client_for(args, broker)
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            with contextlib.suppress(Exception):
                client._client.disconnect()  # private client: drop the half-open connect cleanly
            structlog.get_logger().warning("roomctl_broker_unreachable", broker=broker.url, error=str(exc))
            last = exc
            continue
        # Connected: later waits (SUBACK, PUBACK) get longer, as a clustered broker re-electing its
        # leaders after losing a node answers late but does answer.
        client.timeout = max(client.timeout or 0.0, OPERATION_TIMEOUT_S)
        try:
            yield client
        finally:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)
        return
    assert last is not None
    raise last
