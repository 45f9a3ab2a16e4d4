"""One inventory over several backends (``backend = "auto"`` with sim and v4l2 cameras configured)."""

from __future__ import annotations

__all__ = ["CompositeInventory"]

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, Self

from hal.errors import DeviceGoneError
from hal.protocols import Camera, Inventory
from hal.types import DeviceInfo, HotplugEvent


class CompositeInventory:
    """Lists the devices of every member; opens a camera through the member that has it."""

    def __init__(self, members: Sequence[Inventory]) -> None:
        self._members = list(members)

    def list_devices(self) -> list[DeviceInfo]:
        return [d for m in self._members for d in m.list_devices()]

    def open_camera(self, device_id: str) -> Camera:
        for member in self._members:
            if any(d.id == device_id for d in member.list_devices()):
                return member.open_camera(device_id)
        raise DeviceGoneError("no such camera present", device=device_id)

    def events(self) -> AsyncIterator[HotplugEvent]:
        return _MergedEvents([m.events() for m in self._members])


class _MergedEvents:
    """The events of several iterators, in arrival order."""

    def __init__(self, sources: list[AsyncIterator[HotplugEvent]]) -> None:
        self._sources = sources
        self._pending: dict[asyncio.Task[HotplugEvent], AsyncIterator[HotplugEvent]] = {}

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> HotplugEvent:
        for source in self._sources:
            if source not in self._pending.values():
                task: asyncio.Task[HotplugEvent] = asyncio.create_task(
                    _next(source), name="hal.composite.next_event"
                )
                self._pending[task] = source
        done, _ = await asyncio.wait(self._pending, return_when=asyncio.FIRST_COMPLETED)
        task = next(iter(done))
        del self._pending[task]
        return task.result()

    async def aclose(self) -> None:
        for task in self._pending:
            task.cancel()
        for task in self._pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._pending.clear()
        for source in self._sources:
            closer: Any = getattr(source, "aclose", None)
            if closer is not None:
                await closer()


async def _next(source: AsyncIterator[HotplugEvent]) -> HotplugEvent:
    return await anext(source)
