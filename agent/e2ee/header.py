"""SFrame header encoding and decoding (RFC 9605 §4.3).

Config byte ``|X|  K  |Y|  C  |``: X=0 puts a KID of 0-7 in K, X=1 puts the KID length minus one in K
and the KID after the config byte; Y and C do the same for CTR, whose bytes follow the KID's. Values
are big-endian and "MUST be encoded with the minimum number of bytes required" (§4.3).

Decoding is strict: a header whose KID or CTR is not minimally encoded (an extended field holding a
value 0-7, or a leading zero byte) is rejected with :class:`SFrameHeaderError`. §4.3 makes minimal
encoding a MUST, a conformant sender never produces another form, and accepting several byte forms
of one (KID, CTR) would give an attacker a free bit-flip that the application might key on before
authentication (§9.4).
"""

from __future__ import annotations

__all__ = ["MAX_VALUE", "decode_header", "encode_header"]

from agent.e2ee.errors import InvalidParameterError, SFrameHeaderError

MAX_VALUE = (1 << 64) - 1
"""KID and CTR are unsigned 64-bit integers (at most 8 bytes each, §4.3)."""

# The 64 headers with KID < 8 and CTR < 8 are one config byte; prebuilt to skip int packing.
_SHORT = tuple(bytes((k << 4 | c,)) for k in range(8) for c in range(8))


def _length(value: int) -> int:
    return (value.bit_length() + 7) >> 3


def encode_header(kid: int, ctr: int) -> bytes:
    """Encode (KID, CTR) as a minimal SFrame header (§4.3).

    Raises:
        InvalidParameterError: KID or CTR is not an int in 0..2^64-1.
    """
    if type(kid) is not int or not 0 <= kid <= MAX_VALUE:
        raise InvalidParameterError("kid", f"must be an integer in 0..2^64-1, got {kid!r}")
    if type(ctr) is not int or not 0 <= ctr <= MAX_VALUE:
        raise InvalidParameterError("ctr", f"must be an integer in 0..2^64-1, got {ctr!r}")
    if kid < 8:
        if ctr < 8:
            return _SHORT[kid << 3 | ctr]
        clen = _length(ctr)
        # |0| KID |1|CLEN| CTR...
        return ((kid << 4 | 0x08 | (clen - 1)) << (clen << 3) | ctr).to_bytes(1 + clen, "big")
    klen = _length(kid)
    if ctr < 8:
        # |1|KLEN|0| CTR | KID...
        return ((0x80 | (klen - 1) << 4 | ctr) << (klen << 3) | kid).to_bytes(1 + klen, "big")
    clen = _length(ctr)
    # |1|KLEN|1|CLEN| KID... CTR...
    config = 0x88 | (klen - 1) << 4 | (clen - 1)
    return ((config << (klen << 3) | kid) << (clen << 3) | ctr).to_bytes(1 + klen + clen, "big")


def decode_header(data: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """Parse the SFrame header at the start of ``data`` (§4.3).

    Returns:
        ``(kid, ctr, header_length)``.

    Raises:
        SFrameHeaderError: ``data`` is empty, shorter than the header announces, or the header is
            not minimally encoded.
    """
    n = len(data)
    if n == 0:
        raise SFrameHeaderError("empty input, no config byte", length=0)
    config = data[0]
    pos = 1
    if config & 0x80:
        klen = ((config >> 4) & 0x07) + 1
        end = pos + klen
        if end > n:
            raise SFrameHeaderError(f"header announces a {klen}-byte KID, input ends first", length=n)
        kid = int.from_bytes(data[pos:end], "big")
        if kid < 8 or kid.bit_length() <= (klen - 1) << 3:
            raise SFrameHeaderError("KID is not minimally encoded (§4.3)", length=n)
        pos = end
    else:
        kid = (config >> 4) & 0x07
    if config & 0x08:
        clen = (config & 0x07) + 1
        end = pos + clen
        if end > n:
            raise SFrameHeaderError(f"header announces a {clen}-byte CTR, input ends first", length=n)
        ctr = int.from_bytes(data[pos:end], "big")
        if ctr < 8 or ctr.bit_length() <= (clen - 1) << 3:
            raise SFrameHeaderError("CTR is not minimally encoded (§4.3)", length=n)
        pos = end
    else:
        ctr = config & 0x07
    return kid, ctr, pos
