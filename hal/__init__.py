"""Hardware abstraction layer: cameras, encoders and device inventory.

The agent sees only the Protocols and value types exported here; backends (``hal.sim``,
``hal.v4l2``, ``hal.codecs``) implement them. PyAV and ioctl code live only under ``hal/``.

Entry points: :func:`open_inventory` (cameras of a backend) and :func:`encoder_factory` (encoders).
"""

from __future__ import annotations

__all__ = ["encoder_factory", "open_inventory"]

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hal.errors import UnsupportedError
from hal.protocols import Inventory
from hal.types import CameraSpec

if TYPE_CHECKING:
    from hal.codecs import PyAvEncoderFactory


def open_inventory(cameras: Sequence[CameraSpec], *, backend: str, presets_dir: Path | None) -> Inventory:
    """The inventory of ``backend`` ("sim", "v4l2" or "auto") for the configured ``cameras``.

    ``sim`` simulates every camera in ``cameras`` (all must be sim specs). ``v4l2`` enumerates
    ``/sys/class/video4linux`` and maps configured cameras (v4l2 specs) onto their device nodes.
    ``auto`` serves each camera by its own backend (both at once when both kinds are configured).

    Raises:
        UnsupportedError: unknown backend or a camera spec the backend cannot serve.
    """
    if backend == "auto":
        sim = [c for c in cameras if c.backend == "sim"]
        real = [c for c in cameras if c.backend == "v4l2"]
        if sim and real:
            from hal.composite import CompositeInventory
            from hal.sim import SimInventory
            from hal.v4l2 import V4l2Inventory

            return CompositeInventory(
                [SimInventory(sim, presets_dir=presets_dir), V4l2Inventory(real, presets_dir=presets_dir)]
            )
        backend = "v4l2" if real else "sim"
    if backend == "sim":
        from hal.sim import SimInventory

        return SimInventory(cameras, presets_dir=presets_dir)
    if backend == "v4l2":
        from hal.v4l2 import V4l2Inventory

        return V4l2Inventory(cameras, presets_dir=presets_dir)
    raise UnsupportedError(f"unknown HAL backend {backend!r}; known: sim, v4l2, auto")


def encoder_factory() -> PyAvEncoderFactory:
    """A factory for PyAV encoders; ``.faults`` is its :class:`hal.sim.SimEncoderFaults` switchboard."""
    from hal.codecs import PyAvEncoderFactory

    return PyAvEncoderFactory()
