"""Daemon wiring: service providers, state directory, signals in-process, the hard stop deadline."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from agent.config import parse_config
from agent.daemon import main
from agent.daemon.runtime import Runtime
from agent.daemon.state import StateReporter
from agent.errors import StateError
from agent.service import Progress


def make_runtime(tmp_path: Path) -> Runtime:
    return Runtime(parse_config({"state": {"dir": str(tmp_path)}}), tmp_path)


@pytest.fixture
def provider_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    pkg = tmp_path / "providers"
    pkg.mkdir()
    (pkg / "ra_ok_provider.py").write_text(
        textwrap.dedent(
            """
            import asyncio

            class Beeper:
                def __init__(self, name):
                    self.name = name

                async def run(self, progress):
                    while True:
                        progress.beat()
                        await asyncio.sleep(0.01)

            def services(runtime):
                return [Beeper("control"), Beeper(f"media[{runtime.config.hal.cameras[0].id}]")]
            """
        )
    )
    (pkg / "ra_broken_provider.py").write_text("import ra_dependency_that_is_missing\n")
    monkeypatch.syspath_prepend(str(pkg))
    return pkg


def test_providers_present_are_used_absent_ones_skipped(
    tmp_path: Path, provider_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        main, "SERVICE_PROVIDERS", (("ra_not_landed_yet", "services"), ("ra_ok_provider", "services"))
    )
    services = main.build_services(make_runtime(tmp_path))
    assert [s.name for s in services] == ["state_reporter", "control", "media[cam0]"]
    assert isinstance(services[0], StateReporter)


def test_a_module_without_the_provider_function_is_skipped_with_a_warning(
    tmp_path: Path, provider_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (provider_dir / "ra_unwired.py").write_text("class ControlService: ...\n")
    providers = (("ra_unwired", "services"), ("ra_ok_provider", "services"))
    monkeypatch.setattr(main, "SERVICE_PROVIDERS", providers)
    with capture_logs() as logs:
        services = main.build_services(make_runtime(tmp_path))
    assert [s.name for s in services] == ["state_reporter", "control", "media[cam0]"]
    assert [(e["event"], e["module"]) for e in logs] == [("service_provider_missing", "ra_unwired")]


def test_a_provider_with_a_missing_dependency_is_an_error_not_a_skip(
    tmp_path: Path, provider_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(main, "SERVICE_PROVIDERS", (("ra_broken_provider", "services"),))
    with pytest.raises(ModuleNotFoundError, match="ra_dependency_that_is_missing"):
        main.build_services(make_runtime(tmp_path))


def test_state_dir_is_created_private_and_an_open_one_is_tightened(tmp_path: Path) -> None:
    fresh = main.prepare_state_dir(tmp_path / "a" / "b")
    assert fresh.stat().st_mode & 0o777 == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    main.prepare_state_dir(loose)
    assert loose.stat().st_mode & 0o777 == 0o700
    (tmp_path / "file").write_text("x")
    with pytest.raises(StateError, match="cannot create state directory"):
        main.prepare_state_dir(tmp_path / "file")


async def test_sigterm_in_process_stops_serve_cleanly(tmp_path: Path) -> None:
    runtime = make_runtime(tmp_path)
    reporter = StateReporter(runtime)
    deadline = main.StopDeadline(runtime.logger, seconds=30)  # armed on stop; cancelled below
    task = asyncio.create_task(main.serve(runtime, [reporter], environ={}, deadline=deadline))
    async with asyncio.timeout(5):
        while reporter.writes == 0:  # noqa: ASYNC110 (polling a plain counter)
            await asyncio.sleep(0.01)
    os.kill(os.getpid(), signal.SIGTERM)  # handled by serve's loop signal handler, not the default action
    assert await asyncio.wait_for(task, 5) == 0
    deadline.cancel()
    assert runtime.stopping.is_set()


def test_stop_deadline_ends_a_process_whose_stop_hangs(tmp_path: Path, agent_env: dict[str, str]) -> None:
    # A process whose clean-up hangs (here: the main thread sleeps) is ended by the deadline thread.
    script = textwrap.dedent(
        """
        import time, structlog
        from agent.daemon.main import StopDeadline
        StopDeadline(structlog.get_logger(), seconds=0.2).arm("SIGTERM")
        time.sleep(30)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], env=agent_env, capture_output=True, text=True, timeout=20
    )
    assert proc.returncode == 1
    assert "stop_deadline_exceeded" in proc.stdout


def test_progress_counts_beats_and_reset_opens_a_fresh_window() -> None:
    now = [100.0]
    progress = Progress("media[cam0]", clock=lambda: now[0])
    now[0] = 105.0
    assert progress.age() == 5.0
    progress.beat()
    assert (progress.beats, progress.last_beat, progress.age()) == (1, 105.0, 0.0)
    now[0] = 120.0
    progress.reset()
    assert (progress.beats, progress.last_beat) == (1, 120.0)


def test_a_provider_that_fails_to_build_ends_run_with_exit_1_and_a_log_line(
    tmp_path: Path, provider_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (provider_dir / "ra_failing_provider.py").write_text(
        "def services(runtime):\n    raise OSError('sink unreachable')\n"
    )
    monkeypatch.setattr(main, "SERVICE_PROVIDERS", (("ra_failing_provider", "services"),))
    config = parse_config({"state": {"dir": str(tmp_path)}, "log": {"format": "json"}})
    try:
        assert main.run(config) == 1
    finally:
        structlog.contextvars.clear_contextvars()  # run() binds the device id for the process
    out = capsys.readouterr().out
    assert '"event": "service_build_failed"' in out
    assert '"error": "OSError"' in out


def test_state_dir_preparation_removes_crash_leftover_temp_files(tmp_path: Path) -> None:
    # A crash between write and rename leaves ".state.json.tmp-PID-TID"; the real file is intact.
    from agent.daemon.main import prepare_state_dir
    from agent.persist import atomic_write_json

    state = tmp_path / "state"
    atomic_write_json(state / "running" / "config.json", {"version": 3})
    leftover = state / "running" / ".config.json.tmp-4242-139872"
    leftover.write_bytes(b'{"vers')  # torn
    unrelated = state / ".keepme"
    unrelated.write_text("x")
    prepare_state_dir(state)
    assert not leftover.exists()
    assert unrelated.exists()
    assert (state / "running" / "config.json").read_text() == '{"version":3}'
