"""Every `roomagent` and `roomctl` command in the README's shell blocks is one the CLIs accept.

The flows that can run on a test machine run for real (test_readme_*.py); this catches the rest
(brokers and hosts that only exist in a deployment) drifting from the argument parsers.
"""

from __future__ import annotations

import re
import shlex

import pytest

from agent.cli import build_parser as roomagent_parser
from agent.fleet.cli import build_parser as roomctl_parser
from tests.acceptance import readme_blocks


def _cli_commands() -> list[str]:
    out = []
    for block in readme_blocks.blocks():
        if block.lang != "sh":
            continue
        for cmd in block.commands():
            cmd = re.sub(r"^(\w+=\S*\s+)+", "", cmd)  # VAR=value prefixes
            cmd = re.sub(r"\s*\[[^\]]*\]", "", cmd)  # [--optional VALUE] as the README writes options
            cmd = re.split(r"\s[>|]\s", cmd)[0]  # redirections and pipes
            cmd = re.sub(r"\s\.\.\.$", "", cmd)  # "..." for options shown before
            if shlex.split(cmd)[0].rsplit("/", 1)[-1] in ("roomagent", "roomctl"):
                out.append(cmd)
    return out


def test_the_readme_has_cli_commands() -> None:
    assert len(_cli_commands()) >= 10


@pytest.mark.parametrize("cmd", _cli_commands())
def test_readme_command_parses(cmd: str) -> None:
    words = shlex.split(cmd)
    parser = roomagent_parser() if words[0].endswith("roomagent") else roomctl_parser()
    try:
        parser.parse_args(words[1:])
    except SystemExit as exc:
        pytest.fail(f"README command rejected by its parser (exit {exc.code}): {cmd}")
