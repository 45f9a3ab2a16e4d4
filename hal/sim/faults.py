"""Fault switches testers script against simulated devices (thread-safe: callable from any thread)."""

from __future__ import annotations

__all__ = ["SimCameraFaults", "SimEncoderFaults"]

import threading
import time
from collections.abc import Callable

import structlog

from hal.errors import EncoderError

log = structlog.get_logger()


class SimCameraFaults:
    """Faults of one simulated camera; they outlive any one opening of it (they belong to the device).

    - ``unplug()`` / ``replug()``: the camera vanishes (``frames()`` raises ``DeviceGoneError``, the
      inventory emits ``removed``) and comes back (``added``; it can be reopened).
    - ``stall(ms)``: no frames for ``ms`` milliseconds, then capture resumes (no sequence gap).
    - ``drop_every(n)``: every n-th captured frame is lost (a sequence gap); 0 turns it off.
    - ``corrupt_next()``: the next frame's picture is garbage (its stamp does not read back).
    """

    def __init__(self, camera_id: str, on_plug_change: Callable[[bool], None]) -> None:
        self._camera_id = camera_id
        self._on_plug_change = on_plug_change
        self._lock = threading.Lock()
        self._plugged = True
        self._stall_until = 0.0
        self._drop_every = 0
        self._corrupt_next = False

    # --- switches -------------------------------------------------------------------------------
    def unplug(self) -> None:
        with self._lock:
            changed, self._plugged = self._plugged, False
        if changed:
            log.info("sim_fault", camera=self._camera_id, fault="unplug")
            self._on_plug_change(False)

    def replug(self) -> None:
        with self._lock:
            changed, self._plugged = not self._plugged, True
        if changed:
            log.info("sim_fault", camera=self._camera_id, fault="replug")
            self._on_plug_change(True)

    def stall(self, ms: float) -> None:
        if ms < 0:
            raise ValueError("stall ms must be >= 0")
        with self._lock:
            self._stall_until = max(self._stall_until, time.monotonic() + ms / 1000)
        log.info("sim_fault", camera=self._camera_id, fault="stall", ms=ms)

    def drop_every(self, n: int) -> None:
        if n < 0 or n == 1:
            raise ValueError("drop_every n must be 0 (off) or >= 2")
        with self._lock:
            self._drop_every = n
        log.info("sim_fault", camera=self._camera_id, fault="drop_every", n=n)

    def corrupt_next(self) -> None:
        with self._lock:
            self._corrupt_next = True
        log.info("sim_fault", camera=self._camera_id, fault="corrupt_next")

    def clear(self) -> None:
        """Turn every switch off and plug the camera back in."""
        with self._lock:
            self._stall_until = 0.0
            self._drop_every = 0
            self._corrupt_next = False
        self.replug()

    # --- read by the camera -----------------------------------------------------------------------
    @property
    def plugged(self) -> bool:
        return self._plugged

    @property
    def stall_until(self) -> float:
        """``time.monotonic()`` until which capture is stalled."""
        return self._stall_until

    def dropped(self, seq: int) -> bool:
        n = self._drop_every
        return n > 0 and (seq + 1) % n == 0

    def take_corrupt(self) -> bool:
        with self._lock:
            corrupt, self._corrupt_next = self._corrupt_next, False
            return corrupt


class SimEncoderFaults:
    """Faults for every encoder a factory opens: ``slow(ms)``, ``fail()`` (next encode), ``clear()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slow_s = 0.0
        self._fail_next = False

    def slow(self, ms: float) -> None:
        if ms < 0:
            raise ValueError("slow ms must be >= 0")
        with self._lock:
            self._slow_s = ms / 1000
        log.info("sim_fault", target="encoder", fault="slow", ms=ms)

    def fail(self) -> None:
        with self._lock:
            self._fail_next = True
        log.info("sim_fault", target="encoder", fault="fail")

    def clear(self) -> None:
        with self._lock:
            self._slow_s = 0.0
            self._fail_next = False

    def before_encode(self, encoder: str) -> None:
        """Called by the encoder before each frame (in the encoding thread): sleeps, or raises.

        Raises:
            EncoderError: ``fail()`` was switched on (once).
        """
        with self._lock:
            delay, fail = self._slow_s, self._fail_next
            self._fail_next = False
        if delay:
            time.sleep(delay)
        if fail:
            raise EncoderError(f"{encoder}: injected encoder failure")
