"""``roomagent run [--config PATH]``: the device daemon.

Only argument parsing lives here; the daemon is imported when ``run`` is chosen, so other sub-commands
start fast.
"""

from __future__ import annotations

__all__ = ["DEFAULT_CONFIG_NAME", "register"]

import argparse
import contextlib
import os
import sys
from pathlib import Path

from agent.config import load_config
from agent.errors import ConfigError, StateError

DEFAULT_CONFIG_NAME = "agent.toml"

EXIT_CONFIG = 2


def _default_config_path() -> Path | None:
    """``$CONFIGURATION_DIRECTORY/agent.toml`` when systemd's ConfigurationDirectory= provides one."""
    conf_dir = os.environ.get("CONFIGURATION_DIRECTORY")
    if conf_dir:
        candidate = Path(conf_dir.split(":")[0]) / DEFAULT_CONFIG_NAME
        if candidate.exists():
            return candidate
    return None


def _run(args: argparse.Namespace) -> int:
    path: Path | None = args.config if args.config is not None else _default_config_path()
    demo = None
    if args.demo:
        # The first-run demo (agent/demo_room.py) makes an ordinary config plus its files, broker and
        # receiver; the daemon below runs it like any other.
        if args.config is not None:
            print("--demo runs its own config: leave --config out (or drop --demo)", file=sys.stderr)
            return EXIT_CONFIG
        from agent.demo_room import DemoRoom, DemoRoomError, demo_dir

        demo = DemoRoom(demo_dir())
        try:
            path = demo.prepare()
        except DemoRoomError as exc:
            print(f"--demo: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    try:
        config = load_config(path)
    except ConfigError as exc:
        # Refuse before starting anything: same output as check-config, one line per offending key.
        print("\n".join(exc.report_lines()), file=sys.stderr)
        return EXIT_CONFIG
    fault_steps: tuple[object, ...] = ()
    if args.sim_faults is not None:
        from agent.daemon.faults import FaultScriptError, load_fault_script

        try:
            fault_steps = load_fault_script(args.sim_faults, config)
        except FaultScriptError as exc:
            print(f"--sim-faults: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    from agent.daemon.main import run  # lazy: keeps other sub-commands fast

    try:
        with demo.running() if demo is not None else contextlib.nullcontext():
            return run(
                config,
                source=str(path) if path is not None else "built-in defaults",
                fault_steps=fault_steps,
            )
    except StateError as exc:
        print(f"state: {exc.path}: {exc.reason}", file=sys.stderr)
        print(
            "next: make that directory writable for this user, or set [state] dir in the config",
            file=sys.stderr,
        )
        return 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``run`` to the ``roomagent`` command."""
    p = sub.add_parser(
        "run",
        help="run the device agent (systemd Type=notify service)",
        description=(
            "Run the agent. Without --config: $CONFIGURATION_DIRECTORY/agent.toml when systemd provides"
            " one, else the built-in defaults (simulated HAL, offline, no media sink); --demo for a room"
            " that serves. Exit codes: 0 stopped, 1 failed (systemd restarts it), 2 bad configuration."
        ),
    )
    p.add_argument(
        "--config", type=Path, default=None, metavar="PATH", help="TOML config file (keys: docs/config.md)"
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help="first-run demo (what `make run` starts): a private local broker, demo trust root and keys,"
        " the sim camera's E2EE stream to a local receiver; prints the roomctl command to try",
    )
    p.add_argument(
        "--sim-faults",
        type=Path,
        default=None,
        metavar="FILE.toml",
        help="testers: apply the [[step]] fault switches of a 'hal scenario' file to the sim devices",
    )
    p.set_defaults(func=_run)
