"""The receive side of a meeting for one room: every other room's frames in, their pictures on the
display, their sound on the speaker, per-peer figures out for the device state.

Transport-agnostic: :meth:`MeetingReceive.handle_frame` takes reassembled frames (frame header +
SFrame ciphertext) from any transport; :meth:`MeetingReceive.handle_datagram` and :meth:`serve` are
the lab RTP/UDP transport's entry points. Frames are opened with the meeting's receive keys (from the
customer-signed key package: ``agent.privacy.sframe_keys.SFrameKeyTarget.opener``); which room sent a
stream is known from its SFrame KID (the key package names each key's sender), never from anything
the transport claims.
"""

from __future__ import annotations

__all__ = ["MeetingReceive"]

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from agent.e2ee.header import decode_header
from agent.e2ee.sframe import SFrameError
from agent.media.audio import AudioPlayout
from agent.media.keys import FrameOpener
from agent.media.receiver import MediaReceiver
from agent.media.rtp import AssembledFrame
from hal.errors import HalError
from hal.protocols import Display, Speaker
from hal.types import Screen, Tile

_log = structlog.get_logger()


class _KidTap:
    """Wraps the opener to note the KID of each frame it opens (the SFrame header is in clear)."""

    def __init__(self, opener: FrameOpener) -> None:
        self.opener = opener
        self.last_kid: int | None = None

    def open(self, metadata: bytes, ciphertext: bytes) -> bytes:
        self.last_kid = None
        plaintext = self.opener.open(metadata, ciphertext)  # raises SFrameError: nothing noted
        try:
            self.last_kid = decode_header(ciphertext)[0]
        except (SFrameError, ValueError):
            self.last_kid = None
        return plaintext


class MeetingReceive:
    """One room's receive side (a ``Service``: ``name``, ``async run``); thread-confined handling.

    Args:
        opener: the meeting's receive keys.
        display: the room's screen; remote rooms appear in its grid by name.
        speaker_for: the speaker a remote room's audio plays on (one per peer in the simulator, which
            verifies each peer's stamps; on a room, the room's speaker through a mixer).
        peer_of_kid: the room (device id) a KID belongs to, from the key package.
        locked / encrypted: what the screen's notices show (``set_notices``).
    """

    name = "meeting-receive"

    def __init__(
        self,
        opener: FrameOpener,
        display: Display,
        speaker_for: Callable[[str], Speaker],
        *,
        peer_of_kid: Callable[[int], str | None],
        listen: tuple[str, int] | None = None,
    ) -> None:
        self._tap = _KidTap(opener)
        self._display = display
        self._speaker_for = speaker_for
        self._peer_of_kid = peer_of_kid
        self._peer_of_ssrc: dict[int, str] = {}
        self._playouts: dict[str, AudioPlayout] = {}
        self._tiles: dict[str, Any] = {}
        self._locked = False
        self._encrypted = True
        self._listen = listen
        self.receiver = MediaReceiver(
            self._tap, timeout_s=0.08, on_picture=self._picture, on_audio=self._audio
        )

    def set_notices(self, *, locked: bool, encrypted: bool = True) -> None:
        self._locked, self._encrypted = locked, encrypted

    # --- transport seam ----------------------------------------------------------------------------

    def handle_frame(self, frame: AssembledFrame) -> None:
        self.receiver.handle_frame(frame)

    def handle_datagram(self, datagram: bytes, now: float | None = None) -> None:
        self.receiver.handle_datagram(datagram, now)

    def serve(self, sock: socket.socket, stop: threading.Event) -> None:
        self.receiver.serve(sock, stop)

    async def run(self, progress: Any = None) -> None:
        """Serve the lab RTP/UDP transport on ``listen`` until cancelled."""
        import asyncio

        from agent.media.receiver import bind_udp

        if self._listen is None:
            raise ValueError("MeetingReceive.run needs listen=(host, port) for the lab transport")
        sock = bind_udp(*self._listen)
        stop = threading.Event()
        thread = threading.Thread(target=self.serve, args=(sock, stop), name="meeting-receive", daemon=True)
        thread.start()
        try:
            while True:
                await asyncio.sleep(1.0)
                if progress is not None:
                    progress.beat()
        finally:
            stop.set()
            await asyncio.to_thread(thread.join, 2.0)
            sock.close()

    # --- per frame -----------------------------------------------------------------------------------

    def _peer(self, ssrc: int) -> str:
        kid = self._tap.last_kid
        if kid is not None:
            name = self._peer_of_kid(kid)
            if name is not None:
                self._peer_of_ssrc[ssrc] = name
        return self._peer_of_ssrc.get(ssrc, f"ssrc-{ssrc:08x}")

    def _picture(self, ssrc: int, picture: Any) -> None:
        peer = self._peer(ssrc)
        self._tiles[peer] = picture.image
        remote = tuple(Tile(name, self._tiles[name], locked=False) for name in sorted(self._tiles))
        try:
            self._display.show(Screen(remote=remote, encrypted=self._encrypted, locked=self._locked))
        except HalError as exc:
            _log.warning("display_show_failed", error=str(exc))

    def _audio(self, ssrc: int, timestamp: int, opus: bytes) -> None:
        peer = self._peer(ssrc)
        playout = self._playouts.get(peer)
        if playout is None:
            playout = self._playouts[peer] = AudioPlayout(self._speaker_for(peer), name=peer)
        playout.push(timestamp, opus)

    # --- figures -------------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """Per-peer receive figures for the state report (no keys, no content)."""
        tiles = getattr(getattr(self._display, "verifier", None), "tiles", {})
        peers: dict[str, Any] = {}
        for peer in sorted({*self._tiles, *self._playouts}):
            entry: dict[str, Any] = {}
            tile = tiles.get(peer)
            if tile is not None:
                entry["video"] = tile.as_dict()
            playout = self._playouts.get(peer)
            if playout is not None:
                entry["audio"] = playout.stats.as_dict()
                report = getattr(self._speaker_for(peer), "report", None)
                if report is not None:
                    entry["audio"]["heard"] = report.as_dict()
            peers[peer] = entry
        r = self.receiver.stats
        return {
            "peers": peers,
            "decrypt_failures": r.decrypt_failures,
            "frames_received": r.frames_received,
            "updated": time.time(),
        }
