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

__all__ = ["MAX_HEADER_LENGTH", "MAX_VALUE", "KidHeaders", "decode_header", "encode_header"]

from agent.e2ee.errors import InvalidParameterError, SFrameHeaderError

MAX_VALUE = (1 << 64) - 1
"""KID and CTR are unsigned 64-bit integers (at most 8 bytes each, §4.3)."""

MAX_HEADER_LENGTH = 17
"""Config byte + 8-byte KID + 8-byte CTR."""

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


# Smallest value allowed in an extended field of n bytes: 8 for one byte (0-7 fit in the config
# byte), otherwise no leading zero byte (§4.3 "minimum number of bytes").
_MIN_EXTENDED = (0, 8, *(1 << ((n - 1) << 3) for n in range(2, 9)))


def _config_entry(config: int) -> tuple[int, int, int, int, int, int, int, int]:
    # X (0x80) / K (0x70) / Y (0x08) / C (0x07), §4.3 Figure 3.
    klen = ((config >> 4) & 0x07) + 1 if config & 0x80 else 0
    clen = (config & 0x07) + 1 if config & 0x08 else 0
    return (
        1 + klen + clen,  # header length
        klen,
        clen << 3,  # CTR bits: the KID sits above them in the extended bytes
        _MIN_EXTENDED[klen],
        (1 << (clen << 3)) - 1,
        _MIN_EXTENDED[clen],
        (config >> 4) & 0x07,  # KID when X = 0
        config & 0x07,  # CTR when Y = 0
    )


# Everything the config byte determines, for each of its 256 values: one lookup per frame.
_CONFIG = tuple(_config_entry(c) for c in range(256))


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
    if type(data) is not bytes:
        data = bytes(data[:MAX_HEADER_LENGTH])  # int.from_bytes is several times slower on views
    hlen, klen, cbits, kmin, cmask, cmin, kid, ctr = _CONFIG[data[0]]
    if hlen == 1:
        return kid, ctr, 1
    if hlen > n:
        raise SFrameHeaderError(f"header announces {hlen} bytes, input ends first", length=n)
    # One int for the KID and CTR bytes together, split with shifts.
    fields = int.from_bytes(data[1:hlen], "big")
    if klen:
        kid = fields >> cbits
        if kid < kmin:
            raise SFrameHeaderError("KID is not minimally encoded (§4.3)", length=n)
    if cbits:
        ctr = fields & cmask
        if ctr < cmin:
            raise SFrameHeaderError("CTR is not minimally encoded (§4.3)", length=n)
    return kid, ctr, hlen


class KidHeaders:
    """Precomputed header pieces of one KID, so that a sender builds each header with int ops only.

    ``short[ctr]`` is the whole header for CTR 0-7; for a CTR of ``clen`` bytes the header is
    ``(high[clen] | ctr).to_bytes(length[clen], "big")`` (§4.3, identical to :func:`encode_header`).
    """

    __slots__ = ("high", "length", "short")

    def __init__(self, kid: int) -> None:
        encode_header(kid, 0)  # validates the KID
        if kid < 8:
            config, klen, kid_part = kid << 4, 0, 0
        else:
            klen = _length(kid)
            config, kid_part = 0x80 | (klen - 1) << 4, kid
        kbits = klen << 3
        self.short: tuple[bytes, ...] = tuple(
            ((config | c) << kbits | kid_part).to_bytes(1 + klen, "big") for c in range(8)
        )
        self.high: tuple[int, ...] = (
            0,
            *(((config | 0x08 | (clen - 1)) << kbits | kid_part) << (clen << 3) for clen in range(1, 9)),
        )
        self.length: tuple[int, ...] = (0, *(1 + klen + clen for clen in range(1, 9)))

    def encode(self, ctr: int) -> bytes:
        """The header for this KID and ``ctr`` (0 <= ctr < 2^64, not checked)."""
        if ctr < 8:
            return self.short[ctr]
        clen = (ctr.bit_length() + 7) >> 3
        return (self.high[clen] | ctr).to_bytes(self.length[clen], "big")
