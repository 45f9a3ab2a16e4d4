"""PTZ presets of one camera, persisted atomically as ``<presets_dir>/<camera id>.json``.

Used by every backend (the sim camera and v4l2 cameras both keep presets on the host: UVC cameras
have no standard preset storage). A preset file that cannot be parsed is moved aside, never
overwritten, so a bad disk sector or a hand edit loses nothing.
"""

from __future__ import annotations

__all__ = ["MAX_PRESETS", "PresetStore"]

import re
import threading
import time
from pathlib import Path
from typing import Any

import structlog

from hal._atomic import atomic_write_json, read_json
from hal.errors import DeviceIOError, PresetNotFoundError, UnsupportedError
from hal.types import PtzPosition

MAX_PRESETS = 64
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,31}$")
_FORMAT = 1

log = structlog.get_logger()


class PresetStore:
    """Named PTZ positions for camera ``camera_id``; in memory only when ``presets_dir`` is None."""

    def __init__(self, camera_id: str, presets_dir: Path | None) -> None:
        self._camera_id = camera_id
        self._path = None if presets_dir is None else Path(presets_dir) / f"{camera_id}.json"
        self._lock = threading.Lock()
        self._presets: dict[str, PtzPosition] = self._load()

    @property
    def path(self) -> Path | None:
        return self._path

    def _load(self) -> dict[str, PtzPosition]:
        if self._path is None:
            return {}
        try:
            raw = read_json(self._path)
            return {} if raw is None else _parse(raw)
        except (ValueError, TypeError, KeyError) as exc:
            aside = self._path.with_name(f"{self._path.name}.corrupt-{time.time_ns()}")
            try:
                self._path.rename(aside)
            except OSError as move_exc:
                raise DeviceIOError(
                    f"preset file {self._path} is unreadable and cannot be moved aside: {move_exc}",
                    device=self._camera_id,
                ) from move_exc
            log.warning("presets_unreadable", camera=self._camera_id, moved_to=str(aside), error=str(exc))
            return {}
        except OSError as exc:
            raise DeviceIOError(f"cannot read presets {self._path}: {exc}", device=self._camera_id) from exc

    def list(self) -> dict[str, PtzPosition]:
        with self._lock:
            return dict(self._presets)

    def get(self, name: str) -> PtzPosition:
        with self._lock:
            try:
                return self._presets[name]
            except KeyError:
                raise PresetNotFoundError(name, device=self._camera_id) from None

    def store(self, name: str, position: PtzPosition) -> None:
        """Store (or replace) preset ``name``; on disk before this returns.

        Raises:
            UnsupportedError: bad name, or too many presets.
            DeviceIOError: the file could not be written (the stored presets are unchanged).
        """
        if not _NAME.match(name):
            raise UnsupportedError(
                f"preset name {name!r} must be 1-32 letters, digits, space, '.', '_' or '-'",
                device=self._camera_id,
            )
        with self._lock:
            if name not in self._presets and len(self._presets) >= MAX_PRESETS:
                raise UnsupportedError(f"at most {MAX_PRESETS} presets", device=self._camera_id)
            updated = {**self._presets, name: position}
            if self._path is not None:
                try:
                    atomic_write_json(self._path, _dump(updated))
                except OSError as exc:
                    raise DeviceIOError(
                        f"cannot write presets {self._path}: {exc}", device=self._camera_id
                    ) from exc
            self._presets = updated


def _dump(presets: dict[str, PtzPosition]) -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "presets": {n: {"pan": p.pan, "tilt": p.tilt, "zoom": p.zoom} for n, p in sorted(presets.items())},
    }


def _parse(raw: Any) -> dict[str, PtzPosition]:
    if not isinstance(raw, dict) or raw.get("format") != _FORMAT or not isinstance(raw.get("presets"), dict):
        raise ValueError("not a preset file")
    out: dict[str, PtzPosition] = {}
    for name, pos in raw["presets"].items():
        if not _NAME.match(name) or not isinstance(pos, dict):
            raise ValueError(f"bad preset {name!r}")
        values = [pos["pan"], pos["tilt"], pos["zoom"]]
        if not all(type(x) is int for x in values):
            raise TypeError(f"bad preset {name!r}")
        out[name] = PtzPosition(pan=values[0], tilt=values[1], zoom=values[2])
    return out
