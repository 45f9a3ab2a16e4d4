"""Every `roomagent` argument explains itself, and the shell can complete commands (argcomplete)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from agent.cli import build_parser


def _undocumented(parser: argparse.ArgumentParser, path: str) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {a.dest for a in action._choices_actions if a.help}
            for name, sub in action.choices.items():
                if name not in helped:
                    missing.append(f"{path} {name} (the command)")
                missing += _undocumented(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction | argparse._VersionAction) and not action.help:
            missing.append(f"{path} {action.option_strings or action.dest}")
    return missing


def test_every_argument_of_every_command_has_help() -> None:
    assert _undocumented(build_parser(), "roomagent") == []


def _complete(agent_env: dict[str, str], tmp_path: Path, line: str) -> list[str]:
    out = tmp_path / "completions"
    env = {
        **agent_env,
        "_ARGCOMPLETE": "1",
        "COMP_LINE": line,
        "COMP_POINT": str(len(line)),
        "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
    }
    cmd = [sys.executable, "-m", "agent"]
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return [c.strip() for c in out.read_text().split("\x0b")]


def test_shell_completion_of_commands_and_options(agent_env: dict[str, str], tmp_path: Path) -> None:
    assert _complete(agent_env, tmp_path, "roomagent ha") == ["hal"]
    assert _complete(agent_env, tmp_path, "roomagent hal rec") == ["record"]
    assert "--sim-faults" in _complete(agent_env, tmp_path, "roomagent run --")
