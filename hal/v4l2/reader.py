"""A capture thread feeding a bounded drop-oldest queue.

Demuxing a V4L2 device blocks, so one thread per opened camera reads frames as the driver delivers
them. When the consumer is slower, the oldest waiting frame is dropped (and counted) rather than the
driver's queue filling with ever older pictures: a conference wants the newest frame, not a backlog.
Errors end the thread and are raised, translated, by the next ``get``.
"""

from __future__ import annotations

__all__ = ["FrameReader"]

import asyncio
import collections
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import av.error

from hal.errors import DeviceGoneError, DeviceIOError, HalError
from hal.v4l2.controls import translate_oserror


class FrameReader:
    """Reads ``source`` (an iterable of pictures) in a thread into a queue of at most ``depth``."""

    def __init__(
        self,
        source: Iterable[Any],
        device_id: str,
        *,
        depth: int = 2,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        if depth < 1:
            raise ValueError("depth must be >= 1")
        self._source = source
        self._device = device_id
        self._clock = clock
        self._queue: collections.deque[tuple[Any, int]] = collections.deque(maxlen=depth)
        self._lock = threading.Lock()
        self._error: HalError | None = None
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self.dropped = 0

    def start(self) -> None:
        """Start reading (call inside the event loop that will ``get``)."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"hal.v4l2.reader[{self._device}]", daemon=True
        )
        self._thread.start()

    def _notify(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    def _run(self) -> None:
        error: HalError
        try:
            for picture in self._source:
                if self._stop.is_set():
                    break
                with self._lock:
                    if len(self._queue) == self._queue.maxlen:
                        self.dropped += 1  # the deque drops the oldest on append
                    self._queue.append((picture, self._clock()))
                self._notify()
            reason = "camera closed" if self._stop.is_set() else "capture stream ended"
            error = DeviceGoneError(reason, device=self._device)
        except av.error.FFmpegError as exc:
            code = getattr(exc, "errno", None)
            if isinstance(code, int):
                error = translate_oserror(OSError(code, str(exc)), self._device, "capture")
            else:
                error = DeviceIOError(f"capture: {exc}", device=self._device)
        except OSError as exc:
            error = translate_oserror(exc, self._device, "capture")
        except HalError as exc:
            error = exc
        with self._lock:
            self._error = error
        self._notify()

    async def get(self) -> tuple[Any, int]:
        """The oldest queued (picture, capture time ns); raises the thread's error once drained."""
        assert self._wake is not None, "start() first"
        while True:
            with self._lock:
                if self._queue:
                    return self._queue.popleft()
                if self._error is not None:
                    raise self._error
                self._wake.clear()
            await self._wake.wait()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float) -> bool:
        """Ask the thread to end and wait up to ``timeout`` s; False if it is stuck in the driver."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()
