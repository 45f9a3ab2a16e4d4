"""Fuzz target for SFrame decryption: any bytes give a plaintext or an SFrameError, nothing else.

Run: ``python fuzz/fuzz_sframe.py -max_total_time=10`` (atheris/libFuzzer flags). ``TestOneInput`` is
also importable, so the test suite replays inputs through it without atheris.

Each input drives: the header parser (§4.3), the stateless ``decrypt`` for the chosen suite, a
``ReceiverContext`` holding keys for small KIDs (so that parsing reaches the AEAD and the replay
window), and an encrypt/decrypt round trip of the input as plaintext with a single flipped bit.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":
    import atheris

    with atheris.instrument_imports(include=["agent", "hal"]):
        from agent.e2ee import sframe
        from agent.e2ee.context import ReceiverContext, SenderContext
        from agent.e2ee.header import decode_header, encode_header
else:
    from agent.e2ee import sframe
    from agent.e2ee.context import ReceiverContext, SenderContext
    from agent.e2ee.header import decode_header, encode_header

KEY = bytes(range(32))
_RECEIVERS: dict[int, ReceiverContext] = {}


def _receiver(suite: int) -> ReceiverContext:
    receiver = _RECEIVERS.get(suite)
    if receiver is None:
        receiver = ReceiverContext(replay_window=64)
        for kid in range(16):
            receiver.add_key(kid, KEY, suite)
        _RECEIVERS[suite] = receiver
    return receiver


def TestOneInput(data: bytes) -> None:
    """One fuzz input (the name libFuzzer and atheris look for)."""
    if len(data) < 2:
        return
    suite = data[0] % 5 + 1
    split = data[1] % 16
    metadata, body = data[2 : 2 + split], data[2 + split :]

    try:
        kid, ctr, n = decode_header(body)
    except sframe.SFrameError:
        pass
    else:
        if body[:n] != encode_header(kid, ctr):
            raise AssertionError("a parsed header is not the canonical encoding")

    with contextlib.suppress(sframe.SFrameError):
        sframe.decrypt(suite, KEY, metadata, body)
    with contextlib.suppress(sframe.SFrameError):
        _receiver(suite).decrypt(metadata, body)

    # Round trip: the input as a frame, then one flipped bit must be rejected.
    sender = SenderContext(suite, KEY, 5)
    frame = sender.encrypt(metadata, body)
    if sframe.decrypt(suite, KEY, metadata, frame) != (5, 0, body):
        raise AssertionError("round trip failed")
    flipped = bytearray(frame)
    flipped[data[1] % len(frame)] ^= 1 << (data[0] % 8)
    try:
        sframe.decrypt(suite, KEY, metadata, bytes(flipped))
    except sframe.SFrameError:
        return
    raise AssertionError("a flipped bit was accepted")


if __name__ == "__main__":
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
