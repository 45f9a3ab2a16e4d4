"""``roomagent run`` as a real process, with a real notify socket, as systemd runs it (Type=notify)."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sdnotify_listener import NotifyListener

READY_TIMEOUT_S = 15.0  # generous: 2 cores shared by many test runs


@pytest.fixture
def spawn(agent_env: dict[str, str]) -> Iterator[object]:
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", *args],
            env=env if env is not None else agent_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:  # never leave an agent running
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(body)
    return path


def test_ready_watchdog_pings_and_graceful_sigterm(tmp_path: Path, agent_env: dict[str, str], spawn) -> None:
    state_dir = tmp_path / "state"
    config = write_config(tmp_path, f'[device]\nid = "room-101"\n[state]\ndir = "{state_dir}"\n')
    with NotifyListener() as listener:
        env = {**agent_env, "NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "400000"}
        proc = spawn("--config", str(config), env=env)
        ready = listener.wait_for("READY", READY_TIMEOUT_S)
        assert ready.fields["READY"] == "1"
        assert "up" in ready.fields["STATUS"]

        window = listener.collect(2.0)
        pings = [n.at for n in window if n.fields.get("WATCHDOG") == "1"]
        # WATCHDOG_USEC 0.4 s -> a ping every 0.2 s: ~10 in 2 s (leave room for a loaded machine).
        assert 7 <= len(pings) <= 12, pings
        gaps = sorted(b - a for a, b in itertools.pairwise(pings))
        assert 0.15 <= gaps[len(gaps) // 2] <= 0.3  # the median gap is half of WATCHDOG_USEC

        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        stopping = listener.wait_for("STOPPING", 5)
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - sent < 5.0
        assert stopping.fields["STOPPING"] == "1"

    out, err = proc.communicate()
    assert err == ""
    events = [json.loads(line) for line in out.splitlines()]
    assert all(e["device"] == "room-101" for e in events)  # device id bound on every line
    assert {"agent_ready", "agent_stop_requested", "state_flushed"} <= {e["event"] for e in events}
    assert state_dir.stat().st_mode & 0o777 == 0o700
    state = json.loads((state_dir / "state.json").read_text())
    assert state["device"] == "room-101"
    assert state["online"] is False  # stopped: the file never claims a dead agent is online
    assert state["agent"]["stopping"] is True
    assert state["health"]["state_reporter"]["restarts"] == 0
    assert (state_dir / "state.json").stat().st_mode & 0o777 == 0o600


def test_defaults_abstract_socket_and_sigint(tmp_path: Path, agent_env: dict[str, str], spawn) -> None:
    # No config: built-in defaults, state under $XDG_STATE_HOME/roomagent, no watchdog requested.
    with NotifyListener(abstract=True) as listener:
        proc = spawn(env={**agent_env, "NOTIFY_SOCKET": listener.address})
        listener.wait_for("READY", READY_TIMEOUT_S)
        proc.send_signal(signal.SIGINT)
        listener.wait_for("STOPPING", 5)
        assert proc.wait(timeout=5) == 0
    assert not any("WATCHDOG" in n.fields for n in listener.received)
    state = json.loads((Path(agent_env["XDG_STATE_HOME"]) / "roomagent" / "state.json").read_text())
    assert state["device"] == "room-sim"


def test_state_directory_from_systemd(tmp_path: Path, agent_env: dict[str, str], spawn) -> None:
    state_dir = tmp_path / "var-lib-roomagent"
    with NotifyListener() as listener:
        proc = spawn(env={**agent_env, "NOTIFY_SOCKET": listener.address, "STATE_DIRECTORY": str(state_dir)})
        listener.wait_for("READY", READY_TIMEOUT_S)
        proc.terminate()
        assert proc.wait(timeout=5) == 0
    assert (state_dir / "state.json").is_file()


@pytest.mark.parametrize(
    ("body", "key", "reason"),
    [
        ('[device]\nid = "room-1"\ncolour = "blue"\n', "device.colour", "Extra inputs are not permitted"),
        ('[device]\nid = 101\n', "device.id", "Input should be a valid string"),
        ('[mqtt]\nurl = "http://broker:1883"\n', "mqtt.url", "must start with mqtt:// or mqtts://"),
        ('[trust]\nroot = "/nonexistent/root.json"\n', "trust.root", "file not found"),
        ('[supervisor]\nstall_timeout_s = -1.0\n', "supervisor.stall_timeout_s", "greater than 0"),
        ('[device\nid = "x"\n', "(syntax)", ""),
    ],
    ids=["unknown-key", "wrong-type", "bad-url", "missing-root", "negative-timeout", "toml-syntax"],
)
def test_bad_config_is_refused_with_exit_2_before_anything_starts(
    tmp_path: Path, agent_env: dict[str, str], spawn, body: str, key: str, reason: str
) -> None:
    config = write_config(tmp_path, body)
    with NotifyListener() as listener:
        proc = spawn("--config", str(config), env={**agent_env, "NOTIFY_SOCKET": listener.address})
        out, err = proc.communicate(timeout=15)
        assert listener.drain() == []  # never told systemd anything
    assert proc.returncode == 2
    assert out == ""
    assert f"{config}: {key}: " in err
    assert reason in err
    assert not (Path(agent_env["XDG_STATE_HOME"]) / "roomagent").exists()  # no state touched


def test_every_offending_key_is_named(tmp_path: Path, spawn) -> None:
    config = write_config(tmp_path, '[device]\nid = ""\n[log]\nlevel = "loud"\n[media]\nmtu = 10\n')
    proc = spawn("--config", str(config))
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 2
    assert [line.split(": ")[1] for line in err.splitlines()] == ["device.id", "log.level", "media.mtu"]


def test_unusable_state_dir_exits_non_zero_with_a_reason(tmp_path: Path, spawn) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = write_config(tmp_path, f'[state]\ndir = "{blocker}/state"\n')
    proc = spawn("--config", str(config))
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 1
    assert "cannot create state directory" in err


def test_startup_benchmark_reports_ready_time_and_rss(agent_env: dict[str, str]) -> None:
    # A short run of `roomagent bench startup` (the real one idles 30 s over 5 agents).
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "bench", "startup", "--json", "--runs", "1", "--idle-s", "0.2"],
        env=agent_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    results = {r["metric"]: r for r in json.loads(proc.stdout)}
    ready = results["startup.exec_to_ready"]
    assert 0 < ready["baseline"] < ready["value"] < READY_TIMEOUT_S
    assert ready["ratio"] == pytest.approx(ready["value"] / ready["baseline"], rel=1e-3)
    assert results["startup.rss_after_idle"]["unit"] == "MB"
    assert results["startup.rss_after_idle"]["value"] > results["startup.rss_after_idle"]["baseline"]
    assert results["startup.clean_stops"]["value"] == 1


def test_systemd_configuration_directory_is_read_without_config(
    tmp_path: Path, agent_env: dict[str, str], spawn
) -> None:
    conf_dir = tmp_path / "etc-roomagent"
    conf_dir.mkdir()
    (conf_dir / "agent.toml").write_text('[device]\nid = "room-1"\nlocation = "HQ"\n')
    proc = spawn(env={**agent_env, "CONFIGURATION_DIRECTORY": str(conf_dir)})
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 2
    assert f"{conf_dir / 'agent.toml'}: device.location: " in err


@pytest.mark.slow
def test_hung_camera_in_real_process_stops_watchdog_pings_until_frames_flow(
    tmp_path: Path, agent_env: dict[str, str], spawn
) -> None:
    # A tester's fault script stalls the sim camera 2 s after start for 3 s: the media pipeline stops
    # making progress, so the real daemon must stop WATCHDOG=1 (systemd would restart it), then resume.
    from agent.media.keys import write_lab_key

    lab_key = tmp_path / "lab.key"
    write_lab_key(lab_key)
    config = write_config(
        tmp_path,
        f'[device]\nid = "room-hang"\n[state]\ndir = "{tmp_path / "state"}"\n'
        f'[[hal.cameras]]\nid = "cam0"\nwidth = 320\nheight = 240\nfps = 15\n'
        f'[hal.encoder]\ncodecs = ["libx264"]\n'
        f'[media]\nsink = "file://{tmp_path / "cam0.sframe"}"\n'
        f'[e2ee]\nlab_key_file = "{lab_key}"\n'
        f"[supervisor]\nstall_timeout_s = 0.8\n",
    )
    script = tmp_path / "faults.toml"
    script.write_text('[[step]]\nat_s = 2.0\nfault = "stall"\ncamera = "cam0"\nms = 3000\n')
    with NotifyListener() as listener:
        env = {**agent_env, "NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "400000"}
        proc = spawn("--config", str(config), "--sim-faults", str(script), env=env)
        listener.wait_for("READY", READY_TIMEOUT_S)
        window = listener.collect(8.0)
        proc.send_signal(signal.SIGTERM)
        listener.wait_for("STOPPING", 5)
        assert proc.wait(timeout=5) == 0
    pings = [n.at for n in window if n.fields.get("WATCHDOG") == "1"]
    assert pings, "no watchdog pings at all"
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    # Healthy pings come every 0.2 s; during the 3 s stall they stop for well over a second.
    assert max(gaps) >= 1.5, gaps
    assert any(p > pings[0] + 3.0 for p in pings), "pings never resumed after the stall"
    out, _ = proc.communicate()
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    # (the fault's details are outside the minimal telemetry allow-list; the event itself is logged)
    assert any(e["event"] == "sim_fault_applied" for e in events)


def test_sim_faults_refused_before_start(tmp_path: Path, agent_env: dict[str, str], spawn) -> None:
    script = tmp_path / "faults.toml"
    script.write_text('[[step]]\nat_s = 1.0\nfault = "melt"\n')
    proc = spawn("--sim-faults", str(script))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "melt" in err
