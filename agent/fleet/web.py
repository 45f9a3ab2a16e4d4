"""``roomctl meeting web`` and the WebRTC options of ``roomctl meeting start`` (SFU place, guests).

``meeting web`` serves the browser client (``web/``, plain static files, :mod:`agent.webrtc.static`)
for a first try. Any web server can host ``web/``; the client needs nothing from it but the files (the
SFU address and the keys come in the join link's fragment, which browsers never send to a server).
Browsers give camera, microphone and WebCrypto only to secure origins, and ``http://127.0.0.1`` is one:
hence the loopback default. For other machines, host ``web/`` behind HTTPS.
"""

from __future__ import annotations

__all__ = ["WEB_DIR", "add_webrtc_arguments", "guest_report", "register_web", "serve", "sfu_place"]

import argparse
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.privacy.key_packages import SealedMeeting
from agent.schema.key_package import SfuBody
from agent.webrtc.static import WEB_DIR, serve


def _run(args: argparse.Namespace) -> int:
    server = serve(args.bind, args.port, Path(args.dir))
    host, port = str(server.server_address[0]), int(server.server_address[1])
    print(
        f"serving {args.dir} on http://{host}:{port}/ (open a join link from `roomctl meeting start --guest`)"
    )
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def register_web(sub: Any) -> None:
    """Add ``roomctl meeting web`` to the ``meeting`` sub-commands."""
    w = sub.add_parser("web", help="serve the browser client (web/) locally for a first try")
    w.add_argument("--bind", default="127.0.0.1", help="address (default 127.0.0.1: a secure origin)")
    w.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0 picks a free one)")
    w.add_argument("--dir", default=str(WEB_DIR), help="directory to serve (default: the repo's web/)")
    w.set_defaults(func=_run)


def add_webrtc_arguments(p: argparse.ArgumentParser) -> None:
    """``roomctl meeting start`` options for meeting over WebRTC (the place is customer-signed)."""
    p.add_argument("--sfu-url", help="Janus HTTP API URL the rooms join (signed into the keys document)")
    p.add_argument("--sfu-room", type=int, help="Janus VideoRoom id")
    p.add_argument("--sfu-token", default="", help="VideoRoom join token (its pin)")
    p.add_argument(
        "--guest",
        action="append",
        metavar="NAME",
        help="add a browser guest; prints a join link carrying its keys in the URL fragment (repeatable)",
    )
    p.add_argument(
        "--web-url",
        default="http://127.0.0.1:8080/",
        help="where web/ is served, for join links (default: `roomctl meeting web`'s address)",
    )


def sfu_place(args: argparse.Namespace) -> SfuBody | None:
    """The signed ``sfu`` object from the options, or None.

    Raises:
        MeetingError: only one of --sfu-url / --sfu-room, guests without an SFU, or a bad URL.
    """
    from agent.fleet.meeting import MeetingError

    url, room = getattr(args, "sfu_url", None), getattr(args, "sfu_room", None)
    if (url is None) != (room is None):
        raise MeetingError("--sfu-url and --sfu-room go together")
    if url is None or room is None:
        if getattr(args, "guest", None):
            raise MeetingError("--guest needs --sfu-url and --sfu-room (browsers meet through the SFU)")
        return None
    try:
        return SfuBody(url=url, room=room, token=args.sfu_token)
    except ValidationError as exc:
        where = {"url": "--sfu-url", "room": "--sfu-room", "token": "--sfu-token"}
        first = exc.errors()[0]
        name = where.get(str(first["loc"][0]), "--sfu-*") if first["loc"] else "--sfu-*"
        hint = " (an http:// or https:// Janus API URL)" if name == "--sfu-url" else ""
        raise MeetingError(f"{name}: {first['msg']}{hint}") from exc


def guest_report(sealed: SealedMeeting, args: argparse.Namespace, meeting: str) -> dict[str, Any]:
    """``{"guests": {name: {"kid", "link"}}}`` (empty without guests). The link's fragment holds the
    guest's keys: browsers never send a fragment to a server."""
    if not sealed.guests:
        return {}
    from agent.webrtc.joinkeys import JoinKeys, PeerKey, SfuPlace, join_fragment

    body = next(iter(sealed.packages.values()))
    sfu = body.sfu
    assert sfu is not None  # sfu_place() refuses guests without an SFU
    place = SfuPlace(sfu.url, sfu.room, sfu.token)
    out: dict[str, Any] = {}
    for name, g in sealed.guests.items():
        keys = JoinKeys(
            meeting,
            body.suite,
            PeerKey("self", g.send[0], g.send[1]),
            tuple(PeerKey(n, kid, key) for n, kid, key in g.recv),
        )
        base = args.web_url if args.web_url.endswith("/") else args.web_url + "/"
        out[name] = {"kid": g.send[0], "link": f"{base}index.html#{join_fragment(place, name, keys)}"}
    return {"guests": out}
