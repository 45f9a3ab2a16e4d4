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

import heapq
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from agent.e2ee.header import decode_header
from agent.e2ee.sframe import SFrameError
from agent.media.audio import AudioPlayout
from agent.media.key_source import FrameOpener
from agent.media.receiver import MediaReceiver
from agent.media.rtp import AssembledFrame
from hal.errors import HalError
from hal.protocols import Display, Speaker
from hal.types import Screen, Tile

_log = structlog.get_logger()
_MAX_DATAGRAM = 65_535
_PLI_INTERVAL_S = 0.1  # at most one keyframe request per peer per 100 ms
# What audio goes through that video does not: the sender's 20 ms of framing and Opus's 6.5 ms
# lookahead. What video goes through that audio does not (encoding and decoding the picture) is
# subtracted per picture: the decode is timed here, the encode taken as long as the decode.
_AUDIO_FIXED_NS = 26_500_000
_MAX_HOLD_NS = 200_000_000


class _LipSync:
    """Holds each picture until the sound captured with it plays (lip sync at the receiver).

    Without RTCP sender reports the receiver cannot map the two streams' timestamps to one clock, so
    it assumes both travel the network alike and aligns what it knows: a picture is shown when
    ``arrival + audio pipeline delay`` is reached, where that delay is the audio device's queued time
    plus the fixed audio-only delays (framing, codec lookahead). One thread shows the held pictures.
    """

    def __init__(self, present: Callable[[str, Any], None]) -> None:
        self._present = present
        self._heap: list[tuple[float, int, str, Any]] = []
        self._last_due: dict[str, float] = {}
        self._order = 0
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="lip-sync", daemon=True)
        self._thread.start()

    def push(self, peer: str, image: Any, audio_delay_ns: int | None, video_work_ns: int = 0) -> None:
        if audio_delay_ns is None:
            self._present(peer, image)  # no audio from this peer: nothing to wait for
            return
        hold = min(_MAX_HOLD_NS, max(0, audio_delay_ns + _AUDIO_FIXED_NS - video_work_ns)) / 1e9
        with self._cond:
            # Never before the peer's previous picture: a shrinking hold must not reorder pictures.
            due = max(time.monotonic() + hold, self._last_due.get(peer, 0.0))
            self._last_due[peer] = due
            self._order += 1
            heapq.heappush(self._heap, (due, self._order, peer, image))
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(2.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else 0.1
                    self._cond.wait(max(0.0, timeout))
                if self._stop:
                    return
                _, _, peer, image = heapq.heappop(self._heap)
            self._present(peer, image)


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
        on_need_keyframe: Callable[[str], None] | None = None,
        lip_sync: bool = True,
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
        self._on_need_keyframe = on_need_keyframe
        self._present_lock = threading.Lock()
        self._frame_start_ns = time.monotonic_ns()
        self._last_pli: dict[str, float] = {}
        # A gap is declared lost after 80 ms: longer than the reordering of a jittery path (tens of
        # ms), short enough that audio after a loss is not held for long.
        self.receiver = MediaReceiver(
            self._tap,
            timeout_s=0.08,
            on_picture=self._picture,
            on_audio=self._audio,
            on_need_keyframe=self._need_keyframe,
        )
        self._sync = _LipSync(self._present) if lip_sync else None

    def set_notices(self, *, locked: bool, encrypted: bool = True) -> None:
        self._locked, self._encrypted = locked, encrypted

    # --- transport seam ----------------------------------------------------------------------------

    def handle_frame(self, frame: AssembledFrame) -> None:
        self._frame_start_ns = time.monotonic_ns()
        self.receiver.handle_frame(frame)

    def handle_datagram(self, datagram: bytes, now: float | None = None) -> None:
        self._frame_start_ns = time.monotonic_ns()
        self.receiver.handle_datagram(datagram, now)

    def serve(self, sock: socket.socket, stop: threading.Event) -> None:
        """Receive on ``sock`` until ``stop`` is set (blocking: run it in a thread)."""
        sock.settimeout(0.05)
        while not stop.is_set():
            try:
                datagram = sock.recv(_MAX_DATAGRAM)
            except TimeoutError:
                self._frame_start_ns = time.monotonic_ns()
                self.receiver.poll()
                continue
            except OSError as exc:
                _log.warning("media_receive_failed", error=str(exc))
                continue
            self.handle_datagram(datagram)

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

    def _need_keyframe(self, ssrc: int) -> None:
        peer = self._peer(ssrc)
        now = time.monotonic()
        if self._on_need_keyframe is None or now - self._last_pli.get(peer, 0.0) < _PLI_INTERVAL_S:
            return
        self._last_pli[peer] = now
        self._on_need_keyframe(peer)

    @property
    def playouts(self) -> dict[str, AudioPlayout]:
        return dict(self._playouts)

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()

    def _picture(self, ssrc: int, picture: Any) -> None:
        peer = self._peer(ssrc)
        if self._sync is None:
            self._present(peer, picture.image)
            return
        playout = self._playouts.get(peer)
        audio_delay = playout.delay_ns() if playout is not None else None
        decode_ns = time.monotonic_ns() - self._frame_start_ns
        self._sync.push(peer, picture.image, audio_delay, video_work_ns=2 * decode_ns)

    def _present(self, peer: str, image: Any) -> None:
        with self._present_lock:  # the receiving thread and the lip-sync thread both present
            self._tiles[peer] = image
            remote = tuple(Tile(name, self._tiles[name]) for name in sorted(self._tiles))
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
