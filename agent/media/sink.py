"""Where media leaves the device: RTP over UDP, or a record file. Both refuse plaintext.

Enforcement (no unencrypted media leaves the device while policy requires E2EE): a sink accepts
only :class:`agent.media.protect.ProtectedFrame`; while
``e2ee_required`` is true (the policy default) an unprotected frame, or anything else, raises
:class:`PlaintextRefusedError` and nothing is sent or written.

Record file format (``file:///PATH``)::

    file header: b"RAMF" | version u8 = 1 | 3 zero bytes
    record:      length u32 (of what follows) | ssrc u32 | rtp timestamp u32 | flags u8 (bit 0 keyframe)
                 | payload (frame header + SFrame ciphertext)

All integers big-endian. :func:`read_records` reads it back; a truncated tail (power cut mid-write)
raises :class:`RecordFileError` after the complete records.
"""

from __future__ import annotations

__all__ = [
    "FanoutSink",
    "FileRecord",
    "FileSink",
    "RtpSink",
    "Sink",
    "SinkStats",
    "open_sink",
    "read_records",
]

import os
import secrets
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import urlsplit

import structlog

from agent.media.errors import PlaintextRefusedError, RecordFileError, SinkError
from agent.media.protect import ProtectedFrame
from agent.media.rtp import Packetizer

_log = structlog.get_logger()
_FILE_MAGIC = b"RAMF\x01\x00\x00\x00"
_RECORD = struct.Struct("!IIIB")
_MAX_RECORD = 64 << 20


@dataclass(slots=True)
class SinkStats:
    frames: int = 0
    packets: int = 0
    bytes: int = 0
    refused: int = 0
    send_errors: int = 0


class Sink(Protocol):
    url: str
    e2ee_required: bool
    stats: SinkStats

    def send(self, frame: ProtectedFrame) -> None:
        """Send one frame. Raises PlaintextRefusedError (nothing sent) or SinkError."""
        ...

    def close(self) -> None: ...


def _admit(sink: Sink, frame: object) -> ProtectedFrame:
    """The enforcement point: only protected frames pass while E2EE is required."""
    if not isinstance(frame, ProtectedFrame):
        sink.stats.refused += 1
        raise PlaintextRefusedError(
            sink.url, f"refusing a {type(frame).__name__}: not an SFrame-protected frame"
        )
    if sink.e2ee_required and not frame.protected:
        sink.stats.refused += 1
        raise PlaintextRefusedError(sink.url, "E2EE is required: refusing an unprotected frame")
    return frame


class RtpSink:
    """RTP over UDP to ``rtp://HOST:PORT``, one SSRC per sink (one sink per camera).

    Sends never block: a full socket buffer drops the rest of that frame and counts a send error
    (the receiver sees the loss; the next keyframe repairs the picture).
    """

    def __init__(
        self, host: str, port: int, *, mtu: int = 1200, ssrc: int | None = None, e2ee_required: bool = True
    ) -> None:
        self.url = f"rtp://{host}:{port}"
        self.e2ee_required = e2ee_required
        self.stats = SinkStats()
        self.packetizer = Packetizer(secrets.randbits(32) if ssrc is None else ssrc, mtu=mtu)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            family, _, _, _, addr = infos[0]
            self._sock = socket.socket(family, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            self._sock.connect(addr)
        except OSError as exc:
            raise SinkError(self.url, f"cannot open: {exc.strerror or exc}") from exc

    @property
    def ssrc(self) -> int:
        return self.packetizer.ssrc

    def send(self, frame: ProtectedFrame) -> None:
        frame = _admit(self, frame)
        datagrams = self.packetizer.packetize(frame.payload, frame.ticks, keyframe=frame.keyframe)
        for datagram in datagrams:
            try:
                self._sock.send(datagram)
            except (BlockingIOError, ConnectionRefusedError):
                # Buffer full, or ICMP port unreachable from an earlier send (no receiver yet).
                self.stats.send_errors += 1
                continue
            except OSError as exc:
                self.stats.send_errors += 1
                raise SinkError(self.url, f"send failed: {exc.strerror or exc}") from exc
            self.stats.packets += 1
            self.stats.bytes += len(datagram)
        self.stats.frames += 1

    def close(self) -> None:
        self._sock.close()


@dataclass(frozen=True, slots=True)
class FileRecord:
    ssrc: int
    timestamp: int
    keyframe: bool
    payload: bytes = field(repr=False)


class FileSink:
    """Appends records to a file (see the module docstring); flushed per frame."""

    def __init__(self, path: Path, *, ssrc: int | None = None, e2ee_required: bool = True) -> None:
        self.url = f"file://{path}"
        self.path = Path(path)
        self.e2ee_required = e2ee_required
        self.stats = SinkStats()
        self.ssrc = secrets.randbits(32) if ssrc is None else ssrc
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._file: BinaryIO = os.fdopen(fd, "ab")
            if self._file.tell() == 0:
                self._file.write(_FILE_MAGIC)
                self._file.flush()
        except OSError as exc:
            raise SinkError(self.url, f"cannot open: {exc.strerror or exc}") from exc

    def send(self, frame: ProtectedFrame) -> None:
        frame = _admit(self, frame)
        body = _RECORD.pack(
            _RECORD.size - 4 + len(frame.payload), self.ssrc, frame.ticks & 0xFFFFFFFF, int(frame.keyframe)
        )
        try:
            self._file.write(body + frame.payload)
            self._file.flush()
        except OSError as exc:
            self.stats.send_errors += 1
            raise SinkError(self.url, f"write failed: {exc.strerror or exc}") from exc
        self.stats.frames += 1
        self.stats.packets += 1
        self.stats.bytes += len(body) + len(frame.payload)

    def close(self) -> None:
        self._file.close()


def read_records(path: Path) -> Iterator[FileRecord]:
    """Yield the records of a file written by :class:`FileSink`.

    Raises:
        RecordFileError: not a record file, a record too large, or a truncated tail (after yielding
            every complete record before it).
    """
    try:
        f = Path(path).open("rb")  # noqa: SIM115 - closed by the with below; open errors are translated
    except OSError as exc:
        raise RecordFileError(str(path), 0, exc.strerror or "unreadable") from exc
    with f:
        if f.read(len(_FILE_MAGIC)) != _FILE_MAGIC:
            raise RecordFileError(str(path), 0, "not a roomagent media record file")
        while True:
            offset = f.tell()
            head = f.read(_RECORD.size)
            if not head:
                return
            if len(head) < _RECORD.size:
                raise RecordFileError(str(path), offset, "truncated record header")
            length, ssrc, timestamp, flags = _RECORD.unpack(head)
            if length > _MAX_RECORD or length < _RECORD.size - 4:
                raise RecordFileError(str(path), offset, f"bad record length {length}")
            payload = f.read(length - (_RECORD.size - 4))
            if len(payload) < length - (_RECORD.size - 4):
                raise RecordFileError(str(path), offset, "truncated record")
            yield FileRecord(ssrc=ssrc, timestamp=timestamp, keyframe=bool(flags & 1), payload=payload)


def open_sink(url: str, *, mtu: int = 1200, e2ee_required: bool = True) -> RtpSink | FileSink:
    """A sink for ``[media] sink``: ``rtp://HOST:PORT`` or ``file:///PATH``.

    Raises:
        SinkError: an unknown scheme or a sink that cannot be opened.
    """
    parts = urlsplit(url)
    if parts.scheme == "rtp":
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            raise SinkError(url, "rtp sink must be rtp://HOST:PORT")
        return RtpSink(parts.hostname, port, mtu=mtu, e2ee_required=e2ee_required)
    if parts.scheme == "file" and parts.path:
        return FileSink(Path(parts.path), e2ee_required=e2ee_required)
    raise SinkError(url, "sink must be rtp://HOST:PORT or file:///PATH")


class FanoutSink:
    """One frame to several sinks (one per remote room on a mesh transport). A failing sink is
    counted and logged, and does not stop the others (one room's network should not mute the rest).
    """

    def __init__(self, sinks: list[Sink], *, e2ee_required: bool = True) -> None:
        self.sinks = list(sinks)
        self.url = "fanout:" + ",".join(s.url for s in self.sinks)
        self.e2ee_required = e2ee_required
        self.stats = SinkStats()

    def send(self, frame: ProtectedFrame) -> None:
        frame = _admit(self, frame)
        for sink in self.sinks:
            try:
                sink.send(frame)
            except SinkError as exc:
                self.stats.send_errors += 1
                _log.warning("media_fanout_send_failed", sink=sink.url, reason=exc.reason)
        self.stats.frames += 1

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
