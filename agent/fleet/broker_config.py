"""``roomctl broker-config``: Mosquitto's dynamic-security JSON from the customer-signed room roster.

The broker is not trusted with the room's promises (documents are signed, media is end-to-end
encrypted), but it is what keeps one broker client from reading another room's commands, writing its
acks and state, taking its client id (and so kicking it offline in a loop) or reading another group's
desired documents. ``deploy/mosquitto/mosquitto.conf`` authenticates every client by its certificate
(``require_certificate``, ``use_identity_as_username``: the certificate CN is the user name, which is
the device id), binds the client id to it (``use_username_as_clientid``: whatever id a client asks
for, it gets its certificate's) and authorises with the dynamic security plugin, whose JSON this
module writes:

- every ACL type is denied by default (``defaultACLAccess``); there is no anonymous group;
- role ``device-{id}`` per room: subscribe to and receive ``{p}/devices/{id}/#``, publish there too
  except on the topics the plane writes (``desired/#``, ``cmd``, ``keys``);
- role ``group-{g}`` per group: subscribe to and receive ``{p}/groups/{g}/desired/#``, granted only to
  the rooms the roster puts in ``g``;
- role ``plane`` for the management plane's certificates (``--plane CN``, default ``plane``).

The roster (``roster.env.json``) is verified before use: DSSE over PAE, payloadType
``application/vnd.roomagent.roster+json``, signed by the ``customer`` role threshold of the trust root
(each public key counted once), not expired. ``_RosterReader`` is a minimal strict reader of that
contract; the full model lives in ``agent.control.roster`` and can replace it one for one.
"""

from __future__ import annotations

__all__ = ["BrokerConfigError", "dynsec_config", "read_roster_groups", "register"]

import argparse
import datetime as dt
import json
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.control.documents import payload_type
from agent.control.dsse import Envelope, strict_json
from agent.control.errors import ControlError, Rejected
from agent.control.signing_keys import canonical_json
from agent.control.verify import TrustedRoot, verify_initial_root

_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z", re.ASCII)
MAX_ROSTER_BYTES = 16 * 1024 * 1024
Identifier = Annotated[str, Field(pattern=_ID)]


class BrokerConfigError(ControlError):
    """The roster or root cannot be used to generate a broker configuration."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _RosterRoom(_Strict):
    ed25519: dict[str, Any]
    hpke: dict[str, Any]
    hpke_attestation: dict[str, Any]
    groups: list[Identifier] = Field(max_length=256)


class _RosterBody(_Strict):
    customer: str = Field(min_length=1, max_length=256)
    rooms: dict[Identifier, _RosterRoom]


class _RosterPayload(_Strict):
    kind: str
    version: int = Field(ge=1, le=2**53 - 1)
    issued_at: str
    expires: str
    targets: dict[str, Any]
    body: _RosterBody


def _customer_signed(env: Envelope, root: TrustedRoot) -> bool:
    """DSSE verification against the ``customer`` role: each public key counts once, however many
    key ids or signatures name it (DSSE protocol: never count the same key twice)."""
    role = root.roles.get("customer")
    if role is None:
        return False
    pae = env.pae()
    good: set[bytes] = set()
    for sig in env.signatures:
        key = root.keys.get(sig.keyid) if sig.keyid in role.keyids else None
        if key is not None and key.verify(sig.sig, pae):
            good.add(canonical_json(key.to_dict()))
    return len(good) >= role.threshold


def read_roster_groups(
    roster_raw: bytes, root_raw: bytes, *, now: dt.datetime | None = None
) -> tuple[str, dict[str, list[str]]]:
    """``(customer, {device id: [groups]})`` from a verified roster.

    Raises:
        BrokerConfigError: the root or roster does not verify, or the roster is malformed or expired.
    """
    now = now or dt.datetime.now(dt.UTC)
    try:
        root = verify_initial_root(root_raw, max_bytes=MAX_ROSTER_BYTES)
    except Rejected as exc:
        raise BrokerConfigError(f"root: {exc.reason}: {exc.message}") from exc
    if len(roster_raw) > MAX_ROSTER_BYTES:
        raise BrokerConfigError(f"roster: larger than {MAX_ROSTER_BYTES} bytes")
    try:
        env = Envelope.parse(roster_raw)
    except (ValueError, RecursionError) as exc:
        raise BrokerConfigError(f"roster: not a DSSE envelope: {exc}") from exc
    if env.payload_type != payload_type("roster"):
        raise BrokerConfigError(f"roster: payloadType {env.payload_type!r} is not a roster's")
    if not _customer_signed(env, root):
        raise BrokerConfigError("roster: not signed by the customer role threshold of the trust root")
    try:
        payload = _RosterPayload.model_validate(strict_json(env.payload))
    except (ValueError, RecursionError, ValidationError) as exc:
        raise BrokerConfigError(f"roster: malformed payload: {str(exc)[:300]}") from exc
    if payload.kind != "roster":
        raise BrokerConfigError(f"roster: kind {payload.kind!r}")
    if not _RFC3339_UTC.fullmatch(payload.expires):
        raise BrokerConfigError("roster: expires is not an RFC 3339 UTC time")
    expires = dt.datetime.fromisoformat(payload.expires.replace("Z", "+00:00"))
    if expires <= now:
        raise BrokerConfigError(f"roster: expired at {payload.expires}")
    return payload.body.customer, {d: list(r.groups) for d, r in payload.body.rooms.items()}


def _acl(acltype: str, topic: str, *, allow: bool = True, priority: int = 0) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "priority": priority, "allow": allow}


def dynsec_config(
    customer: str, rooms: dict[str, list[str]], *, prefix: str = "roomagent/v1", planes: list[str]
) -> dict[str, Any]:
    """The dynamic security plugin's JSON (mosquitto 2.0 ``dynamic-security.json`` format)."""
    if any(p in rooms for p in planes):
        raise BrokerConfigError("a plane certificate name is also a room id")
    roles: list[dict[str, Any]] = [
        {
            "rolename": "plane",
            "textname": "management plane: every topic under the prefix",
            "acls": [
                _acl("publishClientSend", f"{prefix}/#"),
                _acl("publishClientReceive", f"{prefix}/#"),
                _acl("subscribePattern", f"{prefix}/#"),
                _acl("unsubscribePattern", f"{prefix}/#"),
            ],
        }
    ]
    groups = sorted({g for gs in rooms.values() for g in gs})
    for group in groups:
        topic = f"{prefix}/groups/{group}/desired/#"
        roles.append(
            {
                "rolename": f"group-{group}",
                "textname": f"members of group {group}: read its desired documents",
                "acls": [
                    _acl("subscribePattern", topic),
                    _acl("publishClientReceive", topic),
                    _acl("unsubscribePattern", topic),
                ],
            }
        )
    clients: list[dict[str, Any]] = []
    for device in sorted(rooms):
        base = f"{prefix}/devices/{device}"
        roles.append(
            {
                "rolename": f"device-{device}",
                "textname": f"room {device}: its own subtree only",
                "acls": [
                    # The plane's topics are read-only for the room (higher priority wins).
                    _acl("publishClientSend", f"{base}/desired/#", allow=False, priority=10),
                    _acl("publishClientSend", f"{base}/cmd", allow=False, priority=10),
                    _acl("publishClientSend", f"{base}/keys", allow=False, priority=10),
                    _acl("publishClientSend", f"{base}/#"),
                    _acl("publishClientReceive", f"{base}/#"),
                    _acl("subscribePattern", f"{base}/#"),
                    _acl("unsubscribePattern", f"{base}/#"),
                ],
            }
        )
        clients.append(
            {
                "username": device,
                # Also enforced by use_username_as_clientid: a certificate gets its own id only.
                "clientid": device,
                "textname": f"{customer} room",
                "roles": [{"rolename": f"device-{device}"}]
                + [{"rolename": f"group-{g}"} for g in sorted(set(rooms[device]))],
            }
        )
    for plane in planes:
        clients.append({"username": plane, "textname": "management plane", "roles": [{"rolename": "plane"}]})
    return {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": False,
        },
        "clients": clients,
        "groups": [],
        "roles": roles,
    }


def _run(args: argparse.Namespace) -> int:
    try:
        customer, rooms = read_roster_groups(Path(args.roster).read_bytes(), Path(args.root).read_bytes())
        config = dynsec_config(customer, rooms, prefix=args.prefix, planes=args.plane or ["plane"])
    except (BrokerConfigError, OSError) as exc:
        print(f"roomctl broker-config: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    # The file names every room: readable by the broker only.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(config, fh, indent=2, sort_keys=True)
        fh.write("\n")
    tmp.replace(out)
    groups = {g for gs in rooms.values() for g in gs}
    print(f"{out}: {len(rooms)} room(s), {len(groups)} group(s), plane {', '.join(args.plane or ['plane'])}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "broker-config",
        help="write Mosquitto's dynamic-security JSON (per-room and per-group ACLs) from the roster",
        description="Generate deploy/mosquitto's dynamic-security.json from the customer-signed roster: "
        "each room reads and writes only its own topics and reads only its groups' desired documents.",
    )
    p.add_argument("--roster", required=True, type=Path, help="customer-signed roster (roster.env.json)")
    p.add_argument("--root", required=True, type=Path, help="trust root that signs the roster (root.json)")
    p.add_argument("--out", required=True, type=Path, help="where to write dynamic-security.json")
    p.add_argument("--prefix", default="roomagent/v1", help="topic prefix (default roomagent/v1)")
    p.add_argument(
        "--plane",
        action="append",
        metavar="CN",
        help="certificate CN of a management-plane client (repeatable; default: plane)",
    )
    p.set_defaults(func=_run)
