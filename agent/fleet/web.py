"""``roomctl meeting web``: serve the browser client (``web/``, plain static files) for a first try.

Any web server can host ``web/``; the client needs nothing from it but the files (the SFU address and
the keys come in the join link's fragment, which browsers never send to a server). Browsers give
camera, microphone and WebCrypto only to secure origins, and ``http://127.0.0.1`` is one: hence the
loopback default. For other machines, host ``web/`` behind HTTPS.
"""

from __future__ import annotations

__all__ = ["WEB_DIR", "register_web", "serve"]

import argparse
import functools
import http.server
import sys
from pathlib import Path
from typing import Any

WEB_DIR = Path(__file__).resolve().parents[2] / "web"


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript"}

    def end_headers(self) -> None:
        # The page holds meeting keys (from its fragment): no caching, no referrer, no framing.
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass  # request lines never hold the fragment, but keep the CLI quiet


def serve(bind: str, port: int, directory: Path = WEB_DIR) -> http.server.ThreadingHTTPServer:
    handler = functools.partial(_Handler, directory=str(directory))
    return http.server.ThreadingHTTPServer((bind, port), handler)


def _run(args: argparse.Namespace) -> int:
    server = serve(args.bind, args.port, Path(args.dir))
    host, port = server.server_address[:2]
    print(f"serving {args.dir} on http://{host}:{port}/ (open a join link from `roomctl meeting start --guest`)")
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
