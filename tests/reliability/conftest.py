"""Fixtures of the fault-injection suite: small filesystems that fill up, crash-prone writers."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", f"ra-{uuid.uuid4().hex[:8]}", str(path)],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 256 KiB tmpfs (needs root or CAP_SYS_ADMIN): writes past it fail with ENOSPC."""
    mnt = tmp_path / "small-disk"
    try:
        _mount_tmpfs(mnt, "256k")
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here ({exc}); the ENOSPC injection tests cover this path")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def fill(directory: Path) -> int:
    """Fill the filesystem holding ``directory`` until ENOSPC; returns the bytes written."""
    written = 0
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (65536, 4096, 512, 1):  # down to the last byte
            while True:
                try:
                    written += os.write(fd, b"\0" * chunk)
                except OSError:
                    break
    finally:
        os.close(fd)
    return written
