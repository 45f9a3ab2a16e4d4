"""`roomagent run --demo`'s preparation: an ordinary config, a trust root the agent accepts, keys kept."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent import demo_room
from agent.config import load_config
from agent.control.verify import verify_initial_root


def test_demo_config_is_ordinary_and_its_files_survive_a_restart(tmp_path: Path) -> None:
    room = demo_room.DemoRoom(tmp_path / "demo")
    try:
        config = load_config(room.prepare())
        assert room.broker is not None
        assert config.mqtt.url == room.broker.url
        assert config.media.sink == f"rtp://127.0.0.1:{room.media_port}"
        assert config.trust.root is not None
        verify_initial_root(config.trust.root.read_bytes())
        assert (tmp_path / "demo" / "customer.pem").stat().st_mode & 0o777 == 0o600
        banner = room.banner()
        assert f"roomctl status --broker {room.broker.url}" in banner
    finally:
        room.close()
    root = (tmp_path / "demo" / "root.json").read_bytes()
    fleet = (tmp_path / "demo" / "fleet.pem").read_bytes()
    again = demo_room.DemoRoom(tmp_path / "demo")
    try:
        again.prepare()
        assert (tmp_path / "demo" / "root.json").read_bytes() == root
        assert (tmp_path / "demo" / "fleet.pem").read_bytes() == fleet
    finally:
        again.close()


def test_without_mosquitto_the_demo_runs_offline_and_says_how_to_fix_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo_room, "MOSQUITTO", str(tmp_path / "no-mosquitto"))
    room = demo_room.DemoRoom(tmp_path / "demo")
    try:
        config = load_config(room.prepare())
        assert config.mqtt.url is None
        assert config.media.sink is not None  # media still shows the main job
        banner = room.banner()
        assert "mosquitto is not installed" in banner
        assert "make test-deps" in banner
        assert "roomctl status" not in banner
    finally:
        room.close()


def test_demo_and_config_together_are_refused(agent_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--demo", "--config", str(tmp_path / "agent.toml")],
        env=agent_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--demo runs its own config" in done.stderr


def test_a_second_demo_on_the_same_directory_is_refused_and_the_first_keeps_running(
    agent_env: dict[str, str],
) -> None:
    first = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--demo"],
        env=agent_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert first.stdout is not None
        for line in first.stdout:
            if "Stop with Ctrl-C." in line:
                break
        second = subprocess.run(
            [sys.executable, "-m", "agent", "run", "--demo"],
            env=agent_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 2
        demo_dir = Path(agent_env["XDG_STATE_HOME"]) / "roomagent-demo"
        assert f"a demo room is already running on {demo_dir} (pid {first.pid})" in second.stderr
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=30)
    assert first.returncode == 0


def _wait_banner(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if "Stop with Ctrl-C." in line:
            return
    raise AssertionError("the demo ended before its banner")


def test_a_broker_left_by_a_killed_demo_is_stopped_at_the_next_start(agent_env: dict[str, str]) -> None:
    argv = [sys.executable, "-m", "agent", "run", "--demo"]
    pid_file = Path(agent_env["XDG_STATE_HOME"]) / "roomagent-demo" / "broker" / "mosquitto.pid"
    first = subprocess.Popen(argv, env=agent_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_banner(first)
    broker_pid = int(pid_file.read_text().split()[0])
    first.kill()  # SIGKILL: no clean-up; the broker (its own session) lives on
    first.communicate(timeout=30)
    assert Path(f"/proc/{broker_pid}").exists()
    second = subprocess.Popen(
        argv, env=agent_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        _wait_banner(second)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{broker_pid}/cmdline").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        status = Path(f"/proc/{broker_pid}/stat")
        assert not status.exists() or status.read_text().split()[2] == "Z", "the stale broker still runs"
    finally:
        second.send_signal(signal.SIGINT)
        second.communicate(timeout=30)
    assert second.returncode == 0
