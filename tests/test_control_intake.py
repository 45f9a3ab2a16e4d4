"""The link's outbound queues and the service's intake lanes, on the real objects (no broker needed).

Acks of authenticated documents are never dropped and go first; a flood of garbage is bounded in
bytes and rate limited per topic while a message naming a signer key id jumps the line.
"""

from __future__ import annotations

import datetime as dt

from agent.config import MqttSection
from agent.control.link import ControlLink, Topics
from agent.control.rejections import Intake, RejectionLedger, plausible

T0 = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)


async def _nothing(topic: str, kind: str, payload: bytes) -> None:
    return None


def test_priority_acks_survive_a_full_outbox_and_go_first() -> None:
    link = ControlLink(
        MqttSection(url="mqtt://127.0.0.1:1"), Topics("p", "room-1", ()), _nothing, lambda _: b"{}"
    )
    link.publish_nowait("p/devices/room-1/ack", b"ack-of-a-signed-document", priority=True)
    for i in range(1500):  # garbage rejections' acks, audit entries, state: more than the queue holds
        link.publish_nowait("p/devices/room-1/audit", str(i).encode())
    link.publish_nowait("p/devices/room-1/ack", b"second-signed-ack", priority=True)

    assert link.dropped == 500
    sent = []
    while (item := link._next_outgoing()) is not None:
        sent.append(item[0][1])
    assert sent[:2] == [b"ack-of-a-signed-document", b"second-signed-ack"]
    assert sent[2] == b"500"  # the oldest ordinary messages went, the newest stayed
    assert len(sent) == 1002


def test_a_message_naming_a_signer_key_id_jumps_the_garbage() -> None:
    intake = Intake(garbage_per_s=10)
    keyid = b"ab" * 32
    for i in range(1000):
        raw = b"junk %d" % i
        intake.put("t/cmd", "command", raw, plausible(raw, frozenset({keyid}), 65536), T0)
    valid = b'{"signatures":[{"keyid":"' + keyid.upper() + b'"}]}'
    intake.put("t/cmd", "command", valid, plausible(valid, frozenset({keyid}), 65536), T0)

    assert intake.take() == ("t/cmd", "command", valid)
    # The rest: 10 garbage messages admitted this second (the bucket), 990 counted unparsed.
    taken = 0
    while intake.take() is not None:
        taken += 1
    assert taken == 10
    assert intake.unprocessed == {"t/cmd": 990}


def test_lanes_are_bounded_in_bytes() -> None:
    intake = Intake(plausible_max_bytes=200_000, garbage_per_s=1e6)
    big = b"x" * 65536
    for _ in range(10):
        intake.put("t/cmd", "command", big, True, T0)
    assert len(intake.plausible) == 3
    assert intake.plausible_dropped == 7


def test_unauthenticated_rejections_are_coalesced_within_a_daily_budget() -> None:
    ledger = RejectionLedger(acks_per_s=5, ack_burst=20, audit_budget_bytes=4096, flush_interval_s=60)
    decisions = [ledger.admit("malformed", "t/cmd", b"junk %d" % i, T0) for i in range(100)]
    assert decisions[0].audit
    assert not any(d.audit for d in decisions[1:])
    assert sum(d.ack for d in decisions) == 20  # the burst, then 5/s
    # The same bytes again: never acked twice.
    assert not ledger.admit("malformed", "t/cmd", b"junk 0", T0 + dt.timedelta(seconds=30)).ack
    flushed = ledger.flush(T0 + dt.timedelta(seconds=61))
    assert len(flushed) == 1
    assert flushed[0][:2] == ("malformed", "t/cmd")
    assert "100 more" in flushed[0][2]
    assert ledger.summary()["malformed t/cmd"]["count"] == 101
    # Past the daily budget only the counters grow.
    ledger.spend(4096)
    ledger.admit("malformed", "t/cmd", b"more", T0 + dt.timedelta(seconds=90))
    assert ledger.flush(T0 + dt.timedelta(seconds=200)) == []
    assert ledger.unaudited == 1
    # A new day: a fresh budget and a fresh first entry.
    assert ledger.admit("malformed", "t/cmd", b"tomorrow", T0 + dt.timedelta(days=1)).audit
