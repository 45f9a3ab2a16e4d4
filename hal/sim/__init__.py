"""The simulated backend: cameras described by config, with fault switches testers script.

``SimInventory`` / ``SimCamera`` implement the camera Protocols; ``SimCameraFaults`` (``camera.faults``)
and ``SimEncoderFaults`` (``encoder_factory().faults``) are the fault switches.
"""

from __future__ import annotations

__all__ = ["Notice", "SimCamera", "SimCameraFaults", "SimDevice", "SimEncoderFaults", "SimInventory"]

from hal.sim.camera import Notice, SimCamera, SimDevice, SimInventory
from hal.sim.faults import SimCameraFaults, SimEncoderFaults
