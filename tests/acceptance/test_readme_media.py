"""The README's media flow, run as written: a room sends E2EE video, `roomagent receive` verifies it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.acceptance import readme_blocks
from tests.acceptance.make_cmd import make_argv, program_pids

SECTION = "Hardware testers"
README_PORT = "5004"


def _free_udp_port() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_a_room_sends_and_receive_verifies_as_the_readme_shows(
    agent_env: dict[str, str], tmp_path: Path
) -> None:
    commands = readme_blocks.section_commands(SECTION, containing="roomagent receive")
    config = readme_blocks.file_block("agent.toml")
    assert f"127.0.0.1:{README_PORT}" in config
    # The README's fixed port, swapped for a free one: tests run beside other tests.
    port = _free_udp_port()
    (tmp_path / "agent.toml").write_text(config.replace(README_PORT, port))
    by_verb = {c.split()[1]: c.replace(README_PORT, port) for c in commands if c.startswith("roomagent ")}
    assert set(by_verb) >= {"lab-key", "check-config", "run", "receive"}

    def run(cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            readme_blocks.argv(cmd),
            cwd=tmp_path,
            env=agent_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    assert run(by_verb["lab-key"]).returncode == 0
    checked = run(by_verb["check-config"])
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == "agent.toml: ok"

    room = subprocess.Popen(
        readme_blocks.argv(by_verb["run"]),
        cwd=tmp_path,
        env=agent_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        received = run(by_verb["receive"], timeout=90)
    finally:
        room.send_signal(signal.SIGINT)  # the README's Ctrl-C
        room_out, room_err = room.communicate(timeout=30)
    assert room.returncode == 0, room_err[-2000:]
    assert received.returncode == 0, received.stderr
    report = json.loads(received.stdout)
    assert report["frames_decoded"] >= 30, report  # 10 s of a 30 fps camera, from a loaded machine
    assert report["decrypt_failures"] == 0
    assert report["stamps_out_of_order"] == 0
    assert received.stderr.strip().splitlines()[-1].startswith(f"decoded {report['frames_decoded']} of ")
    assert '"event": "agent_ready"' in room_out


def test_make_demo_as_the_readme_shows_it(agent_env: dict[str, str], tmp_path: Path) -> None:
    (cmd,) = [
        c for c in readme_blocks.section_commands(SECTION, containing="make demo") if c.startswith("make")
    ]
    demo = subprocess.Popen(
        make_argv(cmd),
        cwd=tmp_path,
        env=agent_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    time.sleep(8)
    # Ctrl-C, as the demo receives it (make itself would die of the signal and hide the demo's exit).
    for pid in program_pids(demo.pid, " demo"):
        os.kill(pid, signal.SIGINT)
    out, err = demo.communicate(timeout=30)
    assert demo.returncode == 0, err[-2000:]
    # The README's claim: two simulated rooms meeting, E2EE video + audio both ways.
    lines = {line.split(":")[0]: line for line in out.splitlines() if "_to_" in line.split(":")[0]}
    assert set(lines) == {"A_to_B", "B_to_A"}, out
    for line in lines.values():
        shown = re.search(r"video sent \d+ shown (\d+)", line)
        played = re.search(r"audio sent \d+ played (\d+)", line)
        assert shown, line
        assert int(shown[1]) > 0, line
        assert played, line
        assert int(played[1]) > 0, line
        assert "decrypt failures 0," in line, line
    assert "Traceback" not in err
