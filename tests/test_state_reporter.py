"""The state reporter against a real state directory: periodic and on-change writes, final flush, ENOSPC."""

from __future__ import annotations

import asyncio
import errno
import json
import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.config import parse_config
from agent.daemon.runtime import Runtime
from agent.daemon.state import StateReporter
from agent.service import Progress


def make_runtime(tmp_path: Path, interval: float = 30.0) -> Runtime:
    config = parse_config({"device": {"id": "room-7"}, "state": {"report_interval_s": interval}})
    return Runtime(config, tmp_path)


def read_state(tmp_path: Path) -> dict[str, object]:
    return json.loads((tmp_path / "state.json").read_text())


def names_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def eventually(check: object, within_s: float = 3.0) -> None:
    async with asyncio.timeout(within_s):
        while True:
            try:
                check()  # type: ignore[operator]
                return
            except (AssertionError, FileNotFoundError):
                await asyncio.sleep(0.01)


async def test_writes_at_start_on_change_and_flushes_offline_on_stop(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path, interval=30.0)  # long: every write below is an on-change write
    reporter = StateReporter(runtime)
    progress = Progress(reporter.name)
    task = asyncio.create_task(reporter.run(progress))

    def first() -> None:
        state = read_state(tmp_path)
        assert state["device"] == "room-7"
        assert state["online"] is False
        assert state["applied"] == {"root": None, "policy": None, "config": None}
        assert progress.beats >= 1

    await eventually(first)

    # The control link comes online and applies a policy: the file follows at once, not in 30 s.
    runtime.update_state(online=True, applied={"policy": 7}, identity={"ed25519": "pub"})

    def changed() -> None:
        state = read_state(tmp_path)
        assert state["online"] is True
        assert state["applied"] == {"root": None, "policy": 7, "config": None}
        assert state["identity"] == {"ed25519": "pub"}

    await eventually(changed, within_s=1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):  # cancellation is not swallowed
        await task
    final = read_state(tmp_path)
    assert final["online"] is False
    assert final["applied"] == {"root": None, "policy": 7, "config": None}
    assert names_in(tmp_path) == ["state.json"]  # no temp files left behind


async def test_writes_periodically_without_changes(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path, interval=0.05)
    reporter = StateReporter(runtime)
    task = asyncio.create_task(reporter.run(Progress(reporter.name)))
    await asyncio.sleep(0.4)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert reporter.writes >= 4


async def test_full_disk_keeps_the_old_state_and_the_service_alive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = make_runtime(tmp_path, interval=0.05)
    reporter = StateReporter(runtime)
    progress = Progress(reporter.name)
    task = asyncio.create_task(reporter.run(progress))
    await eventually(lambda: read_state(tmp_path))
    before = (tmp_path / "state.json").read_bytes()

    real_write = os.write

    def enospc(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with capture_logs() as logs:
        monkeypatch.setattr("agent.persist.os.write", enospc)
        runtime.update_state(online=True)
        beats = progress.beats
        await asyncio.sleep(0.2)
        assert progress.beats > beats  # still making progress: a full disk is not a hang
        assert (tmp_path / "state.json").read_bytes() == before  # old state intact, never torn
        monkeypatch.setattr("agent.persist.os.write", real_write)

        def recovered() -> None:
            assert read_state(tmp_path)["online"] is True

        await eventually(recovered)  # space freed: the next turn writes the new state
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    failures = [e for e in logs if e["event"] == "state_write_failed"]
    assert failures
    assert "No space left on device" in failures[0]["reason"]
    assert names_in(tmp_path) == ["state.json"]


def test_reserved_state_fields_are_refused(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path)
    with pytest.raises(ValueError, match="health"):
        runtime.update_state(health={"fake": "ok"})
    assert "fake" not in json.dumps(runtime.state_snapshot())


async def test_idling_between_writes_is_not_a_stall(tmp_path: Path) -> None:
    # Found by running the daemon with stall_timeout_s 2 and the default 5 s write interval: the
    # reporter beat only per write and the watchdog took it for hung.
    config = parse_config({"state": {"report_interval_s": 5.0}, "supervisor": {"stall_timeout_s": 0.3}})
    runtime = Runtime(config, tmp_path)
    reporter = StateReporter(runtime)
    progress = Progress(reporter.name)
    task = asyncio.create_task(reporter.run(progress))
    ages = []
    for _ in range(8):
        await asyncio.sleep(0.1)
        ages.append(progress.age())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert max(ages) < 0.3
    assert reporter.writes == 2  # the first write and the final flush: no change, interval not reached


async def test_a_burst_of_changes_is_written_once(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path, interval=30.0)
    reporter = StateReporter(runtime)
    task = asyncio.create_task(reporter.run(Progress(reporter.name)))
    await eventually(lambda: read_state(tmp_path))
    for version in range(1, 51):  # e.g. a control link replaying 50 retained documents
        runtime.update_state(applied={"config": version})
        await asyncio.sleep(0.001)

    def last_one_written() -> None:
        assert read_state(tmp_path)["applied"] == {"root": None, "policy": None, "config": 50}

    await eventually(last_one_written)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert reporter.writes <= 5  # first write, one or two for the burst, the final flush
