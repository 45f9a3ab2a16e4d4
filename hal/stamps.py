"""Frame stamps: the capture sequence number and time, written into the picture as a block barcode.

The stamp must survive lossy coding (H.264/H.265/VP8/VP9/AV1 at ordinary bitrates) and be read back
exactly by a receiver, so it is coarse: 128 bits as a 32 x 4 grid of square blocks in the top-left
corner of the luma plane, each block black (Y=16) for 0 or white (Y=235) for 1, aligned to 8 pixels
so that codec blocks do not straddle bits. The reader thresholds the mean of each block's centre.
The 128 bits are ``seq`` (u32), ``capture_ns`` (u64) and a CRC-32 of those 12 bytes, so a garbled
stamp reads as ``None`` instead of a wrong number.

The block size grows with the picture (8 px at 320x240, 24 px at 1080p, 56 px at 4K), derived from
the picture size alone, so reader and writer agree without side channels.
"""

from __future__ import annotations

__all__ = ["STAMP_COLS", "STAMP_ROWS", "Stamp", "block_size", "read_stamp", "stamp_region", "write_stamp"]

import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from hal.errors import UnsupportedError

STAMP_COLS = 32
STAMP_ROWS = 4
_BITS = STAMP_COLS * STAMP_ROWS
_BLACK = 16
_WHITE = 235
_THRESHOLD = (_BLACK + _WHITE) / 2
_LUMA_FIRST = frozenset(
    {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21", "gray"}
)

U8Array = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class Stamp:
    seq: int  # Frame.seq of the captured frame
    capture_ns: int  # Frame.capture_ns (time.time_ns() at capture)


def block_size(width: int, height: int) -> int | None:
    """Side of one stamp block in pixels for a picture of this size; ``None`` if too small to stamp."""
    side = min(width // (2 * STAMP_COLS), height // (4 * STAMP_ROWS)) // 8 * 8
    side = max(side, 8)
    if side * STAMP_COLS > width or side * STAMP_ROWS > height:
        return None
    return side


def stamp_region(width: int, height: int) -> tuple[int, int] | None:
    """(width, height) in pixels of the stamp area at the top-left corner, or ``None``."""
    side = block_size(width, height)
    return None if side is None else (side * STAMP_COLS, side * STAMP_ROWS)


def _encode_bits(seq: int, capture_ns: int) -> U8Array:
    if not 0 <= seq < 1 << 32 or not 0 <= capture_ns < 1 << 64:
        raise ValueError("seq must fit in 32 bits and capture_ns in 64 bits")
    body = struct.pack(">IQ", seq, capture_ns)
    data = body + struct.pack(">I", zlib.crc32(body))
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8))


def _luma(image: Any) -> U8Array:
    """A 2-D uint8 view (no copy when possible) of the luma plane of ``image``."""
    if isinstance(image, np.ndarray):
        if image.ndim != 2 or image.dtype != np.uint8:
            raise UnsupportedError("a stamp array must be a 2-D uint8 luma plane")
        return image
    import av  # local: keeps `import hal.stamps` cheap for tools that only analyse numbers

    if not isinstance(image, av.VideoFrame):
        raise UnsupportedError(f"cannot stamp a {type(image).__name__}")
    if image.format.name not in _LUMA_FIRST:
        image = image.reformat(format="gray")
    plane = image.planes[0]
    flat: U8Array = np.frombuffer(plane, dtype=np.uint8)
    return flat.reshape(image.height, plane.line_size)[:, : image.width]


def write_stamp(image: Any, seq: int, capture_ns: int) -> None:
    """Write the stamp into ``image`` (an ``av.VideoFrame`` in a planar YUV/gray format, or a luma array).

    Only the luma plane is touched; callers that care about colour (the sim camera) neutralise the
    chroma under :func:`stamp_region` themselves.

    Raises:
        UnsupportedError: the picture is too small for a stamp, or not a writable luma format.
    """
    if not isinstance(image, np.ndarray):
        import av

        if isinstance(image, av.VideoFrame) and image.format.name not in _LUMA_FIRST:
            raise UnsupportedError(f"cannot stamp pixel format {image.format.name}")
    luma = _luma(image)
    height, width = luma.shape
    side = block_size(width, height)
    if side is None:
        raise UnsupportedError(f"{width}x{height} is too small for a stamp")
    bits = _encode_bits(seq, capture_ns).reshape(STAMP_ROWS, STAMP_COLS)
    levels = np.where(bits == 1, _WHITE, _BLACK).astype(np.uint8)
    # Expand each bit to a side x side block: (rows, side, cols, side) broadcast, then flatten.
    blocks = np.broadcast_to(levels[:, None, :, None], (STAMP_ROWS, side, STAMP_COLS, side))
    luma[: STAMP_ROWS * side, : STAMP_COLS * side] = blocks.reshape(STAMP_ROWS * side, STAMP_COLS * side)


def read_stamp(image: Any) -> Stamp | None:
    """The stamp in ``image`` (any ``av.VideoFrame`` or a luma array), or ``None`` if absent or garbled."""
    luma = _luma(image)
    height, width = luma.shape
    side = block_size(width, height)
    if side is None:
        return None
    area = luma[: STAMP_ROWS * side, : STAMP_COLS * side].reshape(STAMP_ROWS, side, STAMP_COLS, side)
    lo, hi = side // 4, side - side // 4
    means = area[:, lo:hi, :, lo:hi].mean(axis=(1, 3), dtype=np.float32)
    bits = (means > _THRESHOLD).astype(np.uint8).reshape(_BITS)
    data = np.packbits(bits).tobytes()
    body, (crc,) = data[:12], struct.unpack(">I", data[12:])
    if zlib.crc32(body) != crc:
        return None
    seq, capture_ns = struct.unpack(">IQ", body)
    return Stamp(seq=seq, capture_ns=capture_ns)
