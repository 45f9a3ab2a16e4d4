"""Benchmarks: ``roomagent bench NAME --json`` prints a JSON list of results.

Each result is ``{"metric", "value", "unit", "baseline", "ratio"}``; ``baseline`` is a figure measured
in the same run (e.g. the raw AEAD call beside SFrame), ``ratio`` = value / baseline. Machines are
noisy, so goals are stated as ratios. A benchmark module exposes ``run(args: list[str]) -> list[Result]``
and is registered in ``BENCHMARKS`` by its import path (imported only when run).
"""

from __future__ import annotations

__all__ = ["BENCHMARKS", "Result", "result"]

from typing import Any, TypedDict


class Result(TypedDict):
    metric: str
    value: float
    unit: str
    baseline: float | None
    ratio: float | None


def result(metric: str, value: float, unit: str, baseline: float | None = None, **extra: Any) -> Result:
    """Build one result, computing ``ratio`` when a same-run baseline is given."""
    ratio = (value / baseline) if baseline not in (None, 0) else None
    out: dict[str, Any] = {
        "metric": metric,
        "value": round(value, 6),
        "unit": unit,
        "baseline": None if baseline is None else round(baseline, 6),
        "ratio": None if ratio is None else round(ratio, 4),
    }
    out.update(extra)
    return out  # type: ignore[return-value]


# name -> "module:function"; each issue adds its own line.
BENCHMARKS: dict[str, str] = {
    "startup": "agent.bench.startup:run",
    "sframe": "agent.e2ee.bench:run",
    "hal": "hal.bench:run",
    "control": "agent.control.bench:run",
    "pipeline": "agent.media.bench:run",
    "meeting": "agent.media.meeting_bench:run",
    "soak": "agent.bench.soak:run",
    "webrtc": "agent.webrtc.bench:run",
}
