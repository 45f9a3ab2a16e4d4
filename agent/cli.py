# PYTHON_ARGCOMPLETE_OK
"""``roomagent``: the device daemon and the hardware testers' tools.

Sub-commands live in their owners' modules; each such module has ``register(subparsers)`` which adds
its parser and sets ``func`` (called with the parsed namespace, returns the exit code). Modules are
listed in ``_COMMAND_MODULES`` and imported at start-up, so keep their top-level imports light.
"""

from __future__ import annotations

__all__ = ["main"]

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from agent import __version__
from agent.bench import BENCHMARKS
from agent.config import load_config
from agent.errors import ConfigError
from agent.logs import configure_logging

# module path -> each registers one or more sub-commands.
_COMMAND_MODULES: list[str] = [
    "agent.daemon.cli",  # run
    "agent.daemon.enroll",  # identity (enrollment: the room's public keys for the customer's roster)
    "hal.cli",  # hal list|snapshot|record|stamps|scenario
    "agent.media.cli",  # receive, demo
    "agent.webrtc.cli",  # webrtc join
]


def _check_config(args: argparse.Namespace) -> int:
    try:
        load_config(Path(args.path))
    except ConfigError as exc:
        print("\n".join(exc.report_lines()), file=sys.stderr)
        return 2
    print(f"{args.path}: ok")
    return 0


def _bench(args: argparse.Namespace) -> int:
    names = list(BENCHMARKS) if args.name == "all" else [args.name]
    # REMAINDER swallows everything after NAME, including our own --json (`bench NAME --json`).
    if "--json" in args.bench_args:
        args.bench_args = [a for a in args.bench_args if a != "--json"]
        args.json = True
    # stdout carries the results: log lines (warnings and up) go to stderr.
    configure_logging("warning", "json", stream=sys.stderr)
    results = []
    for name in names:
        target = BENCHMARKS.get(name)
        if target is None:
            print(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
            return 2
        module_name, func_name = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            absent = exc.name is not None and (module_name + ".").startswith(exc.name + ".")
            if args.name == "all" and absent:
                print(f"benchmark {name}: {module_name} is not there yet; skipped", file=sys.stderr)
                continue
            raise
        results.extend(getattr(module, func_name)(args.bench_args))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            base = ""
            if r["baseline"] is not None:
                base = f"  (baseline {r['baseline']} {r['unit']}, ratio {r['ratio']})"
            print(f"{r['metric']}: {r['value']} {r['unit']}{base}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    description = __doc__.splitlines()[0].replace("``", "") if __doc__ else None
    parser = argparse.ArgumentParser(prog="roomagent", description=description)
    parser.add_argument("--version", action="version", version=f"roomagent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("check-config", help="validate a config file; exit 2 naming each bad key")
    p.add_argument("path", help="agent.toml to check (keys: docs/config.md)")
    p.set_defaults(func=_check_config)

    p = sub.add_parser("bench", help="run one benchmark (or 'all') and print its results")
    p.add_argument("name", help=f"one of: {', '.join(BENCHMARKS)}, all")
    p.add_argument("--json", action="store_true", help="print a JSON list of results")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="options passed to the benchmark")
    p.set_defaults(func=_bench)

    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (module_name == exc.name or module_name.startswith(exc.name + ".")):
                raise
            continue  # sub-system not built yet
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Shell completion (README, Development): only when the shell's completion hook runs us, so a
    # normal start does not pay argcomplete's ~40 ms import.
    if "_ARGCOMPLETE" in os.environ:
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    return int(args.func(args))
