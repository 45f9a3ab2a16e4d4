"""``roomctl``: the fleet admins' tool. Sub-commands register like ``roomagent``'s."""

from __future__ import annotations

__all__ = ["main"]

import argparse
import importlib

from agent import __version__

_COMMAND_MODULES: list[str] = [
    "agent.fleet.keys",  # keygen
    "agent.fleet.docs",  # root init|rotate, template, sign
    "agent.fleet.push",  # push, status
    "agent.fleet.audit",  # audit verify
    "agent.fleet.meeting",  # meeting start
    "agent.fleet.snapshot",  # hpke-keygen, snapshot
    "agent.fleet.sim",  # fleet-sim
    "agent.fleet.broker_config",  # broker-config
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roomctl", description="fleet admin tool for roomagent devices")
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
    args = build_parser().parse_args(argv)
    return int(args.func(args))
