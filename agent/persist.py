"""Crash-safe persistence: a file is either the old or the new version, never torn.

Every write goes: temp file in the same directory, write, fsync, rename over the target, fsync the
directory (so the rename itself survives a power cut).
"""

from __future__ import annotations

__all__ = ["atomic_write_bytes", "atomic_write_json", "read_json", "remove_stale_temp_files"]

import contextlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from agent.errors import StateError


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    Raises:
        StateError: the write failed (ENOSPC, EIO, ...); ``path`` still holds its old content.
    """
    path = Path(path)
    directory = path.parent
    # pid and thread id: concurrent writers (threads of one process too) never share a temp file.
    tmp = directory / f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(directory)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StateError(str(path), f"write failed: {exc.strerror or exc}") from exc


def atomic_write_json(path: Path, value: Any, *, mode: int = 0o600) -> None:
    """Serialise ``value`` as canonical JSON and write it with :func:`atomic_write_bytes`."""
    data = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    atomic_write_bytes(path, data, mode=mode)


def read_json(path: Path) -> Any | None:
    """Read a JSON file written by :func:`atomic_write_json`; ``None`` when it does not exist.

    Raises:
        StateError: the file exists but is not valid JSON.
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(str(path), f"read failed: {exc.strerror or exc}") from exc
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise StateError(str(path), "not valid JSON") from exc


def remove_stale_temp_files(root: Path) -> int:
    """Delete temp files that a crash left between write and rename (start-up only).

    Only names :func:`atomic_write_bytes` makes (``.NAME.tmp-PID-TID``) are removed; the files they
    were meant to replace still hold their old, complete content. Returns how many were removed.
    """
    removed = 0
    for tmp in Path(root).rglob(".*.tmp-*"):
        if re.fullmatch(r"\..+\.tmp-\d+-\d+", tmp.name) and tmp.is_file():
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed += 1
    return removed
