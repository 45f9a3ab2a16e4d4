"""Helpers shared by roomctl's sub-commands: key files, passphrases, the roster, broker connections,
garbage-proof reading of what devices publish, and the one way every command reports errors.

Trust: roomctl believes nothing the broker says about a room. A room's identity key, HPKE keys and
groups come from the customer-signed roster (``--roster``, checked against ``--root``); acks, retained
states and audit heads count only when signed by the room's rostered key.
"""

from __future__ import annotations

__all__ = [
    "CliError",
    "Warner",
    "add_broker_args",
    "add_roster_args",
    "broker_urls",
    "document_version",
    "guarded",
    "load_public_key_file",
    "load_root",
    "load_roster",
    "load_signing_keys",
    "mqtt_client",
    "parse_json_message",
    "passphrase",
    "quiet_stdout",
]

import argparse
import contextlib
import datetime as dt
import errno
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from agent.control.errors import ControlError, KeyFileError, Rejected
from agent.control.roster import Roster, RosterError, verify_roster
from agent.control.signing_keys import PrivateKey, key_dict, load_private_key
from agent.control.verify import TrustedRoot, verify_initial_root
from agent.errors import AgentError

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_JSON_DEPTH = 64
"""Deeper JSON is refused before parsing: the parser recurses once per level."""
_JSON_SPECIAL = re.compile(r'[\[\]{}"\\]')


class CliError(ControlError):
    """A roomctl usage error; printed as one line, exit code 2."""


def passphrase(env_var: str | None) -> bytes | None:
    if env_var is None:
        return None
    value = os.environ.get(env_var)
    if value is None:
        raise CliError(
            f"--passphrase-env {env_var}: that environment variable is not set (export {env_var}=...)"
        )
    return value.encode()


def load_signing_keys(
    paths: list[Path], env_var: str | None, *, secret_given: bytes | None = None
) -> list[PrivateKey]:
    """Private keys from PEM files; errors name the next step (passphrase missing or wrong).

    The passphrase comes from ``$env_var``, or ``secret_given`` (typed at a prompt)."""
    secret = secret_given if secret_given is not None else passphrase(env_var)
    source = f"${env_var}" if secret_given is None else "the prompt"
    out = []
    for path in paths:
        try:
            out.append(load_private_key(path, secret))
        except KeyFileError as exc:
            if secret is not None:
                with contextlib.suppress(KeyFileError):
                    out.append(load_private_key(path, None))  # a mix of encrypted and plain keys is fine
                    continue
            if "encrypted" in exc.reason and secret is None:
                raise CliError(
                    f"{path}: the key is encrypted: give its passphrase with --passphrase-env VAR"
                ) from exc
            if "wrong passphrase" in exc.reason and secret is not None:
                raise CliError(
                    f"{path}: wrong passphrase (from {source}), or not a PEM private key: check the "
                    "variable's value, or that this is the private key and not its .pub.json"
                ) from exc
            raise
    return out


def load_public_key_file(path: Path, env_var: str | None = None) -> dict[str, Any]:
    """A public key dict from a ``.pub.json`` file, an enrollment identity (``roomagent identity
    --json``), or a private PEM key."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(str(path), exc.strerror or str(exc)) from exc
    if data.lstrip().startswith(b"{"):
        obj = parse_json_message(data)
        if isinstance(obj, dict) and isinstance(obj.get("ed25519"), dict):  # an enrollment identity
            obj = obj["ed25519"]
        if not isinstance(obj, dict) or "keyval" not in obj:
            raise KeyFileError(str(path), "not a key dict (keytype, scheme, keyval)")
        return {"keytype": obj["keytype"], "scheme": obj["scheme"], "keyval": obj["keyval"]}
    return key_dict(load_signing_keys([path], env_var)[0].public_key())


def parse_json_message(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """JSON from an untrusted source: size and nesting bounded *before* parsing.

    Raises:
        ValueError: too large, nested deeper than :data:`MAX_JSON_DEPTH`, invalid UTF-8, not JSON.
    """
    if len(data) > max_bytes:
        raise ValueError(f"{len(data)} bytes (the cap is {max_bytes})")
    text = data.decode("utf-8")  # UnicodeDecodeError is a ValueError
    depth = 0
    in_string = False
    escaped_at = -1  # index of the character a backslash escapes
    # Visit only the characters that matter; brackets inside strings do not nest.
    for match in _JSON_SPECIAL.finditer(text):
        ch, at = match.group(), match.start()
        if in_string:
            if at == escaped_at:
                continue
            if ch == "\\":
                escaped_at = at + 1
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
        elif ch in "]}":
            depth -= 1
    try:
        return json.loads(text)
    except RecursionError as exc:  # belt and braces: never a traceback from a hostile message
        raise ValueError("nested too deeply") from exc


class Warner:
    """One warning line per (device, topic) on stderr for messages roomctl cannot use."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self.count = 0

    def skip(self, device: str | None, topic: str, why: str) -> None:
        self.count += 1
        if topic in self._seen:
            return
        self._seen.add(topic)
        who = device if device is not None else "unknown device"
        print(f"roomctl: warning: skipped a message from {who} on {topic}: {why[:160]}", file=sys.stderr)


def document_version() -> int:
    """A version for a non-retained document (command, keys): milliseconds since the epoch.

    Devices keep one version counter per kind, so two commands within the same second need
    different versions; milliseconds stay far below the 2^53-1 cap.
    """
    return time.time_ns() // 1_000_000


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
    p.add_argument("--ca", type=Path, metavar="FILE", help="CA certificate that signed the broker's (mqtts)")
    p.add_argument("--cert", type=Path, metavar="FILE", help="client certificate (mqtts)")
    p.add_argument(
        "--key", dest="tls_key", type=Path, metavar="FILE", help="client certificate's private key (mqtts)"
    )
    p.add_argument("--prefix", default="roomagent/v1", help="MQTT topic prefix (default: roomagent/v1)")


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


def add_roster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--roster",
        type=Path,
        default=os.environ.get("ROOMCTL_ROSTER"),
        metavar="FILE",
        help="the customer-signed room roster (roomctl roster add); default: $ROOMCTL_ROSTER",
    )
    p.add_argument(
        "--root",
        type=Path,
        default=os.environ.get("ROOMCTL_ROOT"),
        metavar="FILE",
        help="the trust root (roomctl root init) whose customer keys sign the roster; default: $ROOMCTL_ROOT",
    )


def load_root(path: Path | None) -> TrustedRoot:
    if path is None:
        raise CliError("--root is required (the trust root envelope, or set $ROOMCTL_ROOT)")
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"--root {path}: {exc.strerror or exc}") from exc
    try:
        return verify_initial_root(raw)
    except Rejected as exc:
        raise CliError(f"--root {path}: not a valid trust root ({exc.reason}: {exc.message})") from exc


def load_roster(args: argparse.Namespace, *, allow_expired: bool = False) -> Roster:
    """The roster named by ``--roster``, verified against ``--root``'s customer threshold."""
    if args.roster is None:
        raise CliError(
            "--roster is required (or set $ROOMCTL_ROSTER): make one with "
            "roomctl roster add ROOM --identity identity.json --customer-key KEY --root ROOT --roster FILE"
        )
    root = load_root(args.root)
    try:
        raw = Path(args.roster).read_bytes()
    except OSError as exc:
        raise CliError(f"--roster {args.roster}: {exc.strerror or exc}") from exc
    try:
        return verify_roster(raw, root, now=dt.datetime.now(dt.UTC), allow_expired=allow_expired)
    except RosterError as exc:
        raise CliError(f"--roster {args.roster}: {exc}") from exc


def _client_for(
    args: argparse.Namespace,
    broker: BrokerArgs,
    *,
    timeout: float,
    identifier: str | None,
    session_expiry_s: int,
) -> aiomqtt.Client:
    tls = None
    if broker.tls:
        tls = aiomqtt.TLSParameters(
            ca_certs=str(args.ca) if args.ca else None,
            certfile=str(args.cert) if args.cert else None,
            keyfile=str(args.tls_key) if args.tls_key else None,
        )
    v5 = getattr(args, "mqtt_protocol", "5") == "5"
    connect_timeout = float(getattr(args, "connect_timeout", timeout))
    properties = None
    if session_expiry_s and v5:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = session_expiry_s
    client = aiomqtt.Client(
        broker.host,
        broker.port,
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        tls_params=tls,
        timeout=connect_timeout,
        identifier=identifier or f"roomctl-{os.getpid()}-{time.monotonic_ns() % 100000}",
        # MQTT 5: a persistent session by session expiry; 3.1.1: by clean session off (paho refuses
        # any clean_start but its default on 3.1.1: the flag is MQTT 5's).
        clean_start=False if v5 and session_expiry_s else MQTT_CLEAN_START_FIRST_ONLY,
        clean_session=None if v5 else not session_expiry_s,
        properties=properties,
    )
    client._client.connect_timeout = connect_timeout  # private: paho's TCP/TLS connect timeout
    return client


@contextlib.asynccontextmanager
async def mqtt_client(
    args: argparse.Namespace,
    *,
    timeout: float = 10.0,  # noqa: ASYNC109 - the client's per-operation timeout, not a deadline
    identifier: str | None = None,
    session_expiry_s: int = 0,
) -> AsyncIterator[aiomqtt.Client]:
    """A connected client on the first ``--broker`` endpoint that answers (in the order given); with
    ``session_expiry_s`` a persistent session under the fixed ``identifier`` (QoS 1 messages wait at
    the broker while the client reconnects).

    Raises ``aiomqtt.MqttError`` (the last endpoint's error) when none does.
    """
    brokers = [BrokerArgs.parse(url) for url in broker_urls(args)]
    if len({b.tls for b in brokers}) > 1:
        raise CliError("--broker mixes mqtt:// and mqtts:// endpoints")
    last: aiomqtt.MqttError | None = None
    for broker in brokers:
        client = _client_for(
            args, broker, timeout=timeout, identifier=identifier, session_expiry_s=session_expiry_s
        )
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            with contextlib.suppress(Exception):
                client._client.disconnect()  # private client: drop the half-open connect cleanly
            # stderr, like every roomctl warning: stdout carries only the result (``--json``).
            print(f"roomctl: broker {broker.url} unreachable ({exc})", file=sys.stderr)
            last = exc
            continue
        # Connected: later waits (SUBACK, PUBACK) get longer, as a clustered broker re-electing its
        # leaders after losing a node answers late but does answer.
        client.timeout = max(client.timeout or 0.0, timeout, OPERATION_TIMEOUT_S)
        try:
            yield client
        finally:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)
        return
    assert last is not None
    raise last


def _broker_text(args: argparse.Namespace) -> str:
    value = getattr(args, "broker", None)
    if value is None:
        return "?"
    try:
        return ",".join(broker_urls(args))
    except CliError:
        return str(value)


def broker_hint(url: str, exc: BaseException) -> str:
    text = str(exc)
    if "refused" in text.lower() or isinstance(exc, ConnectionRefusedError):
        return f"cannot reach the broker at {url} (connection refused): is it running, and is --broker right?"
    if "timed out" in text.lower():
        return f"the broker at {url} did not answer in time: check --broker, the network and the firewall"
    if "not authori" in text.lower() or "bad user" in text.lower():
        return f"the broker at {url} refused this client ({text}): check --cert/--key (mqtts) and its ACL"
    return f"broker {url}: {text}"


def quiet_stdout() -> None:
    """After a broken pipe (``roomctl status | head``) point stdout at /dev/null so the interpreter's
    final flush does not raise again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def guarded(name: str, func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a sub-command: every foreseeable failure becomes one line naming the next step, never a
    traceback. Exit codes: what ``func`` returns; 2 usage or local files; 4 broker unreachable;
    141 stdout closed (SIGPIPE convention)."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except BrokenPipeError:
            quiet_stdout()
            return 141
        except aiomqtt.MqttError as exc:
            print(f"roomctl {name}: {broker_hint(_broker_text(args), exc)}", file=sys.stderr)
            return 4
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                quiet_stdout()
                return 141
            if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                print(f"roomctl {name}: {broker_hint(_broker_text(args), exc)}", file=sys.stderr)
                return 4
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"roomctl {name}: {where}{exc.strerror or exc}", file=sys.stderr)
            return 2
        except Rejected as exc:
            print(f"roomctl {name}: {exc.reason}: {exc.message}", file=sys.stderr)
            return 2
        except (AgentError, ValueError, ValidationError) as exc:
            print(f"roomctl {name}: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130

    return run
