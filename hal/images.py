"""Still images from frames (snapshots)."""

from __future__ import annotations

__all__ = ["decode_png", "encode_png", "save_png"]

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


def encode_png(image: Any) -> bytes:
    """``image`` (an ``av.VideoFrame`` in any pixel format) as the bytes of an RGB PNG file.

    Blocking (call it from a thread for large pictures).

    Raises:
        UnsupportedError: not a video frame, or the PNG encoder failed.
    """
    if not isinstance(image, av.VideoFrame):
        raise UnsupportedError(f"cannot encode a {type(image).__name__} as PNG")
    try:
        rgb = image.reformat(format="rgb24")
        codec = av.CodecContext.create("png", "w")
        codec.width, codec.height, codec.pix_fmt = rgb.width, rgb.height, "rgb24"
        rgb.pts = 0
        packets = [*codec.encode(rgb), *codec.encode(None)]
    except av.error.FFmpegError as exc:
        raise UnsupportedError(f"PNG encoding failed: {exc}") from exc
    return b"".join(bytes(p) for p in packets)


def decode_png(data: bytes) -> Any:
    """The picture of a PNG file as an ``av.VideoFrame`` (rgb24).

    Raises:
        UnsupportedError: not a decodable PNG.
    """
    import io

    try:
        with av.open(io.BytesIO(data), mode="r", format="png_pipe") as container:
            for frame in container.decode(video=0):
                return frame.reformat(format="rgb24")
    except (av.error.FFmpegError, ValueError) as exc:
        raise UnsupportedError(f"not a PNG: {exc}") from exc
    raise UnsupportedError("PNG without a picture")
