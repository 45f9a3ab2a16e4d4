"""RFC 9605 §4.3 header edge cases beyond the published vectors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.e2ee.header import MAX_VALUE, KidHeaders, decode_header, encode_header
from agent.e2ee.sframe import InvalidParameterError, SFrameHeaderError


@pytest.mark.parametrize(
    ("kid", "ctr", "encoded"),
    [
        (0, 0, "00"),
        (7, 7, "77"),  # largest values carried in the config byte itself
        (8, 0, "8008"),  # smallest extended KID: one byte
        (0, 8, "0808"),  # smallest extended CTR: one byte
        (255, 255, "88ffff"),
        (256, 0, "900100"),  # first two-byte KID
        (0, 256, "090100"),
        (MAX_VALUE, MAX_VALUE, "ff" + "ff" * 16),  # 8 + 8 bytes, the longest header (17 bytes)
    ],
)
def test_minimal_encoding(kid: int, ctr: int, encoded: str) -> None:
    assert encode_header(kid, ctr).hex() == encoded
    assert decode_header(bytes.fromhex(encoded)) == (kid, ctr, len(encoded) // 2)


@pytest.mark.parametrize(
    ("encoded", "why"),
    [
        ("8005", "extended KID holding 5, which fits in K"),
        ("0805", "extended CTR holding 5, which fits in C"),
        ("900010", "two-byte KID with a leading zero byte (0x10 fits in one)"),
        ("09000a", "two-byte CTR with a leading zero byte"),
        ("f0" + "00" * 7 + "ff", "eight-byte KID holding 255"),
    ],
)
def test_non_minimal_encoding_is_rejected(encoded: str, why: str) -> None:
    """§4.3: values "MUST be encoded with the minimum number of bytes"; another form is not SFrame."""
    with pytest.raises(SFrameHeaderError, match="minimally"):
        decode_header(bytes.fromhex(encoded))


@pytest.mark.parametrize("encoded", ["", "80", "88ff", "9001", "ff" + "ff" * 15])
def test_truncated_header_is_rejected(encoded: str) -> None:
    with pytest.raises(SFrameHeaderError) as info:
        decode_header(bytes.fromhex(encoded))
    assert info.value.length == len(encoded) // 2


@pytest.mark.parametrize(
    ("kid", "ctr"), [(-1, 0), (0, -1), (MAX_VALUE + 1, 0), (0, MAX_VALUE + 1), (1.0, 0), (True, 0)]
)
def test_encode_refuses_values_outside_64_bits(kid: object, ctr: object) -> None:
    with pytest.raises(InvalidParameterError):
        encode_header(kid, ctr)  # type: ignore[arg-type]


@given(st.integers(0, MAX_VALUE), st.integers(0, MAX_VALUE), st.binary(max_size=8))
def test_round_trip_and_prefix(kid: int, ctr: int, tail: bytes) -> None:
    header = encode_header(kid, ctr)
    assert decode_header(header + tail) == (kid, ctr, len(header))
    # Minimal: each field takes the fewest bytes its value needs.
    extra = lambda v: 0 if v < 8 else (v.bit_length() + 7) // 8  # noqa: E731
    assert len(header) == 1 + extra(kid) + extra(ctr)


@given(st.binary(max_size=20))
def test_any_bytes_decode_or_header_error(data: bytes) -> None:
    try:
        kid, ctr, n = decode_header(data)
    except SFrameHeaderError:
        return
    assert data[:n] == encode_header(kid, ctr)  # whatever parses is exactly the canonical form


@given(st.integers(0, MAX_VALUE), st.integers(0, MAX_VALUE))
def test_precomputed_kid_headers_match_encode_header(kid: int, ctr: int) -> None:
    """The sender's int-ops fast path produces byte-identical headers."""
    assert KidHeaders(kid).encode(ctr) == encode_header(kid, ctr)
