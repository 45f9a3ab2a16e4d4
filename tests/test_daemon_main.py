"""Daemon wiring: the composition root, state directory, signals in-process, the hard stop deadline."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.daemon import main, room
from agent.daemon.runtime import Runtime
from agent.daemon.state import StateReporter
from agent.errors import StateError
from agent.service import Progress


def make_runtime(tmp_path: Path) -> Runtime:
    return Runtime(parse_config({"state": {"dir": str(tmp_path)}}), tmp_path)


def _room_config(tmp_path: Path, **extra: object) -> dict[str, object]:
    return {
        "device": {"id": "room-7"},
        "state": {"dir": str(tmp_path / "state")},
        "hal": {"cameras": [{"id": "cam0", "width": 160, "height": 120, "fps": 10}]},
        "media": {"sink": f"file://{tmp_path / 'cam0.sframe'}"},
        "log": {"format": "json"},
        **extra,
    }


def test_the_room_is_built_in_one_place_with_every_command_handled(tmp_path: Path) -> None:
    config = parse_config(_room_config(tmp_path))
    runtime = Runtime(config, main.prepare_state_dir(tmp_path / "state"))
    built = room.build_room(config, runtime)
    names = [s.name for s in built.services]
    assert names == ["state_reporter", "control", "media[cam0]", "privacy", "power", "webrtc"]
    assert isinstance(built.services[0], StateReporter)
    assert built.services[-1] is built.webrtc  # started last, stopped first
    assert built.control.commands.names() == room.HANDLED
    assert built.media.pipelines[0].camera_id == "cam0"
    assert built.guard.key_source is built.media.keys  # privacy drives the media path's sender


def _run_with_fault(
    tmp_path: Path, agent_env: dict[str, str], fault: list[str]
) -> subprocess.CompletedProcess[str]:
    """``roomagent run`` in a fresh process with ``fault`` (Python lines) applied to the real room first."""
    import json

    config = tmp_path / "agent.json"
    config.write_text(json.dumps(_room_config(tmp_path)))
    script = "\n".join(
        [
            "import json, sys",
            "from agent.config import parse_config",
            "from agent.daemon import main, room",
            "from agent.media.commands import MediaCommands",
            *fault,
            f"sys.exit(main.run(parse_config(json.loads(open({str(config)!r}).read()))))",
        ]
    )
    return subprocess.run(
        [sys.executable, "-c", script], env=agent_env, capture_output=True, text=True, timeout=60
    )


def test_a_command_without_a_handler_refuses_to_start_with_exit_2_naming_it(
    tmp_path: Path, agent_env: dict[str, str]
) -> None:
    fault = [
        "real = MediaCommands.handlers",
        "MediaCommands.handlers = lambda self: {k: v for k, v in real(self).items() if k != 'ptz'}",
    ]
    proc = _run_with_fault(tmp_path, agent_env, fault)
    assert proc.returncode == 2, proc.stderr
    assert "no handler for command(s) ptz" in proc.stderr
    assert '"event": "room_incomplete"' in proc.stdout


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


def test_a_part_that_fails_to_build_ends_run_with_exit_1_and_a_log_line(
    tmp_path: Path, agent_env: dict[str, str]
) -> None:
    fault = ["def unreachable(config): raise OSError('sink unreachable')", "room.build_media = unreachable"]
    proc = _run_with_fault(tmp_path, agent_env, fault)
    assert proc.returncode == 1, proc.stderr
    assert '"event": "service_build_failed"' in proc.stdout
    assert '"error": "OSError"' in proc.stdout


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
