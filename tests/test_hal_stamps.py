"""Stamps: written into a picture, read back exactly; garbled or absent stamps read as None."""

from __future__ import annotations

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hal.errors import UnsupportedError
from hal.stamps import Stamp, block_size, read_stamp, stamp_region, write_stamp


def _frame(width: int = 320, height: int = 240, luma: int = 100) -> av.VideoFrame:
    frame = av.VideoFrame(width, height, "yuv420p")
    for plane, value in zip(frame.planes, (luma, 128, 128), strict=True):
        plane.update(bytes([value]) * plane.buffer_size)
    return frame


@pytest.mark.parametrize(("seq", "ns"), [(0, 0), (1, 1_700_000_000_123_456_789), (2**32 - 1, 2**64 - 1)])
def test_round_trip_exact(seq: int, ns: int) -> None:
    frame = _frame()
    write_stamp(frame, seq, ns)
    assert read_stamp(frame) == Stamp(seq=seq, capture_ns=ns)


def test_survives_rgb_conversion_and_back() -> None:
    frame = _frame(640, 480)
    write_stamp(frame, 42, 123456789)
    rgb = frame.reformat(format="rgb24")
    assert read_stamp(rgb) == Stamp(42, 123456789)


def test_survives_noise_of_a_lossy_codec() -> None:
    luma = np.full((240, 320), 90, np.uint8)
    write_stamp(luma, 7, 99)
    rng = np.random.default_rng(3)
    noisy = np.clip(luma.astype(int) + rng.integers(-40, 41, luma.shape), 0, 255).astype(np.uint8)
    assert read_stamp(noisy) == Stamp(7, 99)


def test_one_flipped_block_is_rejected_not_misread() -> None:
    luma = np.full((240, 320), 90, np.uint8)
    write_stamp(luma, 7, 99)
    side = block_size(320, 240)
    assert side is not None
    block = luma[side : 2 * side, 5 * side : 6 * side]
    block[:] = 255 - block  # one bit of the second row flipped
    assert read_stamp(luma) is None


def test_black_and_unstamped_pictures_have_no_stamp() -> None:
    assert read_stamp(_frame(luma=16)) is None
    assert read_stamp(_frame(luma=200)) is None


def test_block_size_grows_with_the_picture() -> None:
    assert block_size(320, 240) == 8
    assert block_size(1920, 1080) == 24
    assert block_size(3840, 2160) == 56
    assert stamp_region(1920, 1080) == (24 * 32, 24 * 4)


def test_too_small_to_stamp() -> None:
    with pytest.raises(UnsupportedError):
        write_stamp(_frame(64, 48), 1, 1)
    assert read_stamp(_frame(64, 48)) is None


def test_packed_formats_are_refused_for_writing() -> None:
    with pytest.raises(UnsupportedError):
        write_stamp(_frame().reformat(format="rgb24"), 1, 1)


@settings(max_examples=60, deadline=None)
@given(
    seq=st.integers(0, 2**32 - 1),
    ns=st.integers(0, 2**64 - 1),
    flips=st.sets(st.integers(0, 127), min_size=1, max_size=5),
)
def test_any_few_flipped_blocks_are_detected_never_misread(seq: int, ns: int, flips: set[int]) -> None:
    # CRC-32 has Hamming distance >= 6 at this message length: up to 5 wrong blocks always show.
    luma = np.full((240, 320), 90, np.uint8)
    write_stamp(luma, seq, ns)
    assert read_stamp(luma) == Stamp(seq, ns)
    side = 8
    for bit in flips:
        row, col = divmod(bit, 32)
        block = luma[row * side : (row + 1) * side, col * side : (col + 1) * side]
        block[:] = 251 - block  # 16 <-> 235
    assert read_stamp(luma) is None
