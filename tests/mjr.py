"""Reads Janus recordings (``.mjr``, MJR00002) and checks they hold only SFrame ciphertext.

File: ``MJR00002``, u16 length + JSON info (``t`` v/a, ``c`` codec), then packets ``MEET``, u32 time
offset, u16 length, one RTP packet (RFC 3550). Video frames are reassembled from VP8 payloads (RFC
7741 payload descriptor stripped) by RTP timestamp.
"""

from __future__ import annotations

import json
import struct
from collections import defaultdict
from pathlib import Path
from typing import Any

import av

from agent.e2ee.header import decode_header
from agent.webrtc.frames import VP8, clear_bytes
from hal.stamps import read_stamp


def read_mjr(path: Path) -> tuple[dict[str, Any], list[bytes]]:
    data = path.read_bytes()
    if data[:8] != b"MJR00002":
        raise ValueError(f"{path}: not an MJR00002 file")
    (n,) = struct.unpack(">H", data[8:10])
    info = json.loads(data[10 : 10 + n])
    pos, packets = 10 + n, []
    while pos + 10 <= len(data) and data[pos : pos + 4] == b"MEET":
        (length,) = struct.unpack(">H", data[pos + 8 : pos + 10])
        packets.append(data[pos + 10 : pos + 10 + length])
        pos += 10 + length
    return info, packets


def rtp_payload(pkt: bytes) -> tuple[int, int, bytes]:
    """(sequence number, timestamp, payload) of an RTP packet."""
    cc = pkt[0] & 0x0F
    seq, ts = struct.unpack(">HI", pkt[2:8])
    pos = 12 + 4 * cc
    if pkt[0] & 0x10:
        (words,) = struct.unpack(">H", pkt[pos + 2 : pos + 4])
        pos += 4 + 4 * words
    end = len(pkt) - (pkt[-1] if pkt[0] & 0x20 else 0)
    return seq, ts, pkt[pos:end]


def vp8_strip(payload: bytes) -> bytes:
    pos = 1
    if payload[0] & 0x80:
        x = payload[1]
        pos = 2
        if x & 0x80:
            pos += 2 if payload[pos] & 0x80 else 1
        if x & 0x40:
            pos += 1
        if x & 0x30:
            pos += 1
    return payload[pos:]


def vp8_frames(packets: list[bytes]) -> list[bytes]:
    by_ts: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
    order: list[int] = []
    for pkt in packets:
        seq, ts, payload = rtp_payload(pkt)
        if not payload:
            continue
        if ts not in by_ts:
            order.append(ts)
        by_ts[ts].append((seq, vp8_strip(payload)))
    return [b"".join(p for _, p in sorted(by_ts[ts])) for ts in order]


def scan_recording(rec_dir: Path) -> dict[str, Any]:
    """Counts over every recording in ``rec_dir``: frames, frames that carry an SFrame header after
    their clear bytes, and *plaintext* frames (libvpx decodes them to a picture with a readable stamp,
    or a frame has no SFrame header where the rule says one must be)."""
    out: dict[str, Any] = {
        "files": 0,
        "video_frames": 0,
        "audio_frames": 0,
        "sframe_frames": 0,
        "plaintext_frames": 0,
        "stamps_readable": 0,
        "kids": [],
    }
    kids: set[int] = set()
    for path in sorted(rec_dir.glob("*.mjr")):
        info, packets = read_mjr(path)
        out["files"] += 1
        if info.get("t") == "v":
            frames = vp8_frames(packets)
            decoder = av.CodecContext.create("libvpx", "r")
            for frame in frames:
                out["video_frames"] += 1
                try:
                    n = clear_bytes(VP8, frame)
                    kid, _ctr, _len = decode_header(frame[n:])
                    kids.add(kid)
                    out["sframe_frames"] += 1
                except Exception:
                    out["plaintext_frames"] += 1
                try:
                    pictures = decoder.decode(av.Packet(frame))
                except av.FFmpegError:
                    continue
                for picture in pictures:
                    if read_stamp(picture) is not None:
                        out["stamps_readable"] += 1
                        out["plaintext_frames"] += 1
        else:
            for pkt in packets:
                _seq, _ts, payload = rtp_payload(pkt)
                if not payload:
                    continue
                out["audio_frames"] += 1
                try:
                    kid, _ctr, _len = decode_header(payload)
                    kids.add(kid)
                    out["sframe_frames"] += 1
                except Exception:
                    out["plaintext_frames"] += 1
    out["kids"] = sorted(kids)
    return out
