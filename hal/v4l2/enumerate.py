"""Enumerate V4L2 capture nodes from sysfs (``/sys/class/video4linux``).

Each ``videoN`` entry has ``name`` (the driver's card name), ``index`` (0 for the main node of a
device; UVC adds index 1 for its metadata node, which is not a camera) and a ``device`` link into
the bus tree. The roots are parameters so tests run against a fake sysfs tree.
"""

from __future__ import annotations

__all__ = ["SYSFS_ROOT", "V4l2Node", "enumerate_nodes"]

import os
import re
from dataclasses import dataclass
from pathlib import Path

SYSFS_ROOT = Path("/sys/class/video4linux")
DEV_ROOT = Path("/dev")
_NODE = re.compile(r"^video(\d+)$")


@dataclass(frozen=True, slots=True)
class V4l2Node:
    node: str  # "video0"
    path: Path  # /dev/video0
    name: str  # card name from sysfs
    bus: str | None  # the device's sysfs bus path tail, e.g. "usb1/1-1/1-1:1.0"


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def enumerate_nodes(sysfs_root: Path = SYSFS_ROOT, dev_root: Path = DEV_ROOT) -> list[V4l2Node]:
    """The main node of every V4L2 device (metadata nodes skipped), sorted by node number.

    A node that vanishes while it is read (hotplug) is simply not listed. A missing sysfs root
    (no V4L2 in the kernel) lists nothing.
    """
    try:
        entries = sorted(os.listdir(sysfs_root), key=lambda n: (len(n), n))
    except OSError:
        return []
    nodes = []
    for entry in entries:
        if not _NODE.match(entry):
            continue
        base = Path(sysfs_root) / entry
        name = _read(base / "name")
        if name is None:
            continue  # gone meanwhile
        index = _read(base / "index")
        if index not in (None, "0"):
            continue  # a second node of the same device (UVC metadata)
        bus = None
        try:
            target = os.path.realpath(base / "device")
            parts = Path(target).parts
            bus = "/".join(parts[-3:]) if len(parts) >= 3 else target
        except OSError:
            bus = None
        nodes.append(V4l2Node(node=entry, path=Path(dev_root) / entry, name=name, bus=bus))
    return nodes
