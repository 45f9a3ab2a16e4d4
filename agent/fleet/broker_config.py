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

The roster (``roster.env.json``) is verified before use by the one roster reader roomctl has
(:func:`agent.fleet.common.load_roster`, i.e. :func:`agent.control.roster.verify_roster`): DSSE over
PAE, signed by the ``customer`` role threshold of the trust root (each public key counted once), not
expired, every room entry well formed.
"""

from __future__ import annotations

__all__ = ["BrokerConfigError", "dynsec_config", "register", "roster_groups"]

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from agent.control.errors import ControlError
from agent.control.roster import Roster
from agent.fleet.common import CliError, add_roster_args, load_roster


class BrokerConfigError(ControlError):
    """The roster or root cannot be used to generate a broker configuration."""


def roster_groups(roster: Roster) -> tuple[str, dict[str, list[str]]]:
    """``(customer, {device id: [groups]})`` of a verified roster."""
    return roster.body.customer, {d: list(r.groups) for d, r in roster.rooms.items()}


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
        customer, rooms = roster_groups(load_roster(args))
        config = dynsec_config(customer, rooms, prefix=args.prefix, planes=args.plane or ["plane"])
    except (BrokerConfigError, CliError) as exc:
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
    add_roster_args(p)
    p.add_argument("--out", required=True, type=Path, help="where to write dynamic-security.json")
    p.add_argument("--prefix", default="roomagent/v1", help="topic prefix (default roomagent/v1)")
    p.add_argument(
        "--plane",
        action="append",
        metavar="CN",
        help="certificate CN of a management-plane client (repeatable; default: plane)",
    )
    p.set_defaults(func=_run)
