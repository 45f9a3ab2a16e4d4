"""RTP (RFC 3550) carrying SFrame-protected frames: a pure packetizer and a reassembler.

Generic frame packetization (the format is described in ``docs/rtp.md``)::

    RTP fixed header (12 bytes, RFC 3550 §5.1) | descriptor (1 byte) | fragment of the frame

    descriptor:  S E K r r r r r     S = first fragment of a frame, E = last fragment,
                                     K = the frame is a keyframe, r = reserved, must be 0

Every fragment of one frame carries the same RTP timestamp (90 kHz); the marker bit is set on the
last fragment (== E). Sequence numbers are 16 bit and wrap; the reassembler extends them (RFC 3550
Appendix A.1) so wrap-around is invisible. Nothing here touches a socket or a clock: callers pass
datagrams and ``now`` in, and get frames and counters out.

The reassembler never raises on input: malformed datagrams are counted (``parse_packet`` raises
``MalformedPacketError`` for callers who want the reason), memory is bounded by a packet window and a
byte cap, and incomplete frames are given up after ``timeout_s`` or once the window has moved past
them.
"""

from __future__ import annotations

__all__ = [
    "DESCRIPTOR_E",
    "DESCRIPTOR_K",
    "DESCRIPTOR_S",
    "PAYLOAD_TYPE",
    "RTP_CLOCK_HZ",
    "AssembledFrame",
    "Depacketizer",
    "Packetizer",
    "Reassembler",
    "ReassemblyStats",
    "RtpPacket",
    "build_packet",
    "parse_packet",
    "ticks_from_ns",
]

import secrets
import struct
from dataclasses import dataclass, field

from agent.media.errors import MalformedPacketError

RTP_VERSION = 2
RTP_CLOCK_HZ = 90_000  # video clock rate (RFC 3551 §5)
PAYLOAD_TYPE = 96  # first dynamic payload type (RFC 3551 §6)
_HEADER = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, sequence number, timestamp, SSRC
HEADER_LEN = _HEADER.size  # 12
DESCRIPTOR_S = 0x80
DESCRIPTOR_E = 0x40
DESCRIPTOR_K = 0x20
_DESCRIPTOR_RESERVED = 0x1F
_SEQ_MOD = 1 << 16
_TS_MOD = 1 << 32
_MIN_MTU = HEADER_LEN + 1 + 16


def ticks_from_ns(ns: int) -> int:
    """A wall-clock time in ns as 90 kHz RTP ticks (not yet offset or wrapped)."""
    return ns * 9 // 100_000


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One parsed datagram of our format."""

    ssrc: int
    seq: int
    timestamp: int
    marker: bool
    payload_type: int
    start: bool
    end: bool
    keyframe: bool
    fragment: bytes = field(repr=False)


def build_packet(
    *,
    ssrc: int,
    seq: int,
    timestamp: int,
    start: bool,
    end: bool,
    keyframe: bool,
    fragment: bytes,
    payload_type: int = PAYLOAD_TYPE,
) -> bytes:
    """Serialise one packet (RFC 3550 §5.1 fixed header, no CSRCs, no extension, no padding)."""
    byte0 = RTP_VERSION << 6
    byte1 = (0x80 if end else 0) | (payload_type & 0x7F)  # marker bit = last fragment of the frame
    descriptor = (
        (DESCRIPTOR_S if start else 0) | (DESCRIPTOR_E if end else 0) | (DESCRIPTOR_K if keyframe else 0)
    )
    return (
        _HEADER.pack(byte0, byte1, seq % _SEQ_MOD, timestamp % _TS_MOD, ssrc & 0xFFFFFFFF)
        + bytes((descriptor,))
        + fragment
    )


def parse_packet(data: bytes, *, payload_type: int | None = PAYLOAD_TYPE) -> RtpPacket:
    """Parse one datagram.

    Raises:
        MalformedPacketError: the datagram is not a packet of our format (reason attribute says why).
    """
    size = len(data)
    if size < HEADER_LEN + 1:
        raise MalformedPacketError(f"too short ({size} bytes)")
    byte0, byte1, seq, timestamp, ssrc = _HEADER.unpack_from(data)
    # RFC 3550 §5.1: version must be 2.
    if byte0 >> 6 != RTP_VERSION:
        raise MalformedPacketError(f"RTP version {byte0 >> 6}, expected 2")
    end_of_payload = size
    if byte0 & 0x20:  # §5.1 P: the last octet counts the padding octets, itself included
        pad = data[-1]
        if pad == 0 or pad > size - HEADER_LEN:
            raise MalformedPacketError("bad padding length")
        end_of_payload -= pad
    offset = HEADER_LEN + 4 * (byte0 & 0x0F)  # §5.1 CC: CSRC identifiers follow the fixed header
    if byte0 & 0x10:  # §5.3.1 X: 16-bit profile id, 16-bit length in 32-bit words, then the words
        if offset + 4 > end_of_payload:
            raise MalformedPacketError("truncated header extension")
        (words,) = struct.unpack_from("!H", data, offset + 2)
        offset += 4 + 4 * words
    if offset + 1 > end_of_payload:
        raise MalformedPacketError("no payload descriptor")
    pt = byte1 & 0x7F
    if payload_type is not None and pt != payload_type:
        raise MalformedPacketError(f"payload type {pt}, expected {payload_type}")
    descriptor = data[offset]
    if descriptor & _DESCRIPTOR_RESERVED:
        raise MalformedPacketError("reserved descriptor bits set")
    marker = bool(byte1 & 0x80)
    end = bool(descriptor & DESCRIPTOR_E)
    if marker != end:
        raise MalformedPacketError("marker bit disagrees with the end-of-frame bit")
    fragment = bytes(data[offset + 1 : end_of_payload])
    if not fragment:
        raise MalformedPacketError("empty fragment")
    return RtpPacket(
        ssrc=ssrc,
        seq=seq,
        timestamp=timestamp,
        marker=marker,
        payload_type=pt,
        start=bool(descriptor & DESCRIPTOR_S),
        end=end,
        keyframe=bool(descriptor & DESCRIPTOR_K),
        fragment=fragment,
    )


class Packetizer:
    """Cuts frames into MTU-sized RTP packets for one SSRC (one sender camera).

    The initial sequence number and the timestamp offset are random (RFC 3550 §5.1), so a
    restarted sender does not collide with its earlier packets at a receiver.
    """

    def __init__(
        self,
        ssrc: int,
        *,
        mtu: int = 1200,
        payload_type: int = PAYLOAD_TYPE,
        initial_seq: int | None = None,
        timestamp_offset: int | None = None,
    ) -> None:
        if not 0 <= ssrc <= 0xFFFFFFFF:
            raise ValueError(f"ssrc must be a 32-bit unsigned integer, got {ssrc}")
        if mtu < _MIN_MTU:
            raise ValueError(f"mtu must be at least {_MIN_MTU} bytes, got {mtu}")
        if not 0 <= payload_type <= 127:
            raise ValueError(f"payload_type must be 0..127, got {payload_type}")
        self.ssrc = ssrc
        self.mtu = mtu
        self.payload_type = payload_type
        self._seq = secrets.randbelow(_SEQ_MOD) if initial_seq is None else initial_seq % _SEQ_MOD
        self._ts_offset = secrets.randbelow(_TS_MOD) if timestamp_offset is None else timestamp_offset
        self.packets_sent = 0
        self.frames_sent = 0

    @property
    def max_fragment(self) -> int:
        return self.mtu - HEADER_LEN - 1

    def packetize(self, frame: bytes, ticks: int, *, keyframe: bool) -> list[bytes]:
        """The datagrams for one frame; ``ticks`` is its 90 kHz time (e.g. ``ticks_from_ns``)."""
        if not frame:
            raise ValueError("cannot packetize an empty frame")
        timestamp = (ticks + self._ts_offset) % _TS_MOD
        step = self.max_fragment
        out = []
        for offset in range(0, len(frame), step):
            out.append(
                build_packet(
                    ssrc=self.ssrc,
                    seq=self._seq,
                    timestamp=timestamp,
                    start=offset == 0,
                    end=offset + step >= len(frame),
                    keyframe=keyframe,
                    fragment=frame[offset : offset + step],
                    payload_type=self.payload_type,
                )
            )
            self._seq = (self._seq + 1) % _SEQ_MOD
        self.packets_sent += len(out)
        self.frames_sent += 1
        return out


@dataclass(frozen=True, slots=True)
class AssembledFrame:
    """A frame put back together from its fragments."""

    ssrc: int
    timestamp: int
    keyframe: bool
    payload: bytes = field(repr=False)
    first_seq: int  # extended sequence number of its first packet
    packets: int
    after_loss: bool  # packets were lost between the previous frame and this one


@dataclass(slots=True)
class ReassemblyStats:
    """Counters; ``lost`` counts sequence numbers never received, ``reordered`` late arrivals."""

    packets: int = 0
    malformed: int = 0
    duplicates: int = 0
    late: int = 0
    reordered: int = 0
    lost: int = 0
    frames: int = 0
    frames_incomplete: int = 0
    resyncs: int = 0
    streams_evicted: int = 0

    def add(self, other: ReassemblyStats) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


class Reassembler:
    """Reassembles the frames of one SSRC, in sequence order, within a reordering window.

    Args:
        window: packets a gap may lag behind the newest packet before it is declared lost.
        timeout_s: how long a gap may stay open before it is declared lost.
        max_bytes: cap on buffered fragment bytes; above it the oldest gap is given up.
    """

    def __init__(
        self, ssrc: int, *, window: int = 1024, timeout_s: float = 0.3, max_bytes: int = 32 << 20
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1 packet")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.ssrc = ssrc
        self.window = window
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.stats = ReassemblyStats()
        self._pkts: dict[int, RtpPacket] = {}
        self._arrival: dict[int, float] = {}
        self._bytes = 0
        self._highest: int | None = None
        self._next: int | None = None
        self._scan_pos = 0  # [_next, _scan_pos) known present and mid-frame: no need to rescan
        self._loss_pending = False

    @property
    def buffered_packets(self) -> int:
        return len(self._pkts)

    def _extend(self, seq: int) -> int:
        # RFC 3550 Appendix A.1: pick the extended number closest to the highest seen so far.
        if self._highest is None:
            return _SEQ_MOD + seq
        delta = (seq - self._highest) % _SEQ_MOD
        if delta >= _SEQ_MOD // 2:
            delta -= _SEQ_MOD
        return self._highest + delta

    def _reset(self, ext: int) -> None:
        self._pkts.clear()
        self._arrival.clear()
        self._bytes = 0
        self._highest = ext
        self._next = ext
        self._loss_pending = True

    def push(self, pkt: RtpPacket, now: float) -> list[AssembledFrame]:
        """Add one packet of this SSRC; returns the frames it completed (in order)."""
        self.stats.packets += 1
        ext = self._extend(pkt.seq)
        if self._highest is None or self._next is None:
            self._highest = self._next = ext
        elif ext - self._highest > 4 * self.window or self._next - ext > 4 * self.window:
            # A jump far outside the window: the sender restarted its sequence. Start over.
            self.stats.resyncs += 1
            self._reset(ext)
        if ext < self._next:
            self.stats.late += 1
            return self._drain(now)
        if ext in self._pkts:
            self.stats.duplicates += 1
            return self._drain(now)
        if ext < self._highest:
            self.stats.reordered += 1
        self._highest = max(self._highest, ext)
        self._pkts[ext] = pkt
        self._arrival[ext] = now
        self._bytes += len(pkt.fragment)
        return self._drain(now)

    def poll(self, now: float) -> list[AssembledFrame]:
        """Give up gaps that timed out; returns frames that this unblocked."""
        return self._drain(now)

    def _discard(self, start: int, stop: int) -> None:
        """Forget [start, stop): count never-received numbers as lost, drop partial fragments."""
        partial = False
        for ext in range(start, stop):
            pkt = self._pkts.pop(ext, None)
            if pkt is None:
                self.stats.lost += 1
            else:
                partial = True
                self._bytes -= len(pkt.fragment)
                del self._arrival[ext]
        if partial:
            self.stats.frames_incomplete += 1
        self._loss_pending = True

    def _drain(self, now: float) -> list[AssembledFrame]:
        out: list[AssembledFrame] = []
        while self._pkts and self._next is not None and self._highest is not None:
            head = self._pkts.get(self._next)
            if head is not None and not head.start:
                # A fragment whose frame start is gone: it can never complete.
                nxt = self._next_start_after(self._next)
                self._discard(self._next, nxt)
                self._next = nxt
                continue
            gap = self._next
            if head is not None:
                ext = max(self._next, self._scan_pos)
                broken = False
                while True:
                    pkt = self._pkts.get(ext)
                    if pkt is None:
                        break
                    if pkt.timestamp != head.timestamp or (ext != self._next and pkt.start):
                        broken = True  # the previous frame's end was lost
                        break
                    if pkt.end:
                        break
                    ext += 1
                if broken:
                    self._discard(self._next, ext)
                    self._next = ext
                    continue
                pkt = self._pkts.get(ext)
                if pkt is not None and pkt.end:
                    out.append(self._emit(self._next, ext))
                    self._next = ext + 1
                    continue
                gap = self._scan_pos = ext
            # Waiting for ``gap``. Give it up once the window moved past it, it is too old, or
            # memory is full (bounded memory beats completeness for live media).
            first_arrival = self._arrival.get(self._next)
            oldest = first_arrival if first_arrival is not None else min(self._arrival.values())
            if (
                self._highest - gap < self.window
                and self._highest - self._next < 4 * self.window  # one frame may not hog memory
                and now - oldest < self.timeout_s
                and self._bytes <= self.max_bytes
            ):
                break
            nxt = self._next_start_after(gap)
            self._discard(self._next, nxt)
            self._next = nxt
        return out

    def _next_start_after(self, ext: int) -> int:
        starts = [e for e, p in self._pkts.items() if e > ext and p.start]
        if starts:
            return min(starts)
        assert self._highest is not None
        return self._highest + 1

    def _emit(self, first: int, last: int) -> AssembledFrame:
        parts = []
        for ext in range(first, last + 1):
            pkt = self._pkts.pop(ext)
            del self._arrival[ext]
            self._bytes -= len(pkt.fragment)
            parts.append(pkt.fragment)
        head_pkt_ts = pkt.timestamp
        frame = AssembledFrame(
            ssrc=self.ssrc,
            timestamp=head_pkt_ts,
            keyframe=pkt.keyframe,
            payload=b"".join(parts),
            first_seq=first,
            packets=last - first + 1,
            after_loss=self._loss_pending,
        )
        self._loss_pending = False
        self.stats.frames += 1
        return frame


class Depacketizer:
    """Datagrams in, frames out, for up to ``max_streams`` SSRCs. Never raises on input.

    A datagram that does not parse is counted in ``stats.malformed`` and otherwise ignored. When a new
    SSRC arrives and the table is full, the least recently active stream is evicted.
    """

    def __init__(
        self,
        *,
        max_streams: int = 16,
        payload_type: int | None = PAYLOAD_TYPE,
        window: int = 1024,
        timeout_s: float = 0.3,
        max_bytes: int = 32 << 20,
    ) -> None:
        if max_streams < 1:
            raise ValueError("max_streams must be at least 1")
        self.max_streams = max_streams
        self.payload_type = payload_type
        self._window = window
        self._timeout_s = timeout_s
        self._max_bytes = max_bytes
        self._streams: dict[int, Reassembler] = {}
        self._last_active: dict[int, float] = {}
        self._retired = ReassemblyStats()
        self.last_error: str | None = None

    @property
    def streams(self) -> dict[int, Reassembler]:
        return dict(self._streams)

    @property
    def stats(self) -> ReassemblyStats:
        """Totals over all streams, evicted ones included."""
        total = ReassemblyStats()
        total.add(self._retired)
        for stream in self._streams.values():
            total.add(stream.stats)
        return total

    def push(self, datagram: bytes, now: float) -> list[AssembledFrame]:
        try:
            pkt = parse_packet(datagram, payload_type=self.payload_type)
        except MalformedPacketError as exc:
            self._retired.malformed += 1
            self.last_error = exc.reason
            return self.poll(now)
        stream = self._streams.get(pkt.ssrc)
        if stream is None:
            if len(self._streams) >= self.max_streams:
                victim = min(self._last_active, key=self._last_active.__getitem__)
                self._retired.add(self._streams.pop(victim).stats)
                del self._last_active[victim]
                self._retired.streams_evicted += 1
            stream = Reassembler(
                pkt.ssrc, window=self._window, timeout_s=self._timeout_s, max_bytes=self._max_bytes
            )
            self._streams[pkt.ssrc] = stream
        self._last_active[pkt.ssrc] = now
        out = stream.push(pkt, now)
        for other in self._streams.values():
            if other is not stream:
                out.extend(other.poll(now))
        return out

    def poll(self, now: float) -> list[AssembledFrame]:
        out: list[AssembledFrame] = []
        for stream in self._streams.values():
            out.extend(stream.poll(now))
        return out
