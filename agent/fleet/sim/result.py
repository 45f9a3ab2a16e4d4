"""What one fleet simulation measured, and the percentile it reports."""

from __future__ import annotations

__all__ = ["FleetSimError", "FleetSimResult", "percentile"]

import math
from dataclasses import dataclass, field
from typing import Any

from agent.errors import AgentError


class FleetSimError(AgentError):
    """The simulation could not run (no broker, control plane not built, too few file descriptors)."""


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class FleetSimResult:
    """What one push measured. Times are from the publish of the group policy."""

    rooms: int
    acked: int
    ack_ms: tuple[float, ...]
    all_acked_s: float | None
    connect_s: float
    rejected: dict[str, int]
    broker: str
    version: int
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "rooms": self.rooms,
            "acked": self.acked,
            "p50_ms": round(percentile(list(self.ack_ms), 50), 1) if self.ack_ms else None,
            "p99_ms": round(percentile(list(self.ack_ms), 99), 1) if self.ack_ms else None,
            "max_ms": round(max(self.ack_ms), 1) if self.ack_ms else None,
            "all_acked_s": None if self.all_acked_s is None else round(self.all_acked_s, 3),
            "connect_s": round(self.connect_s, 3),
            "rejected": self.rejected,
            "policy_version": self.version,
            "broker": self.broker,
            **self.extra,
        }
