"""The v4l2 backend's inventory: sysfs enumeration, and hotplug from udev or by polling sysfs.

Configured cameras (``CameraSpec`` with ``device = /dev/videoN``) keep their configured id; other
capture nodes are listed under their node name (``video2``) with a default spec. Hotplug uses a pyudev
netlink monitor when it can (real ``/sys``, pyudev importable, netlink allowed) and otherwise polls
sysfs every ``poll_s`` seconds; either way a vanished node is a ``removed`` event.
"""

from __future__ import annotations

__all__ = ["V4l2Inventory"]

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Self

import structlog

from hal.errors import DeviceGoneError, UnsupportedError
from hal.types import CameraSpec, DeviceInfo, HotplugEvent
from hal.v4l2.camera import V4l2Camera
from hal.v4l2.enumerate import DEV_ROOT, SYSFS_ROOT, V4l2Node, enumerate_nodes

log = structlog.get_logger()


class V4l2Inventory:
    """Cameras of the v4l2 backend (implements ``hal.protocols.Inventory``)."""

    def __init__(
        self,
        specs: Sequence[CameraSpec],
        *,
        presets_dir: Path | None = None,
        sysfs_root: Path = SYSFS_ROOT,
        dev_root: Path = DEV_ROOT,
        poll_s: float = 0.5,
        use_udev: bool | None = None,
    ) -> None:
        for spec in specs:
            if spec.backend != "v4l2":
                raise UnsupportedError(f"camera {spec.id!r} is not a v4l2 camera", device=spec.id)
        self._specs = list(specs)
        self._presets_dir = presets_dir
        self._sysfs_root = Path(sysfs_root)
        self._dev_root = Path(dev_root)
        self._poll_s = poll_s
        self._use_udev = (self._sysfs_root == SYSFS_ROOT) if use_udev is None else use_udev

    def _spec_for(self, node: V4l2Node) -> CameraSpec:
        for spec in self._specs:
            if spec.device is not None and Path(spec.device) == node.path:
                return spec
        return CameraSpec(id=node.node, backend="v4l2", device=node.path)

    def _info(self, node: V4l2Node) -> DeviceInfo:
        spec = self._spec_for(node)
        return DeviceInfo(
            id=spec.id, kind="camera", backend="v4l2", name=node.name, path=str(node.path), bus=node.bus
        )

    def list_devices(self) -> list[DeviceInfo]:
        return [self._info(n) for n in enumerate_nodes(self._sysfs_root, self._dev_root)]

    def open_camera(self, device_id: str) -> V4l2Camera:
        for node in enumerate_nodes(self._sysfs_root, self._dev_root):
            spec = self._spec_for(node)
            if spec.id == device_id:
                return V4l2Camera(spec, self._info(node), self._presets_dir)
        raise DeviceGoneError("no such V4L2 camera present", device=device_id)

    def events(self) -> AsyncIterator[HotplugEvent]:
        """Hotplug events from now on (the current devices are the baseline)."""
        return _HotplugStream(self)


class _HotplugStream:
    """Diffs enumerations; woken by udev when available, else by a timer."""

    def __init__(self, inventory: V4l2Inventory) -> None:
        self._inv = inventory
        self._known = {d.id: d for d in inventory.list_devices()}
        self._pending: list[HotplugEvent] = []
        self._monitor: Any = None
        self._wake = asyncio.Event()
        if inventory._use_udev:
            self._monitor = _udev_monitor()
            if self._monitor is not None:
                asyncio.get_running_loop().add_reader(self._monitor.fileno(), self._on_udev)

    def _on_udev(self) -> None:
        with contextlib.suppress(Exception):  # drain whatever arrived; the diff decides what changed
            while self._monitor.poll(timeout=0) is not None:
                pass
        self._wake.set()

    def __aiter__(self) -> Self:
        return self

    def _diff(self) -> None:
        now = {d.id: d for d in self._inv.list_devices()}
        for dev_id, info in self._known.items():
            if dev_id not in now:
                self._pending.append(HotplugEvent("removed", info))
        for dev_id, info in now.items():
            if dev_id not in self._known:
                self._pending.append(HotplugEvent("added", info))
        for ev in self._pending:
            log.info("hotplug", action=ev.action, device=ev.device.id, backend="v4l2")
        self._known = now

    async def __anext__(self) -> HotplugEvent:
        while not self._pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._inv._poll_s):
                    await self._wake.wait()
            self._wake.clear()
            self._diff()
        return self._pending.pop(0)

    async def aclose(self) -> None:
        if self._monitor is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._monitor.fileno())
            self._monitor = None


def _udev_monitor() -> Any:
    """A started pyudev monitor for video4linux, or None (no pyudev, no netlink: poll instead)."""
    try:
        import pyudev

        monitor = pyudev.Monitor.from_netlink(pyudev.Context())
        monitor.filter_by(subsystem="video4linux")
        monitor.start()
        return monitor
    except Exception as exc:
        log.info("udev_unavailable", reason=str(exc))
        return None
