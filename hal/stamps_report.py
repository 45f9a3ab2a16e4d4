"""Analyse the stamps of a received or recorded stream: frames seen, missing, out of order, latency."""

from __future__ import annotations

__all__ = ["StampReport", "analyse", "read_file_stamps"]

import itertools
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hal.stamps import Stamp, read_stamp


@dataclass(frozen=True, slots=True)
class StampReport:
    frames: int  # decoded pictures
    stamped: int  # pictures whose stamp read back
    unreadable: int  # pictures without a readable stamp (shutter, corruption, heavy loss)
    first_seq: int | None  # of the first stamp read
    last_seq: int | None  # of the last stamp read
    missing: int  # sequence numbers between first and last never seen
    out_of_order: int  # stamps with a lower seq than one seen before
    duplicates: int
    restarts: int  # the camera was reopened (sequence numbers started again)
    interval_ms_mean: float | None  # between consecutive capture times
    interval_ms_max: float | None
    latency_ms_mean: float | None  # arrival - capture, when arrival times are known
    latency_ms_max: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def analyse(items: Iterable[tuple[Stamp | None, int | None]]) -> StampReport:
    """``items``: per decoded picture, its stamp (or None) and its arrival time in ns (or None).

    A stamp with a lower ``seq`` but a later capture time than the newest seen is a camera that was
    reopened (sequence numbers restart): a new session, not reordering. Missing frames are counted
    per session.
    """
    frames = unreadable = out_of_order = duplicates = restarts = missing = 0
    seen: set[tuple[int, int]] = set()  # (session, seq)
    session = 0
    lo: int | None = None
    hi: int | None = None
    session_seen = 0
    newest_ns = -1
    first: int | None = None
    last: int | None = None
    captures: list[int] = []
    latencies: list[float] = []

    def close_session() -> int:
        return 0 if lo is None or hi is None else (hi - lo + 1) - session_seen

    for stamp, arrival_ns in items:
        frames += 1
        if stamp is None:
            unreadable += 1
            continue
        if (session, stamp.seq) in seen:
            duplicates += 1
            continue
        if hi is not None and stamp.seq < hi:
            if stamp.capture_ns > newest_ns:
                missing += close_session()
                restarts += 1
                session += 1
                lo = hi = None
                session_seen = 0
            else:
                out_of_order += 1
        seen.add((session, stamp.seq))
        session_seen += 1
        lo = stamp.seq if lo is None else min(lo, stamp.seq)
        hi = stamp.seq if hi is None else max(hi, stamp.seq)
        first = stamp.seq if first is None else first
        last = stamp.seq
        newest_ns = max(newest_ns, stamp.capture_ns)
        captures.append(stamp.capture_ns)
        if arrival_ns is not None:
            latencies.append((arrival_ns - stamp.capture_ns) / 1e6)
    missing += close_session()
    ordered = sorted(captures)
    gaps = [(b - a) / 1e6 for a, b in itertools.pairwise(ordered)]
    return StampReport(
        frames=frames,
        stamped=len(seen) + duplicates,
        unreadable=unreadable,
        first_seq=first,
        last_seq=last,
        missing=missing,
        out_of_order=out_of_order,
        duplicates=duplicates,
        restarts=restarts,
        interval_ms_mean=round(statistics.fmean(gaps), 3) if gaps else None,
        interval_ms_max=round(max(gaps), 3) if gaps else None,
        latency_ms_mean=round(statistics.fmean(latencies), 3) if latencies else None,
        latency_ms_max=round(max(latencies), 3) if latencies else None,
    )


def read_file_stamps(path: Path) -> StampReport:
    """Decode every picture of the first video stream of ``path`` and analyse its stamps.

    A file has no arrival times, so latency is not reported.

    Raises:
        av.error.FFmpegError / OSError: the file cannot be opened or decoded (callers translate).
    """
    import av

    with av.open(str(path)) as container:
        return analyse((read_stamp(frame), None) for frame in container.decode(video=0))
