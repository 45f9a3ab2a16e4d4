"""``roomctl root init|rotate``, ``roomctl template KIND``, ``roomctl sign KIND FILE``.

``sign`` takes a payload (TOML or JSON) and makes a DSSE envelope, or takes an existing envelope and
adds signatures to it, so that fleet and customer can sign on different machines.
"""

from __future__ import annotations

__all__ = ["register", "template"]

import argparse
import datetime as dt
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.control.documents import DOCUMENT_KINDS, OPTIONAL_ROLES, ROLES, RootBody, body_model, payload_type
from agent.control.dsse import Envelope, strict_json
from agent.control.signing_keys import keyid_of
from agent.control.verify import verify_initial_root
from agent.fleet.common import CliError, guarded, load_public_key_file, load_signing_keys
from agent.persist import atomic_write_bytes


def _ts(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def template(kind: str, *, now: dt.datetime | None = None) -> dict[str, Any]:
    """A complete, valid example payload of ``kind`` with every field of docs/design.md's payload."""
    t = now or dt.datetime.now(dt.UTC).replace(microsecond=0)
    bodies: dict[str, Any] = {
        "policy": {
            "e2ee": {"required": True, "suites": [4, 5], "kem": "x25519"},
            "camera": {"shutter_when_idle": True, "remote_snapshot": False, "remote_ptz": True},
            "telemetry": {"level": "minimal", "fields": []},
            "jurisdiction": "DE",
        },
        "config": {
            "encoder": {
                "codecs": ["libx264"],
                "bitrate_kbps": 2500,
                "keyframe_interval": 60,
                "low_latency": True,
            },
            "cameras": [{"id": "cam0", "backend": "sim", "width": 1280, "height": 720, "fps": 30}],
            "media": {"sink": "rtp://198.51.100.7:5004", "mtu": 1200, "enabled": True},
            "log": {"level": "info", "format": "json"},
        },
        # Commands are not retained: a time-based version (ms) keeps them increasing across admins.
        "command": {"name": "ptz_preset", "args": {"camera": "cam0", "preset": "wide"}},
        "keys": {"meeting": "meeting-id", "note": "body model owned by agent.privacy.key_packages.KeysBody"},
        "root": {"keys": {}, "roles": {r: {"keyids": [], "threshold": 1} for r in ROLES}},
        # Made for real by `roomctl update make` / `update push` from the log (docs/firmware.md).
        "update": {
            "firmware_version": 2,
            "length": 1048576,
            "sha256": "0" * 64,
            "urls": ["https://updates.example/room-v2.raucb"],
            "transparency": {
                "index": 0,
                "tree_size": 1,
                "proof": [],
                "checkpoint": "the signed checkpoint note from roomctl log prove",
            },
            "install_window": {"start": "02:00", "end": "04:00"},
        },
    }
    # Same clock as roomctl's own commands (milliseconds): a template signed after a roomctl verb is
    # not refused as a rollback.
    version = int(t.timestamp() * 1000) if kind in ("command", "keys") else 1
    payload: dict[str, Any] = {
        "kind": kind,
        "version": version,
        "issued_at": _ts(t),
        "expires": _ts(t + (dt.timedelta(hours=1) if kind in ("command", "keys") else dt.timedelta(days=30))),
        "targets": {"devices": ["room-101"], "groups": ["hq"]},
        "body": bodies[kind],
    }
    if kind == "root":
        del payload["targets"]
        payload["expires"] = _ts(t + dt.timedelta(days=365))
    return payload


def _toml_to_json(value: Any) -> Any:
    """TOML has native datetimes; the payload carries RFC 3339 UTC strings (``...Z``)."""
    if isinstance(value, dict):
        return {k: _toml_to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_toml_to_json(v) for v in value]
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise CliError(f"timestamp {value.isoformat()} has no offset: write it in UTC with a trailing Z")
        return _ts(value)
    if isinstance(value, dt.date | dt.time):
        raise CliError(f"{value.isoformat()}: timestamps need a full date and time in UTC")
    return value


def _load_payload(path: Path) -> tuple[dict[str, Any] | None, Envelope | None]:
    data = path.read_bytes()
    if path.suffix == ".toml":
        return _toml_to_json(tomllib.loads(data.decode())), None
    obj = strict_json(data)
    if isinstance(obj, dict) and "payloadType" in obj:
        return None, Envelope.parse(data)
    if not isinstance(obj, dict):
        raise CliError(f"{path}: not a JSON object")
    return obj, None


def _check_payload(kind: str, payload: dict[str, Any]) -> None:
    if payload.get("kind") != kind:
        raise CliError(f"payload kind is {payload.get('kind')!r}, not {kind!r}")
    model = body_model(kind)
    if model is not None:
        try:
            model.model_validate(payload.get("body"))
        except ValidationError as exc:
            err = exc.errors()[0]
            raise CliError(f"body.{'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from exc


def _write(out: str | None, data: bytes) -> None:
    if out is None or out == "-":
        sys.stdout.write(data.decode() + "\n")
    else:
        atomic_write_bytes(Path(out), data + b"\n", mode=0o644)


def _sign(args: argparse.Namespace) -> int:
    payload, env = _load_payload(Path(args.file))
    if env is None:
        assert payload is not None
        _check_payload(args.kind, payload)
        env = Envelope(payload_type(args.kind), json.dumps(payload, separators=(",", ":")).encode(), ())
    elif env.payload_type != payload_type(args.kind):
        raise CliError(f"envelope is {env.payload_type}, not {payload_type(args.kind)}")
    for key in load_signing_keys([Path(k) for k in args.key], args.passphrase_env):
        env = env.signed_by(key)
    _write(args.out, env.to_json())
    return 0


def _role_keys(args: argparse.Namespace, role: str) -> list[dict[str, Any]] | None:
    paths = getattr(args, f"{role}_key")
    if not paths:
        return None
    return [load_public_key_file(Path(p), args.passphrase_env) for p in paths]


def _root_payload(args: argparse.Namespace, version: int, base: RootBody | None) -> dict[str, Any]:
    keys: dict[str, dict[str, Any]] = {}
    roles: dict[str, dict[str, Any]] = {}
    for role in ROLES + OPTIONAL_ROLES:
        given = _role_keys(args, role)
        threshold = getattr(args, f"{role}_threshold")
        if given is None:
            if role in OPTIONAL_ROLES and (base is None or role not in base.roles):
                continue  # an optional role stays absent until someone names its keys
            if base is None:
                raise CliError(f"--{role}-key is required")
            spec = base.roles[role]  # type: ignore[index]
            roles[role] = {"keyids": list(spec.keyids), "threshold": threshold or spec.threshold}
            keys.update({k: base.keys[k] for k in spec.keyids})
        else:
            ids = [keyid_of(k) for k in given]
            roles[role] = {"keyids": ids, "threshold": threshold or 1}
            keys.update(dict(zip(ids, given, strict=True)))
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return {
        "kind": "root",
        "version": version,
        "issued_at": _ts(now),
        "expires": _ts(now + dt.timedelta(days=args.expires_days)),
        "body": {"keys": keys, "roles": roles},
    }


def _root_init(args: argparse.Namespace) -> int:
    payload = _root_payload(args, 1, None)
    RootBody.model_validate(payload["body"])
    env = Envelope(payload_type("root"), json.dumps(payload, separators=(",", ":")).encode(), ())
    for key in load_signing_keys([Path(k) for k in args.sign], args.passphrase_env):
        env = env.signed_by(key)
    verify_initial_root(env.to_json())  # the device will do the same: fail here, not there
    _write(args.out, env.to_json())
    return 0


def _root_rotate(args: argparse.Namespace) -> int:
    current = verify_initial_root(Path(args.current).read_bytes())
    payload = _root_payload(args, current.version + 1, current.body)
    env = Envelope(payload_type("root"), json.dumps(payload, separators=(",", ":")).encode(), ())
    for key in load_signing_keys([Path(k) for k in args.sign], args.passphrase_env):
        env = env.signed_by(key)
    _write(args.out, env.to_json())
    return 0


def _template(args: argparse.Namespace) -> int:
    print(json.dumps(template(args.kind), indent=2))
    return 0


def _guard(func: Any) -> Any:
    return guarded(func.__name__.strip("_").replace("_", " "), func)


def _role_args(p: argparse.ArgumentParser) -> None:
    for role in ROLES + OPTIONAL_ROLES:
        p.add_argument(
            f"--{role}-key",
            action="append",
            default=[],
            metavar="KEY",
            help=f"{role} public key (.pub.json or private PEM); repeat for several",
        )
        p.add_argument(
            f"--{role}-threshold",
            type=int,
            metavar="N",
            help=f"signatures of distinct {role} keys needed (default 1; rotate: kept)",
        )
    p.add_argument(
        "--sign",
        action="append",
        default=[],
        metavar="PRIVATE_KEY",
        required=True,
        help="root private key(s) that sign (rotation: old AND new root keys)",
    )
    p.add_argument(
        "--expires-days", type=int, default=365, metavar="DAYS", help="root validity in days (default 365)"
    )
    p.add_argument(
        "--passphrase-env", metavar="VAR", help="environment variable holding the keys' passphrase"
    )
    p.add_argument("--out", help="output file (default: stdout)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    root = sub.add_parser("root", help="make the first trust root or rotate it")
    rsub = root.add_subparsers(dest="root_command", required=True)
    p = rsub.add_parser("init", help="root v1 signed by its own root keys")
    _role_args(p)
    p.set_defaults(func=_guard(_root_init))
    p = rsub.add_parser("rotate", help="root N+1: roles not given are kept; sign with old and new root keys")
    p.add_argument("--current", required=True, help="the current root envelope")
    _role_args(p)
    p.set_defaults(func=_guard(_root_rotate))

    p = sub.add_parser("template", help="print a complete example payload of KIND as JSON")
    p.add_argument(
        "kind", choices=[k for k in DOCUMENT_KINDS if k != "root"] + ["root"], help="document kind to show"
    )
    p.set_defaults(func=_guard(_template))

    p = sub.add_parser("sign", help="sign a payload (TOML/JSON) into a DSSE envelope, or add a signature")
    p.add_argument("kind", choices=[k for k in DOCUMENT_KINDS], help="document kind (must match the payload)")
    p.add_argument("file", help="payload .toml/.json, or an existing envelope to countersign")
    p.add_argument("--key", action="append", required=True, help="private key (PEM); repeat for several")
    p.add_argument(
        "--passphrase-env", metavar="VAR", help="environment variable holding the keys' passphrase"
    )
    p.add_argument("--out", help="output file (default: stdout)")
    p.set_defaults(func=_guard(_sign))
