"""atheris target: the RTP depacketizer and frame-header parser take any bytes without crashing.

Anything but the typed errors (which the depacketizer counts, never raises) is a finding. Run with
``python fuzz/fuzz_rtp.py -max_total_time=60``; ``make fuzz`` wires it.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports(include=["agent", "hal"]):
    from agent.media.errors import MalformedFrameError, MalformedPacketError
    from agent.media.frame import split_frame
    from agent.media.rtp import Depacketizer, parse_packet

_DEPACK = Depacketizer(max_streams=4, window=64, timeout_s=0.05, max_bytes=1 << 16)
_CLOCK = [0.0]


def TestOneInput(data: bytes) -> None:
    _CLOCK[0] += 0.01
    with contextlib.suppress(MalformedPacketError):
        parse_packet(data)
    with contextlib.suppress(MalformedFrameError):
        split_frame(data)
    # Split the input into several datagrams so reassembly state machines get exercised too.
    fdp = atheris.FuzzedDataProvider(data)
    while fdp.remaining_bytes():
        datagram = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
        for frame in _DEPACK.push(datagram, _CLOCK[0]):
            assert frame.payload
    assert _DEPACK.stats.packets >= 0
    for stream in _DEPACK.streams.values():
        assert stream.buffered_packets <= 4 * 64 + 64


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
