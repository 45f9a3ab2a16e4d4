"""Wall clock jumping back and forth: expiry and ordering decisions stay correct.

The verifier never reads the clock (``VerifyContext.now`` is injected), so these scenarios drive it with
a clock that jumps by years and days in both directions, as an RTC battery failure, a bad NTP server or
an attacker on the network would make it, and check each decision:

- ordering is by the signed ``version`` only: no clock position lets an older version back in;
- expiry and "issued in the future" follow the injected clock, so a document refused while the clock
  was wrong is accepted once it is right again (and nothing applied in between is lost);
- the verifier really does not read the system clock: a context set in 2001 judges by 2001;
- the same holds for the real ControlService with its injected clock: a year back, three days ahead,
  then right again; each version is applied exactly once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.control.errors import Rejected
from agent.control.service import ControlService
from agent.control.standalone import FileApplyTarget
from agent.control.verify import TrustedRoot, VerifyContext, verify_document, verify_initial_root
from agent.fleet.sim import FleetKeys
from agent.schema.policy import PolicyBody

pytestmark = pytest.mark.reliability

T0 = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
KEYS = FleetKeys.generate(seed=b"clock-jumps")


class Device:
    """The verifier plus the bookkeeping an apply does (last applied version per kind)."""

    def __init__(self, root: TrustedRoot) -> None:
        self.root = root
        self.last: dict[str, int] = {}
        self.applied: list[int] = []

    def receive(self, raw: bytes, now: dt.datetime) -> str:
        ctx = VerifyContext(device_id="room-101", groups=("hq",), now=now, last_versions=dict(self.last))
        try:
            doc = verify_document(raw, "policy", self.root, ctx)
        except Rejected as exc:
            return exc.reason
        self.last["policy"] = doc.version
        self.applied.append(doc.version)
        return "applied"


def policy(version: int, *, issued: dt.datetime, valid_for: dt.timedelta = dt.timedelta(days=30)) -> bytes:
    body = PolicyBody().model_dump(mode="json")
    body["camera"]["remote_ptz"] = False  # a tightening: the fleet key alone may sign it
    payload = FleetKeys.payload(
        "policy", version, body, now=issued + dt.timedelta(seconds=5), groups=("hq",), valid_for=valid_for
    )
    return KEYS.sign("policy", payload, KEYS.fleet)


@pytest.fixture
def device() -> Device:
    return Device(verify_initial_root(KEYS.root_envelope(now=T0 - dt.timedelta(days=1))))


def test_clock_jumping_back_never_readmits_an_older_version(device: Device) -> None:
    v1 = policy(1, issued=T0)
    v2 = policy(2, issued=T0 + dt.timedelta(hours=1))
    v3 = policy(3, issued=T0 - dt.timedelta(hours=2))  # signed on a plane whose clock was behind
    assert device.receive(v2, T0 + dt.timedelta(hours=2)) == "applied"
    # The clock jumps back a day, then a year: v1 (older) is still a rollback, whatever the time.
    for now in (T0 - dt.timedelta(days=1) + dt.timedelta(hours=2), T0 - dt.timedelta(days=300), T0):
        assert device.receive(v1, now) in ("rollback", "not_yet_valid")
        assert device.receive(v2, now) in ("rollback", "not_yet_valid"), "redelivery is never re-applied"
    # Ordering is by version, not by timestamps: v3 was issued "earlier" yet is newer.
    assert device.receive(v3, T0 + dt.timedelta(hours=3)) == "applied"
    assert device.applied == [2, 3]


def test_expiry_follows_the_clock_both_ways(device: Device) -> None:
    short = policy(1, issued=T0, valid_for=dt.timedelta(hours=1))
    # Clock jumped forward two days (bad NTP): the document is expired, nothing changes.
    assert device.receive(short, T0 + dt.timedelta(days=2)) == "expired"
    assert device.last == {}
    # Clock jumped back far (dead RTC battery, 2001): issued in the future, refused, nothing changes.
    assert device.receive(short, dt.datetime(2001, 1, 1, tzinfo=dt.UTC)) == "not_yet_valid"
    assert device.last == {}
    # Within the clock-skew allowance a slightly slow clock still accepts a fresh document.
    assert device.receive(short, T0 - dt.timedelta(seconds=200)) == "applied"
    # Jumping forward past its expiry does not undo what was applied, and a newer one still goes in.
    v2 = policy(2, issued=T0 + dt.timedelta(days=2))
    assert device.receive(v2, T0 + dt.timedelta(days=2, minutes=1)) == "applied"
    assert device.applied == [1, 2]


def test_a_frozen_feed_is_caught_when_the_clock_moves_on(device: Device) -> None:
    """Freeze attack: the broker keeps replaying the last document; once it expires it is refused."""
    doc = policy(1, issued=T0, valid_for=dt.timedelta(days=7))
    assert device.receive(doc, T0 + dt.timedelta(minutes=1)) == "applied"
    device.last = {}  # even a device that lost its version record (fresh state) refuses it...
    assert device.receive(doc, T0 + dt.timedelta(days=8)) == "expired"  # ...once the clock is past expiry


def test_the_verifier_does_not_read_the_system_clock(device: Device) -> None:
    """A document valid only in 2001 is accepted with now=2001: the real clock (2026+) is never read."""
    old = dt.datetime(2001, 3, 1, tzinfo=dt.UTC)
    device.root = verify_initial_root(KEYS.root_envelope(now=old))
    doc = policy(1, issued=old, valid_for=dt.timedelta(days=1))
    assert device.receive(doc, old + dt.timedelta(hours=1)) == "applied"


class _Beat:
    def beat(self) -> None:
        pass


async def test_the_control_service_under_a_jumping_clock(tmp_path: Path) -> None:
    """The real ControlService (offline, documents handed to it) with its injected clock jumping."""
    clock = [T0]
    state = tmp_path / "state"
    root = tmp_path / "root.json"
    root.write_bytes(KEYS.root_envelope(now=T0 - dt.timedelta(days=1)))
    config = parse_config(
        {
            "device": {"id": "room-101", "groups": ["hq"]},
            "trust": {"root": str(root)},
            "state": {"dir": str(state)},
            "media": {"enabled": False},
        }
    )
    service = ControlService(
        config, FileApplyTarget(state / "running"), state_dir=state, clock=lambda: clock[0]
    )
    task = asyncio.create_task(service.run(_Beat()), name="test.control")
    await asyncio.sleep(0.05)

    async def push(raw: bytes, version: int) -> tuple[str, str | None]:
        seen = len(service.acks)
        await service.handle("policy", raw)
        for _ in range(200):
            fresh = [a for a, _ in service.acks[seen:] if a.doc_version == version]
            if fresh:
                return fresh[-1].status, fresh[-1].reason
            await asyncio.sleep(0.01)
        raise AssertionError(f"no ack for policy v{version}")

    try:
        v1 = policy(1, issued=T0)
        v2 = policy(2, issued=T0 + dt.timedelta(minutes=10), valid_for=dt.timedelta(hours=1))
        assert await push(v1, 1) == ("applied", None)
        clock[0] = T0 - dt.timedelta(days=365)  # RTC reset a year back
        assert await push(v2, 2) == ("rejected", "not_yet_valid")
        assert await push(v1, 1) in (("applied", None), ("rejected", "rollback"))  # never re-applied
        clock[0] = T0 + dt.timedelta(days=3)  # NTP overshoots: v2 has expired meanwhile
        assert await push(v2, 2) == ("rejected", "expired")
        clock[0] = T0 + dt.timedelta(minutes=15)  # the clock is right again: v2 goes in
        assert await push(v2, 2) == ("applied", None)
        assert service.state.applied_versions()["policy"] == 2
        applied = [e for e in service.audit.path.read_text().splitlines() if '"event":"applied"' in e]
        assert len(applied) == 2, "each version applied exactly once"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
