"""Still images from frames (snapshots)."""

from __future__ import annotations

__all__ = ["save_png"]

from pathlib import Path
from typing import Any

import av
import av.error

from hal.errors import DeviceIOError, UnsupportedError


def save_png(image: Any, path: Path) -> None:
    """Write ``image`` (an ``av.VideoFrame`` in any pixel format) to ``path`` as an RGB PNG.

    Raises:
        UnsupportedError: not a video frame.
        DeviceIOError: the file could not be written.
    """
    if not isinstance(image, av.VideoFrame):
        raise UnsupportedError(f"cannot save a {type(image).__name__} as PNG")
    path = Path(path)
    try:
        rgb = image.reformat(format="rgb24")
        with av.open(str(path), mode="w", format="image2", options={"update": "1"}) as container:
            stream = container.add_stream("png")
            stream.width, stream.height, stream.pix_fmt = rgb.width, rgb.height, "rgb24"
            rgb.pts = 0
            for packet in stream.encode(rgb):
                container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
    except (av.error.FFmpegError, OSError) as exc:
        raise DeviceIOError(f"cannot write PNG {path}: {exc}") from exc
