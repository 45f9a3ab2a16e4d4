"""The supervisor under real asyncio: restarts with backoff, give-up, ordered stop, hung services.

Services here are real objects implementing the Service contract; faults are what a real service does
(raise, return, stop beating). The watchdog test listens on a real notify socket.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.config import AgentConfig, parse_config
from agent.daemon.runtime import Runtime
from agent.daemon.sdnotify import Notifier
from agent.daemon.supervisor import EXIT_GAVE_UP, EXIT_OK, RestartPolicy, Supervisor
from agent.service import Progress, Service
from tests.sdnotify_listener import NotifyListener


def make_runtime(tmp_path: Path, **supervisor: Any) -> Runtime:
    section = {"backoff_initial_s": 0.02, "backoff_max_s": 0.1, "stall_timeout_s": 2.0, **supervisor}
    config: AgentConfig = parse_config({"supervisor": section, "state": {"dir": str(tmp_path)}})
    return Runtime(config, tmp_path)


class Ticker:
    """A healthy service: beats every ``period`` seconds; records how it ended."""

    def __init__(self, name: str, period: float = 0.01, journal: list[str] | None = None) -> None:
        self.name = name
        self.period = period
        self.journal = journal if journal is not None else []

    async def run(self, progress: Progress) -> None:
        try:
            while True:
                progress.beat()
                await asyncio.sleep(self.period)
        except asyncio.CancelledError:
            self.journal.append(f"{self.name} cancelled")
            raise


class Flaky:
    """Raises on its first ``failures`` runs, then ticks; records when each run started."""

    def __init__(self, name: str, failures: int) -> None:
        self.name = name
        self.failures = failures
        self.starts: list[float] = []

    async def run(self, progress: Progress) -> None:
        self.starts.append(time.monotonic())
        progress.beat()
        if len(self.starts) <= self.failures:
            raise ConnectionError("broker unreachable")
        while True:
            progress.beat()
            await asyncio.sleep(0.01)


class Freezer:
    """Beats until ``frozen`` is set, then hangs like a camera whose driver stopped delivering frames."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.frozen = asyncio.Event()
        self.thawed = asyncio.Event()

    async def run(self, progress: Progress) -> None:
        while True:
            if self.frozen.is_set():
                await self.thawed.wait()
                self.frozen.clear()
                self.thawed.clear()
            progress.beat()
            await asyncio.sleep(0.01)


async def wait_until(predicate: Any, within_s: float = 5.0) -> None:
    """Poll a condition on state the supervisor owns (it exposes no events for tests)."""
    async with asyncio.timeout(within_s):
        while not predicate():  # noqa: ASYNC110 (polling a plain attribute)
            await asyncio.sleep(0.01)


def test_services_implement_the_protocol() -> None:
    assert isinstance(Ticker("a"), Service)
    assert isinstance(Flaky("b", 1), Service)


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    policy = RestartPolicy(backoff_initial_s=0.5, backoff_max_s=8.0)
    rng = random.Random(7)
    for failures, capped in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (9, 8.0), (500, 8.0)]:
        delays = [policy.backoff(failures, rng) for _ in range(50)]
        assert all(capped / 2 <= d <= capped for d in delays), (failures, delays)
        assert len(set(delays)) > 1  # jittered: a fleet does not restart in lockstep


def test_invalid_policy_is_refused_with_a_sentence() -> None:
    with pytest.raises(ValueError, match="max_restarts"):
        RestartPolicy(max_restarts=0)


def test_duplicate_service_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unique"):
        Supervisor(make_runtime(tmp_path), [Ticker("a"), Ticker("a")])


async def test_failing_service_is_restarted_with_backoff_and_counted(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path, max_restarts=5)
    flaky = Flaky("control_link", failures=3)
    supervisor = Supervisor(runtime, [Ticker("state_reporter"), flaky], rng=random.Random(1))
    with capture_logs() as logs:
        task = asyncio.create_task(supervisor.run())
        await wait_until(lambda: len(flaky.starts) == 4)
        await asyncio.sleep(0.05)
        health = runtime.state_snapshot()["health"]
        runtime.request_stop("test")
        assert await task == EXIT_OK
    assert health["control_link"] == {
        "state": "running",
        "restarts": 3,
        "last_progress_s": pytest.approx(0, abs=0.5),
        "last_error": "ConnectionError",
    }
    assert health["state_reporter"]["restarts"] == 0
    gaps = [b - a for a, b in itertools.pairwise(flaky.starts)]
    # Backoff windows [0.01, 0.02], [0.02, 0.04], [0.04, 0.08]: each gap at least its lower bound.
    assert [g >= low for g, low in zip(gaps, [0.01, 0.02, 0.04], strict=True)] == [True] * 3
    events = [e["event"] for e in logs]
    assert events.count("service_failed") == 3
    assert events.count("service_restart_scheduled") == 3


async def test_service_that_keeps_failing_stops_the_agent_non_zero(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path, max_restarts=2, restart_window_s=30.0)
    journal: list[str] = []
    broken = Flaky("media.cam0", failures=1000)
    supervisor = Supervisor(runtime, [Ticker("state_reporter", journal=journal), broken])
    with capture_logs() as logs:
        code = await asyncio.wait_for(supervisor.run(), 5)
    assert code == EXIT_GAVE_UP
    assert len(broken.starts) == 3  # the first run plus max_restarts restarts, then give up
    assert journal == ["state_reporter cancelled"]  # the others were stopped cleanly
    assert runtime.stopping.is_set()
    gave_up = [e for e in logs if e["event"] == "service_gave_up"]
    assert gave_up[0]["service"] == "media.cam0"
    assert supervisor.health()["media.cam0"]["state"] == "failed"


async def test_failures_outside_the_window_do_not_count(tmp_path: Path) -> None:
    # Two failures allowed per 0.05 s window; four failures spaced by >= 0.04 s backoff never pile up.
    runtime = make_runtime(
        tmp_path, max_restarts=2, restart_window_s=0.05, backoff_initial_s=0.08, backoff_max_s=0.08
    )
    flaky = Flaky("control_link", failures=4)
    supervisor = Supervisor(runtime, [flaky])
    task = asyncio.create_task(supervisor.run())
    await wait_until(lambda: len(flaky.starts) == 5)
    runtime.request_stop("test")
    assert await task == EXIT_OK


async def test_a_service_that_returns_is_restarted(tmp_path: Path) -> None:
    runs = []

    class OneShot:
        name = "oneshot"

        async def run(self, progress: Progress) -> None:
            runs.append(1)
            progress.beat()

    runtime = make_runtime(tmp_path, max_restarts=50)
    task = asyncio.create_task(Supervisor(runtime, [OneShot()]).run())
    await wait_until(lambda: len(runs) >= 3)
    runtime.request_stop("test")
    assert await task == EXIT_OK
    assert runtime.state_snapshot()["health"] == {}  # health source unplugged after the run


async def test_stop_cancels_services_in_reverse_order_and_cancellation_propagates(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path)
    journal: list[str] = []
    services = [Ticker(n, journal=journal) for n in ("state_reporter", "control_link", "media.cam0")]
    supervisor = Supervisor(runtime, services)
    task = asyncio.create_task(supervisor.run())
    await wait_until(lambda: supervisor.ready)
    runtime.request_stop("SIGTERM")
    assert await asyncio.wait_for(task, 2) == EXIT_OK
    assert journal == ["media.cam0 cancelled", "control_link cancelled", "state_reporter cancelled"]
    assert {h["state"] for h in supervisor.health().values()} == {"stopped"}


async def test_service_that_ignores_cancellation_cannot_hold_the_stop_forever(tmp_path: Path) -> None:
    class Stubborn:
        name = "stubborn"

        async def run(self, progress: Progress) -> None:
            progress.beat()
            while True:
                try:
                    await asyncio.sleep(10)
                except asyncio.CancelledError:
                    await asyncio.sleep(0.5)  # slow clean-up: longer than the stop budget below
                    raise

    runtime = make_runtime(tmp_path)
    supervisor = Supervisor(runtime, [Stubborn()], stop_timeout_s=0.1)
    task = asyncio.create_task(supervisor.run())
    await wait_until(lambda: supervisor.ready)
    with capture_logs() as logs:
        runtime.request_stop("SIGTERM")
        assert await asyncio.wait_for(task, 3) == EXIT_OK
    assert "service_stop_timeout" in [e["event"] for e in logs]


async def test_ready_waits_for_the_first_beat_of_every_service(tmp_path: Path) -> None:
    class SlowStart:
        name = "media.cam0"

        async def run(self, progress: Progress) -> None:
            await asyncio.sleep(0.3)  # opening the camera and encoder
            while True:
                progress.beat()
                await asyncio.sleep(0.01)

    runtime = make_runtime(tmp_path)
    with NotifyListener() as listener:
        notifier = Notifier({"NOTIFY_SOCKET": listener.address})
        supervisor = Supervisor(runtime, [Ticker("state_reporter"), SlowStart()], notifier=notifier)
        started = time.monotonic()
        task = asyncio.create_task(supervisor.run())
        note = await asyncio.to_thread(listener.wait_for, "READY", 5)
        runtime.request_stop("test")
        await task
        stopping = await asyncio.to_thread(listener.wait_for, "STOPPING", 2)
    assert note.at - started >= 0.3
    assert note.fields["STATUS"] == "services 2/2 up"
    assert stopping.fields["STATUS"].startswith("services stopping")


async def test_hung_service_stops_watchdog_pings_until_it_recovers(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path, stall_timeout_s=0.3)
    camera = Freezer("media.cam0")
    with NotifyListener() as listener:
        notifier = Notifier({"NOTIFY_SOCKET": listener.address})
        supervisor = Supervisor(
            runtime, [Ticker("state_reporter"), camera], notifier=notifier, watchdog_interval=0.05
        )
        with capture_logs() as logs:
            task = asyncio.create_task(supervisor.run())
            healthy = await asyncio.to_thread(listener.collect, 0.5)
            camera.frozen.set()  # the pipeline hangs
            await asyncio.sleep(0.45)  # past the stall timeout and one watchdog turn
            listener.drain()  # pings queued while the camera was still within its timeout
            hung = await asyncio.to_thread(listener.collect, 0.5)
            health = runtime.state_snapshot()["health"]["media.cam0"]
            camera.thawed.set()  # frames flow again
            recovered = await asyncio.to_thread(listener.collect, 0.4)
            runtime.request_stop("test")
            assert await task == EXIT_OK

    def pings(notes: list[Any]) -> int:
        return sum(1 for n in notes if "WATCHDOG" in n.fields)

    assert pings(healthy) >= 5  # ~10 expected at 0.05 s
    assert pings(hung) == 0
    assert health["state"] == "stalled"
    assert any("stalled: media.cam0" in n.fields.get("STATUS", "") for n in listener.received)
    assert pings(recovered) >= 3
    events = [e["event"] for e in logs]
    assert events.index("watchdog_withheld") < events.index("watchdog_resumed")


async def test_a_service_stuck_in_backoff_is_not_stalled(tmp_path: Path) -> None:
    # A long restart backoff is the restart policy at work, not a hang: pings continue.
    runtime = make_runtime(tmp_path, stall_timeout_s=0.1, backoff_initial_s=1.0, backoff_max_s=1.0)
    flaky = Flaky("control_link", failures=1)
    supervisor = Supervisor(runtime, [Ticker("state_reporter"), flaky])
    task = asyncio.create_task(supervisor.run())
    await asyncio.sleep(0.4)
    assert supervisor.stalled() == []
    assert supervisor.health()["control_link"]["state"] == "backoff"
    runtime.request_stop("test")
    assert await task == EXIT_OK
