"""The control plane on its own: ``python -m agent.control --config PATH``.

Runs :class:`ControlService` against :class:`FileApplyTarget`, which makes each applied document
the running one by writing it to ``<state>/running/<kind>.json`` (atomically). Used for bring-up,
for the crash tests (a real process killed with SIGKILL mid-apply) and until the daemon wires the
service to the media pipeline.
"""

from __future__ import annotations

__all__ = ["FileApplyTarget", "main"]

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path

from pydantic import BaseModel

from agent.config import load_config
from agent.control.service import ControlService
from agent.errors import AgentError
from agent.logs import configure_logging
from agent.persist import atomic_write_json
from agent.service import Progress


class FileApplyTarget:
    """Applies by writing the body to ``running/<kind>.json``; healthy once the file reads back."""

    def __init__(self, directory: Path, *, apply_delay_s: float = 0.0) -> None:
        self.directory = Path(directory)
        self.apply_delay_s = apply_delay_s

    async def apply(self, kind: str, body: BaseModel) -> None:
        if self.apply_delay_s:
            await asyncio.sleep(self.apply_delay_s)
        await asyncio.to_thread(
            atomic_write_json, self.directory / f"{kind}.json", body.model_dump(mode="json")
        )

    async def healthy(self, timeout_s: float) -> bool:
        return self.directory.is_dir()


async def _run(service: ControlService) -> None:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await service.run(Progress("control"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.control")
    parser.add_argument("--config", type=Path)
    parser.add_argument("--apply-delay", type=float, default=0.0, help="seconds each apply takes")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        configure_logging(config.log.level, "json")
        state_dir = config.state_dir()
        target = FileApplyTarget(state_dir / "running", apply_delay_s=args.apply_delay)
        service = ControlService(config, target, state_dir=state_dir)
    except AgentError as exc:
        print(f"error: {exc}")
        return 2
    asyncio.run(_run(service))
    return 0
