"""The impairing relay: seeded loss is reproducible, jitter delays and reorders, a blackout drops
everything for its length, the queue is bounded, and replies go back to the sender."""

from __future__ import annotations

import contextlib
import socket
import time

import pytest

from agent.media.receiver import bind_udp
from agent.media.relay import ImpairingRelay, Impairment


def _drain(sock: socket.socket, quiet_s: float = 0.3) -> list[bytes]:
    sock.settimeout(quiet_s)
    got = []
    with contextlib.suppress(TimeoutError):
        while True:
            got.append(sock.recv(2048))
    return got


def _run(imp: Impairment, n: int = 300, gap_s: float = 0.0) -> tuple[list[int], dict[str, int]]:
    dst = bind_udp("127.0.0.1", 0)
    relay = ImpairingRelay(dst.getsockname()[:2], imp).start()
    src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for i in range(n):
            src.sendto(i.to_bytes(4, "big"), relay.address)
            if gap_s:
                time.sleep(gap_s)
        got = [int.from_bytes(d, "big") for d in _drain(dst)]
        return got, relay.stats.as_dict()
    finally:
        relay.stop()
        src.close()
        dst.close()


def test_seeded_loss_is_reproducible() -> None:
    a, sa = _run(Impairment(loss_pct=10, seed=3))
    b, sb = _run(Impairment(loss_pct=10, seed=3))
    c, _ = _run(Impairment(loss_pct=10, seed=4))
    assert a == b
    assert sa == sb
    assert a != c
    assert 10 <= sa["lost"] <= 55
    assert sa["forwarded"] == len(a)


def test_jitter_reorders_and_blackout_drops_a_window() -> None:
    got, stats = _run(Impairment(jitter_ms=40, seed=1), n=200)
    assert sorted(got) == list(range(200))
    assert got != sorted(got)  # some overtook others
    got, stats = _run(Impairment(blackout_ms=200, blackout_at_s=0.2, seed=1), n=100, gap_s=0.005)
    assert stats["blacked_out"] >= 20
    missing = sorted(set(range(100)) - set(got))
    assert missing == list(range(missing[0], missing[-1] + 1))  # one contiguous window


def test_bounded_queue_and_replies() -> None:
    got, stats = _run(Impairment(delay_ms=300, max_queued=50), n=200)
    assert stats["overflow"] == 150
    assert len(got) == 50
    server = bind_udp("127.0.0.1", 0)
    relay = ImpairingRelay(server.getsockname()[:2], Impairment()).start()
    client = bind_udp("127.0.0.1", 0)
    try:
        client.sendto(b"ping", relay.address)
        server.settimeout(2)
        data, addr = server.recvfrom(100)
        server.sendto(b"pong", addr)
        client.settimeout(2)
        assert data == b"ping"
        assert client.recv(100) == b"pong"
    finally:
        relay.stop()
        server.close()
        client.close()


def test_bad_impairment_is_refused() -> None:
    with pytest.raises(ValueError, match="loss"):
        Impairment(loss_pct=120)
    with pytest.raises(ValueError, match="jitter"):
        Impairment(jitter_ms=-1)
