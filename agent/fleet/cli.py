# PYTHON_ARGCOMPLETE_OK
"""``roomctl``: the fleet admins' tool. Sub-commands register like ``roomagent``'s.

Shell completion: ``eval "$(register-python-argcomplete roomctl)"`` (bash/zsh; argcomplete). The
marker comment above lets argcomplete find this entry point; it is imported only while completing.
"""

from __future__ import annotations

__all__ = ["build_parser", "main"]

import argparse
import importlib
import os

from agent import __version__
from agent.fleet.common import quiet_stdout

_COMMAND_MODULES: list[str] = [
    "agent.fleet.keys",  # keygen
    "agent.fleet.docs",  # root init|rotate, template, sign
    "agent.fleet.roster",  # roster add|remove|show
    "agent.fleet.push",  # push, status
    "agent.fleet.verbs",  # lock, unlock, deprovision, ptz, keyframe, restart-pipeline, reboot, restart-agent
    "agent.fleet.audit",  # audit verify|fetch
    "agent.fleet.meeting",  # meeting start|stop
    "agent.fleet.snapshot",  # hpke-keygen, snapshot
    "agent.fleet.sim",  # fleet-sim
    "agent.fleet.tlog",  # log append|prove|verify
    "agent.fleet.update",  # update push|make
    "agent.fleet.broker_config",  # broker-config
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roomctl",
        description="fleet admin tool for roomagent devices",
        epilog='shell completion: eval "$(register-python-argcomplete roomctl)"',
    )
    parser.add_argument("--version", action="version", version=f"roomctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (module_name == exc.name or module_name.startswith(exc.name + ".")):
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:  # only while the shell asks for completions
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # ``roomctl status | head``: the reader left; not an error worth a traceback.
        quiet_stdout()
        return 141
