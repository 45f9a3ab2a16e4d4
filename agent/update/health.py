"""The health check a new firmware must pass before its slot is marked good."""

from __future__ import annotations

__all__ = ["HealthProbes", "wait_healthy"]

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthProbes:
    """Each probe says whether one part of the room works (plain callables, no I/O of their own)."""

    ready: Callable[[], bool]  # the daemon told systemd READY=1
    control_link_up: Callable[[], bool]  # connected to the broker: the plane can reach the room
    cameras_present: Callable[[], bool]  # every configured camera opened
    audit_intact: Callable[[], bool]  # the audit chain verifies from the first entry to the head

    def failing(self) -> list[str]:
        names = {
            "not READY": self.ready,
            "control link down": self.control_link_up,
            "cameras missing": self.cameras_present,
            "audit chain broken": self.audit_intact,
        }
        out = []
        for name, probe in names.items():
            try:
                ok = probe()
            except Exception:  # a probe that crashes is a failing probe
                ok = False
            if not ok:
                out.append(name)
        return out


async def wait_healthy(probes: HealthProbes, timeout_s: float, poll_s: float = 1.0) -> str | None:
    """Poll the probes until all pass (``None``) or ``timeout_s`` passes (what still fails)."""
    deadline = time.monotonic() + timeout_s
    while True:
        failing = probes.failing()
        if not failing:
            return None
        if time.monotonic() >= deadline:
            return f"not healthy after {timeout_s:.0f} s: {', '.join(failing)}"
        await asyncio.sleep(poll_s)
