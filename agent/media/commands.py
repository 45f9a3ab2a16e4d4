"""The routine camera commands of a room: ``keyframe``, ``restart_pipeline``, ``ptz``, ``ptz_preset``.

Each handler is a plain coroutine ``(name, args, doc) -> message`` that the composition root
(``agent.daemon.room``) registers with the control plane; the control plane has verified the
document and its signers (``fleet``) and validated ``args`` against the command's model before a
handler runs. A handler that cannot do what was asked raises :class:`~agent.media.errors.CommandError`
(acked ``rolled_back`` with the message): the ack says what happened, never "applied" for nothing.
"""

from __future__ import annotations

__all__ = ["MediaCommands"]

from collections.abc import Mapping
from typing import Any

import structlog

from agent.media.errors import CommandError
from agent.media.service import Media
from hal.errors import HalError
from hal.protocols import Inventory
from hal.types import PtzPosition

_log = structlog.get_logger()

RESTART_TIMEOUT_S = 10.0

# The ``ptz`` command speaks the wire contract's units (pan/tilt in degrees, zoom as a factor 1..100);
# the HAL speaks V4L2's: V4L2_CID_PAN/TILT_ABSOLUTE in arc-seconds, V4L2_CID_ZOOM_ABSOLUTE with 100 = no zoom.
_HAL_PER_UNIT = {"pan": 3600, "tilt": 3600, "zoom": 100}


class MediaCommands:
    """Command handlers over the room's media path and HAL inventory.

    Args:
        media: the pipelines (possibly none: a room without a sink still moves its cameras).
        inventory: the HAL inventory the cameras are opened from (``None``: the room has no camera).
        default_camera: the camera a command without ``camera`` addresses (the first configured).
    """

    def __init__(self, media: Media, inventory: Inventory | None, default_camera: str | None) -> None:
        self._media = media
        self._inventory = inventory
        self._default_camera = default_camera

    def handlers(self) -> dict[str, Any]:
        return {
            "keyframe": self.keyframe,
            "restart_pipeline": self.restart_pipeline,
            "ptz": self.ptz,
            "ptz_preset": self.ptz_preset,
        }

    def _camera_id(self, args: Mapping[str, Any]) -> str:
        camera = args.get("camera") or self._default_camera
        if camera is None or self._inventory is None:
            raise CommandError("this room has no camera")
        return str(camera)

    async def keyframe(self, name: str, args: Mapping[str, Any], doc: object) -> str:
        if not self._media.pipelines:
            raise CommandError("no media pipeline runs on this room (no sink configured)")
        self._media.request_keyframe()
        return f"keyframe requested on {len(self._media.pipelines)} pipeline(s)"

    async def restart_pipeline(self, name: str, args: Mapping[str, Any], doc: object) -> str:
        if not self._media.pipelines:
            raise CommandError("no media pipeline runs on this room (no sink configured)")
        results = [(p.camera_id, await p.restart(RESTART_TIMEOUT_S)) for p in self._media.pipelines]
        failed = [camera for camera, ok in results if not ok]
        if failed:
            raise CommandError(f"camera not open again within {RESTART_TIMEOUT_S:g} s: {', '.join(failed)}")
        return f"restarted {', '.join(camera for camera, _ in results)}"

    async def ptz(self, name: str, args: Mapping[str, Any], doc: object) -> str:
        camera_id = self._camera_id(args)
        assert self._inventory is not None
        move = {
            axis: round(float(args[axis]) * _HAL_PER_UNIT[axis])
            for axis in ("pan", "tilt", "zoom")
            if args.get(axis) is not None
        }
        if not move:
            raise CommandError("ptz needs at least one of pan, tilt, zoom")
        try:
            camera = self._inventory.open_camera(camera_id)
            await camera.set_ptz(**move)
            pos = await camera.get_ptz()
        except HalError as exc:
            raise CommandError(f"camera {camera_id}: {exc}") from exc
        _log.info("ptz_moved", camera=camera_id, pan=pos.pan, tilt=pos.tilt, zoom=pos.zoom)
        return f"{camera_id} at {_wire_units(pos)}"

    async def ptz_preset(self, name: str, args: Mapping[str, Any], doc: object) -> str:
        camera_id = self._camera_id(args)
        assert self._inventory is not None
        preset = str(args["preset"])
        try:
            camera = self._inventory.open_camera(camera_id)
            await camera.recall_preset(preset)
            pos = await camera.get_ptz()
        except HalError as exc:
            raise CommandError(f"camera {camera_id}, preset {preset}: {exc}") from exc
        _log.info("ptz_preset_recalled", camera=camera_id, preset=preset)
        return f"{camera_id} at preset {preset} ({_wire_units(pos)})"


def _wire_units(pos: PtzPosition) -> str:
    """A HAL position in the units the ``ptz`` command takes, for the ack message."""
    return (
        f"pan {pos.pan / _HAL_PER_UNIT['pan']:g} tilt {pos.tilt / _HAL_PER_UNIT['tilt']:g}"
        f" zoom {pos.zoom / _HAL_PER_UNIT['zoom']:g}"
    )
