"""The browser client's files (``web/``) over plain HTTP: ``roomctl meeting web`` and ``bench webrtc``.

Any web server can host ``web/``; the client needs nothing from it but the files (the SFU address and
the keys come in the join link's fragment, which browsers never send to a server). Browsers give
camera, microphone and WebCrypto only to secure origins, and ``http://127.0.0.1`` is one.
"""

from __future__ import annotations

__all__ = ["WEB_DIR", "serve"]

import functools
import http.server
from pathlib import Path

WEB_DIR = Path(__file__).resolve().parents[2] / "web"


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript"}

    def end_headers(self) -> None:
        # The page holds meeting keys (from its fragment): no caching, no referrer, no framing.
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass  # request lines never hold the fragment, but keep the CLI quiet


def serve(bind: str, port: int, directory: Path = WEB_DIR) -> http.server.ThreadingHTTPServer:
    """A threading HTTP server for ``directory`` (not started: call ``serve_forever``)."""
    handler = functools.partial(_Handler, directory=str(directory))
    return http.server.ThreadingHTTPServer((bind, port), handler)
