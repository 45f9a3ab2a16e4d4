"""The README's first set-up command, `make run`: a live demo room, and the roomctl command it prints."""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.acceptance import readme_blocks
from tests.acceptance.make_cmd import make_argv, program_pids

SECTION = "Set-up on a fresh Debian machine"


def _lines(stream: object, out: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        out.put(line)


def test_make_run_shows_a_live_room_that_roomctl_status_sees(
    agent_env: dict[str, str], tmp_path: Path
) -> None:
    commands = readme_blocks.section_commands(SECTION, containing="make run")
    assert commands[0] == "make run", "make run must stay the README's first set-up command"
    proc = subprocess.Popen(
        make_argv(commands[0]),
        cwd=tmp_path,
        env=agent_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
    seen: list[str] = []
    try:
        # 1. The banner names the exact command to run in a second terminal.
        status_cmd = None
        deadline = time.monotonic() + 120
        while status_cmd is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert proc.poll() is None, "".join(seen)
                continue
            seen.append(line)
            if "roomctl status --broker" in line:
                status_cmd = line.strip()
        assert status_cmd, "no roomctl command printed:\n" + "".join(seen)
        # roomctl trusts only rooms of a customer-signed roster: the demo made one and names it.
        assert re.search(
            r"status --broker mqtt://127\.0\.0\.1:\d+ --roster \S+roster\.env\.json --root \S+$", status_cmd
        )

        # 2. That exact command shows the room online and verified against the roster (it connects
        # within a few seconds); a terminal wide enough that the table's cells are not cut.
        table = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = subprocess.run(
                shlex.split(status_cmd),
                env={**agent_env, "COLUMNS": "200"},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            table = done.stdout + done.stderr
            if done.returncode == 0 and re.search(r"room-demo\s*│\s*verified\s*│\s*yes", table):
                break
            time.sleep(1)
        else:
            pytest.fail(f"roomctl status never showed room-demo online:\n{table}\n{''.join(seen)}")

        # 3. The demo keys manage it: a policy signed by the demo fleet and customer keys is applied.
        demo = Path(agent_env["XDG_STATE_HOME"]) / "roomagent-demo"
        # The printed command's --broker/--roster/--root: roomctl checks every ack against the roster.
        broker_and_trust = shlex.split(status_cmd)[2:]
        roomctl = [sys.executable, "-m", "agent.fleet"]
        template = subprocess.run(
            [*roomctl, "template", "policy"], env=agent_env, capture_output=True, text=True, check=True
        )
        policy = json.loads(template.stdout)
        policy["targets"] = {"devices": ["room-demo"], "groups": []}
        (tmp_path / "policy.json").write_text(json.dumps(policy))
        for key, source in (("fleet.pem", "policy.json"), ("customer.pem", "policy.env")):
            subprocess.run(
                [*roomctl, "sign", "policy", source, "--key", str(demo / key), "--out", "policy.env"],
                cwd=tmp_path,
                env=agent_env,
                check=True,
                capture_output=True,
            )
        pushed = subprocess.run(
            [*roomctl, "push", "policy.env", *broker_and_trust, "--device", "room-demo", "--wait", "60"],
            cwd=tmp_path,
            env=agent_env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
        assert "applied" in pushed.stdout

        # 4. The room's stream reaches the receiver, decrypted and verified.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = lines.get(timeout=60)
            seen.append(line)
            if '"demo_receiver"' in line and '"frames_decoded": 0,' not in line:
                assert '"decrypt_failures": 0' in line, line
                break
        else:
            pytest.fail("no frames reached the demo receiver:\n" + "".join(seen))
    finally:
        # Ctrl-C as the agent receives it (make itself would die of the signal and hide the agent's exit).
        for pid in program_pids(proc.pid, " run --demo"):
            os.kill(pid, signal.SIGINT)
        proc.wait(timeout=30)
    rest = []
    while not lines.empty():
        rest.append(lines.get())
    assert proc.returncode == 0, "".join(seen + rest)[-3000:]
    assert any(line.startswith("demo receiver: decoded ") for line in rest + seen)
    # The private broker went with the room.
    broker_dir = Path(agent_env["XDG_STATE_HOME"]) / "roomagent-demo" / "broker"
    assert not (broker_dir / "mosquitto.pid").exists()
    for pid_dir in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (pid_dir / "cmdline").read_bytes()
        except OSError:
            continue
        assert str(broker_dir).encode() not in cmdline, "the demo broker outlived the room"
