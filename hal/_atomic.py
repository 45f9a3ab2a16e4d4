"""Crash-safe small-file writes for HAL state (presets).

``hal`` must not import ``agent``, so this is the HAL's own copy of the agent's persistence rule:
temp file in the same directory, write, fsync, rename over the target, fsync the directory.
"""

from __future__ import annotations

__all__ = ["atomic_write_json", "read_json"]

import contextlib
import json
import os
from pathlib import Path
from typing import Any


def atomic_write_json(path: Path, value: Any) -> None:
    """Replace ``path`` with ``value`` as canonical JSON, atomically and durably.

    Raises:
        OSError: the write failed; ``path`` still holds its old content.
    """
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    data = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    tmp = directory / f".{path.name}.tmp-{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def read_json(path: Path) -> Any | None:
    """The JSON value in ``path``; ``None`` when the file does not exist.

    Raises:
        OSError: unreadable.
        ValueError: not valid JSON.
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    return json.loads(raw)
