"""The verifying receiver: RTP/UDP in, reassembled, decrypted, decoded, stamps checked, figures out.

``roomagent receive --listen HOST:PORT`` runs :class:`MediaReceiver` on a socket in one thread. For
every stream (SSRC) it keeps a decoder; after a loss it waits for the next keyframe before decoding
again (a predicted frame on a broken reference would show garbage), which is how the picture
recovers. Every decoded picture's sim stamp (``hal.stamps``) gives the capture sequence number and
time, so the receiver proves frame by frame that what arrived is what was captured, in order, and
measures capture-to-display latency (both clocks are this machine's wall clock on loopback).

Nothing here raises on hostile input: malformed datagrams, frames and ciphertexts are counted.
"""

from __future__ import annotations

__all__ = ["MediaReceiver", "ReceiverStats", "bind_udp", "percentile"]

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from agent.e2ee.sframe import SFrameError
from agent.media.errors import MalformedFrameError
from agent.media.frame import split_frame
from agent.media.key_source import FrameOpener
from agent.media.rtp import AssembledFrame, Depacketizer
from agent.media.sink import FileRecord
from hal.errors import HalError

_log = structlog.get_logger()
_MAX_DATAGRAM = 65_535
_MAX_LATENCIES = 100_000


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by nearest rank, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[rank]


@dataclass(slots=True)
class ReceiverStats:
    frames_received: int = 0  # reassembled frames
    frames_decrypted: int = 0
    frames_decoded: int = 0  # pictures out of the decoders
    decrypt_failures: int = 0
    decrypt_failures_by_reason: dict[str, int] = field(default_factory=dict)
    malformed_frames: int = 0
    unprotected_refused: int = 0
    decode_errors: int = 0
    audio_frames: int = 0  # decrypted Opus frames handed to the audio playout
    skipped_until_keyframe: int = 0
    stamps_read: int = 0
    stamps_missing: int = 0
    stamps_out_of_order: int = 0
    stamps_skipped: int = 0  # capture sequence numbers never seen (lost or dropped frames)
    stamp_restarts: int = 0  # capture sequence restarted (camera reopened), time still moving on
    snapshots: int = 0
    picture_size: tuple[int, int] | None = None  # of the newest decoded picture
    latencies_ms: list[float] = field(default_factory=list)
    first_decoded: float | None = None
    last_decoded: float | None = None


class _Stream:
    __slots__ = ("codec", "decoder", "last_ns", "last_seq", "need_keyframe")

    def __init__(self) -> None:
        self.decoder: Any = None
        self.codec: str | None = None
        self.need_keyframe = True
        self.last_seq: int | None = None
        self.last_ns: int | None = None


class MediaReceiver:
    """Reassembles, decrypts, decodes and verifies; thread-confined (one thread feeds it).

    Args:
        opener: decrypts SFrame ciphertexts (a lab receiver or a meeting's receiver context).
        snapshot_dir: if set, save a PNG of the newest picture of each stream at most every
            ``snapshot_interval_s``.
        allow_unprotected: accept benchmark plain copies (never from the CLI).
        on_picture: called with (SSRC, ``hal.codecs.DecodedFrame``) for every decoded picture (e.g.
            to show it on a display), in the receiving thread.
        on_audio: called with (SSRC, RTP timestamp, Opus packet) for every decrypted audio frame
            (``agent.media.audio.AudioPlayout.push``); without it audio frames are only counted.
        on_need_keyframe: called with the SSRC whenever a frame is skipped while waiting for a
            keyframe (a transport turns it into a keyframe request: RTCP PLI, RFC 4585 §6.3.1).
    """

    def __init__(
        self,
        opener: FrameOpener,
        *,
        snapshot_dir: Path | None = None,
        snapshot_interval_s: float = 1.0,
        allow_unprotected: bool = False,
        timeout_s: float = 0.2,
        on_picture: Callable[[int, Any], None] | None = None,
        on_audio: Callable[[int, int, bytes], None] | None = None,
        on_need_keyframe: Callable[[int], None] | None = None,
    ) -> None:
        self._opener = opener
        self._on_picture = on_picture
        self._on_audio = on_audio
        self._on_need_keyframe = on_need_keyframe
        self.depacketizer = Depacketizer(timeout_s=timeout_s)
        self.stats = ReceiverStats()
        self._streams: dict[int, _Stream] = {}
        self._snapshot_dir = snapshot_dir
        self._snapshot_interval_s = snapshot_interval_s
        self._last_snapshot: dict[int, float] = {}
        self._allow_unprotected = allow_unprotected

    def set_opener(self, opener: FrameOpener) -> None:
        """Re-key the receiver (a new meeting or lab key); streams resume at their next keyframe."""
        self._opener = opener

    # --- input -----------------------------------------------------------------------------------

    def handle_datagram(self, datagram: bytes, now: float | None = None) -> None:
        for frame in self.depacketizer.push(datagram, time.monotonic() if now is None else now):
            self.handle_frame(frame)

    def poll(self, now: float | None = None) -> None:
        for frame in self.depacketizer.poll(time.monotonic() if now is None else now):
            self.handle_frame(frame)

    def handle_record(self, record: FileRecord) -> None:
        """One record of a file sink (``agent.media.sink.read_records``): a whole frame, no loss."""
        self.handle_frame(
            AssembledFrame(
                ssrc=record.ssrc,
                timestamp=record.timestamp,
                keyframe=record.keyframe,
                payload=record.payload,
                first_seq=0,
                packets=1,
                after_loss=False,
            )
        )

    def handle_frame(self, frame: AssembledFrame) -> None:
        self.stats.frames_received += 1
        stream = self._streams.setdefault(frame.ssrc, _Stream())
        if frame.after_loss:
            stream.need_keyframe = True
        try:
            header, metadata, body = split_frame(frame.payload)
        except MalformedFrameError:
            self.stats.malformed_frames += 1
            return
        if header.unprotected:
            if not self._allow_unprotected:
                self.stats.unprotected_refused += 1
                return
            plaintext = body
        else:
            try:
                plaintext = self._opener.open(metadata, body)  # RFC 9605 §4.4.4; AAD covers the header
            except SFrameError as exc:
                self.stats.decrypt_failures += 1
                reason = getattr(exc, "reason", type(exc).__name__)
                by = self.stats.decrypt_failures_by_reason
                by[reason] = by.get(reason, 0) + 1
                stream.need_keyframe = True  # the decoder missed this frame
                return
            self.stats.frames_decrypted += 1
        if header.keyframe != frame.keyframe:
            self.stats.malformed_frames += 1  # the clear RTP bit lies about the authenticated one
            return
        if header.codec == "opus":
            # Audio frames stand alone (no reference to earlier frames): no keyframe wait.
            self.stats.audio_frames += 1
            if self._on_audio is not None:
                self._on_audio(frame.ssrc, frame.timestamp, plaintext)
            return
        if stream.need_keyframe and not header.keyframe:
            self.stats.skipped_until_keyframe += 1
            if self._on_need_keyframe is not None:
                self._on_need_keyframe(frame.ssrc)
            return
        self._decode(frame.ssrc, stream, header.codec, plaintext)

    # --- decoding --------------------------------------------------------------------------------

    def _decode(self, ssrc: int, stream: _Stream, codec: str, data: bytes) -> None:
        from hal.codecs import open_decoder  # PyAV loads only when pictures arrive

        if stream.decoder is None or stream.codec != codec:
            try:
                stream.decoder = open_decoder(codec)
            except HalError as exc:
                self.stats.decode_errors += 1
                _log.warning("media_decoder_unavailable", codec=codec, error=str(exc))
                return
            stream.codec = codec
        try:
            pictures = stream.decoder.decode(data)
        except HalError:
            self.stats.decode_errors += 1
            stream.need_keyframe = True
            return
        stream.need_keyframe = False
        now_ns = time.time_ns()
        for picture in pictures:
            self._verify(ssrc, stream, picture, now_ns)

    def _verify(self, ssrc: int, stream: _Stream, picture: Any, now_ns: int) -> None:
        stats = self.stats
        stats.frames_decoded += 1
        mono = time.monotonic()
        if stats.first_decoded is None:
            stats.first_decoded = mono
        stats.last_decoded = mono
        stats.picture_size = (picture.width, picture.height)
        stamp = picture.stamp
        if stamp is None:
            stats.stamps_missing += 1
        else:
            stats.stamps_read += 1
            if stream.last_seq is None or stream.last_ns is None:
                stream.last_seq, stream.last_ns = stamp.seq, stamp.capture_ns
            elif stamp.capture_ns <= stream.last_ns or stamp.seq == stream.last_seq:
                stats.stamps_out_of_order += 1  # captured before (or as) a picture already shown
            else:
                if stamp.seq < stream.last_seq:
                    stats.stamp_restarts += 1  # the camera was reopened (e.g. replugged): seq from 0
                else:
                    stats.stamps_skipped += stamp.seq - stream.last_seq - 1
                stream.last_seq, stream.last_ns = stamp.seq, stamp.capture_ns
            if len(stats.latencies_ms) < _MAX_LATENCIES:
                stats.latencies_ms.append((now_ns - stamp.capture_ns) / 1e6)
        if self._on_picture is not None:
            self._on_picture(ssrc, picture)
        if self._snapshot_dir is not None:
            last = self._last_snapshot.get(ssrc)
            if last is None or mono - last >= self._snapshot_interval_s:
                self._last_snapshot[ssrc] = mono
                self._save_snapshot(ssrc, picture)

    def _save_snapshot(self, ssrc: int, picture: Any) -> None:
        from hal.images import save_png

        assert self._snapshot_dir is not None
        seq = picture.stamp.seq if picture.stamp is not None else self.stats.frames_decoded
        path = self._snapshot_dir / f"snapshot-{ssrc:08x}-{seq:08d}.png"
        try:
            self._snapshot_dir.mkdir(parents=True, exist_ok=True)
            save_png(picture.image, path)
        except (HalError, OSError) as exc:
            _log.warning("media_snapshot_failed", error=str(exc))
            return
        self.stats.snapshots += 1

    # --- figures ---------------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """The figures ``roomagent receive --json`` prints (the first eight keys are the contract)."""
        s = self.stats
        rtp = self.depacketizer.stats
        fps = 0.0
        if s.first_decoded is not None and s.last_decoded is not None and s.frames_decoded > 1:
            span = s.last_decoded - s.first_decoded
            fps = (s.frames_decoded - 1) / span if span > 0 else 0.0
        p50 = percentile(s.latencies_ms, 0.5)
        p99 = percentile(s.latencies_ms, 0.99)
        return {
            "frames_received": s.frames_received,
            "frames_decoded": s.frames_decoded,
            "stamps_missing": s.stamps_missing,
            "stamps_out_of_order": s.stamps_out_of_order,
            "decrypt_failures": s.decrypt_failures,
            "fps": round(fps, 2),
            "latency_ms_p50": None if p50 is None else round(p50, 2),
            "latency_ms_p99": None if p99 is None else round(p99, 2),
            "frames_decrypted": s.frames_decrypted,
            "decrypt_failures_by_reason": dict(s.decrypt_failures_by_reason),
            "stamps_read": s.stamps_read,
            "stamps_skipped": s.stamps_skipped,
            "stamp_restarts": s.stamp_restarts,
            "skipped_until_keyframe": s.skipped_until_keyframe,
            "malformed_frames": s.malformed_frames,
            "unprotected_refused": s.unprotected_refused,
            "decode_errors": s.decode_errors,
            "audio_frames": s.audio_frames,
            "snapshots": s.snapshots,
            "picture_size": None if s.picture_size is None else list(s.picture_size),
            "last_stamp_seq": max(
                (st.last_seq for st in self._streams.values() if st.last_seq is not None), default=None
            ),
            "streams": len(self._streams),
            "packets_received": rtp.packets,
            "packets_lost": rtp.lost,
            "packets_reordered": rtp.reordered,
            "packets_duplicate": rtp.duplicates,
            "packets_malformed": rtp.malformed,
            "frames_incomplete": rtp.frames_incomplete,
        }

    # --- socket loop -----------------------------------------------------------------------------

    def serve(self, sock: socket.socket, stop: threading.Event) -> None:
        """Receive on ``sock`` until ``stop`` is set (blocking: run it in a thread)."""
        sock.settimeout(0.05)
        while not stop.is_set():
            try:
                datagram = sock.recv(_MAX_DATAGRAM)
            except TimeoutError:
                self.poll()
                continue
            except OSError as exc:
                _log.warning("media_receive_failed", error=str(exc))
                continue
            self.handle_datagram(datagram)


def bind_udp(host: str, port: int) -> socket.socket:
    """A UDP socket bound to HOST:PORT with a large receive buffer (bursts of keyframe packets)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((host, port))
    return sock
