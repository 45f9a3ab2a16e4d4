"""``roomctl keygen``: Ed25519 or ECDSA P-256 signing keys, PKCS#8 PEM, optionally encrypted."""

from __future__ import annotations

__all__ = ["register"]

import argparse
import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from agent.control.errors import ControlError
from agent.control.signing_keys import PrivateKey, key_dict, keyid_of, private_key_pem
from agent.fleet.common import passphrase
from agent.persist import atomic_write_bytes


def _keygen(args: argparse.Namespace) -> int:
    try:
        secret = passphrase(args.passphrase_env)
    except ControlError as exc:
        print(f"roomctl: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and not args.force:
        print(f"roomctl: {out} exists (use --force to overwrite)", file=sys.stderr)
        return 2
    key: PrivateKey = (
        ed25519.Ed25519PrivateKey.generate()
        if args.type == "ed25519"
        else ec.generate_private_key(ec.SECP256R1())
    )
    atomic_write_bytes(out, private_key_pem(key, secret), mode=0o600)
    public = key_dict(key.public_key())
    keyid = keyid_of(public)
    pub_path = out.with_name(out.name + ".pub.json")
    atomic_write_bytes(
        pub_path, json.dumps({**public, "keyid": keyid}, indent=2).encode() + b"\n", mode=0o644
    )
    print(json.dumps({"keyid": keyid, "private": str(out), "public": str(pub_path)}))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("keygen", help="make a signing key (PKCS#8 PEM) and its public key dict (.pub.json)")
    p.add_argument("--type", choices=["ed25519", "ecdsa"], default="ed25519", help="ecdsa = P-256")
    p.add_argument("--out", required=True, help="private key path; the public key goes to OUT.pub.json")
    p.add_argument("--passphrase-env", metavar="VAR", help="encrypt with the passphrase in $VAR")
    p.add_argument("--force", action="store_true", help="overwrite an existing key file")
    p.set_defaults(func=_keygen)
