"""The v4l2 backend: real UVC/V4L2 cameras (sysfs enumeration, PyAV capture, linuxpy controls)."""

from __future__ import annotations

__all__ = ["V4l2Camera", "V4l2Controls", "V4l2Inventory", "V4l2Node", "enumerate_nodes"]

from hal.v4l2.camera import V4l2Camera
from hal.v4l2.controls import V4l2Controls
from hal.v4l2.enumerate import V4l2Node, enumerate_nodes
from hal.v4l2.inventory import V4l2Inventory
