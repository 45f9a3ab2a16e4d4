"""``roomagent identity [--config PATH] [--json]``: the room's public identity, for enrollment.

Run on the device at installation (or in the image build's first-boot step), it prints what the
customer records in the room roster (``roomctl roster add ROOM --identity identity.json``): the
device id, its Ed25519 identity public key (TUF key dict) and key id, its HPKE public keys and the
attestation (a DSSE envelope over ``{"device", "hpke"}`` signed by the Ed25519 key). The output
travels to the customer through a channel the broker does not control (the installer's laptop, a
QR code, the image build's inventory), so a broker client cannot substitute its own keys.

It uses the very files the daemon uses (``<state>/identity/ed25519.pem`` and ``hpke.json``) and
creates them when missing, exactly as the daemon would on first start. Private keys are never
printed. Ed25519 signatures are deterministic, so the attestation printed here is byte-identical to
the one the running agent publishes in its retained state.
"""

from __future__ import annotations

__all__ = ["identity_document", "register"]

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, load_config
from agent.errors import AgentError, ConfigError

_IDENTITY_FORMAT = 1


def identity_document(config: AgentConfig) -> dict[str, Any]:
    """The public identity of the room described by ``config``, creating its keys when missing.

    Raises:
        StateError / KeyFileError / IdentityError: the state directory or a key file is unusable.
    """
    from agent.control.identity import DeviceIdentity
    from agent.control.roster import ATTESTATION_KIND
    from agent.daemon.main import prepare_state_dir
    from agent.privacy.hpke import HpkeIdentity

    state_dir = config.state_dir()
    if not state_dir.exists():
        # First use (image build, installation): create it as the daemon would. On a running room
        # it exists: leave it alone (prepare_state_dir also sweeps temp files a live agent may own).
        prepare_state_dir(state_dir)
    device = DeviceIdentity.load_or_create(state_dir)
    hpke = HpkeIdentity.load_or_create(state_dir / "identity" / "hpke.json").public_keys()
    attestation = device.sign_envelope(ATTESTATION_KIND, {"device": config.device.id, "hpke": hpke})
    return {
        "format": _IDENTITY_FORMAT,
        "device": config.device.id,
        "groups": list(config.device.groups),
        "ed25519": device.public_dict,
        "keyid": device.keyid,
        "hpke": hpke,
        "hpke_attestation": attestation.to_dict(),
    }


def _identity(args: argparse.Namespace) -> int:
    from agent.daemon.cli import _default_config_path
    from agent.logs import configure_logging

    # stdout carries the identity (often redirected to a file): log lines go to stderr.
    configure_logging("warning", "json", stream=sys.stderr)

    path: Path | None = args.config if args.config is not None else _default_config_path()
    try:
        config = load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"{exc.source}: {issue.path}: {issue.reason}", file=sys.stderr)
        return 2
    try:
        doc = identity_document(config)
    except AgentError as exc:
        print(f"roomagent identity: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(f"device   {doc['device']}")
        print(f"groups   {', '.join(doc['groups']) or '-'}")
        print(f"ed25519  {doc['ed25519']['keyval']['public']}")
        print(f"keyid    {doc['keyid']}")
        for kem, key in sorted(doc["hpke"].items()):
            print(f"hpke     {kem} {key[:24]}... ({len(key)} base64 chars)")
        print("enroll:  roomagent identity --json > identity.json, then on the customer's machine")
        print(f"         roomctl roster add {doc['device']} --identity identity.json --customer-key ...")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "identity",
        help="print this room's public identity (Ed25519, HPKE keys, attestation) for the customer's roster",
        description=(__doc__ or "").split("\n\n")[0],
    )
    p.add_argument(
        "--config",
        type=Path,
        help="agent.toml (default: $CONFIGURATION_DIRECTORY/agent.toml, else built-in defaults)",
    )
    p.add_argument(
        "--json", action="store_true", help="print the identity as JSON (the file roomctl roster add reads)"
    )
    p.set_defaults(func=_identity)
