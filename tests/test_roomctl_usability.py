"""roomctl for people: help on every argument, --json beside every table, shell completion, errors
that name the broker, and no traceback when the reader of its output goes away."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.fleet.cli import build_parser
from tests.fleet_trust import Fleet

# fleet-sim belongs to the fleet simulator (agent/fleet/sim.py), which has its own owner.
_NOT_OURS = {"fleet-sim"}
_TABLES = {
    "status",
    "push",
    "roster show",
    "lock",
    "unlock",
    "deprovision",
    "ptz",
    "keyframe",
    "restart-pipeline",
    "reboot",
    "restart-agent",
    "meeting start",
    "meeting stop",
    "audit fetch",
}


def _commands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                path = f"{prefix} {name}".strip()
                nested = _commands(sub, path)
                out.update(nested or {path: sub})
    return out


def test_every_argument_has_help_and_every_table_has_json() -> None:
    commands = _commands(build_parser())
    assert set(commands) >= _TABLES
    missing = [
        f"{name}: {'/'.join(action.option_strings) or action.dest}"
        for name, parser in commands.items()
        if name.split()[0] not in _NOT_OURS
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
        and not (action.help and action.help.strip())
    ]
    assert missing == []
    no_json = [name for name in _TABLES if "--json" not in commands[name]._option_string_actions]
    assert no_json == []


def test_shell_completion_through_argcomplete(tmp_path: Path, agent_env: dict[str, str]) -> None:
    out = tmp_path / "completions"
    line = "roomctl ros"
    env = {
        **agent_env,
        "_ARGCOMPLETE": "1",
        "_ARGCOMPLETE_IFS": "\n",
        "COMP_LINE": line,
        "COMP_POINT": str(len(line)),
        "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
    }
    result = subprocess.run(
        [sys.executable, "-m", "agent.fleet"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert out.read_text().split() == ["roster"]
    line = "roomctl lock --cust"
    env.update(COMP_LINE=line, COMP_POINT=str(len(line)))
    subprocess.run(
        [sys.executable, "-m", "agent.fleet"], env=env, capture_output=True, timeout=60, check=True
    )
    assert "--customer-key" in out.read_text().split()
    # The documented hook: eval "$(register-python-argcomplete roomctl)".
    register = shutil.which("register-python-argcomplete", path=str(Path(sys.executable).parent))
    assert register is not None
    hook = subprocess.run([register, "roomctl"], capture_output=True, text=True, timeout=60, check=True)
    assert "roomctl" in hook.stdout


def test_connection_refused_names_the_broker_and_no_traceback(
    tmp_path: Path, agent_env: dict[str, str]
) -> None:
    fleet = Fleet(tmp_path, agent_env)
    fleet.enroll("room-a", None)
    url = "mqtt://127.0.0.1:1"
    for argv in (
        ("status", "--broker", url, *fleet.trust),
        ("lock", "room-a", "--broker", url, "--customer-key", str(fleet.keys["customer"]), *fleet.trust),
        (
            "meeting",
            "start",
            "--rooms",
            "room-a",
            "--broker",
            url,
            "--customer-key",
            str(fleet.keys["customer"]),
            *fleet.trust,
        ),
    ):
        result = fleet.roomctl(*argv)
        assert result.returncode == 4, (argv, result.stderr)
        assert url in result.stderr
        assert "connection refused" in result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize("argv", [("template", "config"), ("roster", "show", "--json")])
def test_a_closed_pipe_is_not_a_traceback(
    argv: tuple[str, ...], tmp_path: Path, agent_env: dict[str, str]
) -> None:
    fleet = Fleet(tmp_path, agent_env)
    fleet.enroll("room-a", None)
    args = [*argv, *fleet.trust] if argv[0] == "roster" else list(argv)
    read, write = os.pipe()
    os.close(read)  # the reader (``head``) has already gone
    try:
        result = subprocess.run(
            [sys.executable, "-m", "agent.fleet", *args],
            env=agent_env,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write)
    assert result.returncode == 141
    assert result.stderr == ""


def test_json_output_of_roster_show_is_machine_readable(tmp_path: Path, agent_env: dict[str, str]) -> None:
    fleet = Fleet(tmp_path, agent_env)
    fleet.enroll("room-a", None)
    result = fleet.roomctl("roster", "show", "--json", *fleet.trust)
    assert json.loads(result.stdout)["rooms"]["room-a"]["groups"] == ["hq"]
