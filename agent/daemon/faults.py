"""Testers' fault script for a running agent: ``roomagent run --sim-faults FILE.toml``.

The file is a ``roomagent hal scenario`` file; only its ``[[step]]`` entries are used here (the cameras
and encoders are the running agent's). Each step flips one fault switch of the simulated HAL at its
time after start-up (unplug/replug, stall, dropped or corrupt frames, slow or failing encoder), so a
tester can watch the real daemon (watchdog, supervisor, media recovery, state) react. Only with the
sim backend: the script never touches real devices.
"""

from __future__ import annotations

__all__ = ["FaultScriptError", "SimFaultScript", "load_fault_script"]

import asyncio
import time
from pathlib import Path

from agent.config import AgentConfig
from agent.daemon.runtime import Runtime
from agent.errors import AgentError
from agent.media.service import Media
from agent.service import Progress


class FaultScriptError(AgentError):
    """The fault script cannot be used (unreadable, invalid, or the HAL is not simulated)."""


def load_fault_script(path: Path, config: AgentConfig) -> tuple[object, ...]:
    """Parse and check a fault script against the config's sim cameras; returns its steps in order.

    Raises:
        FaultScriptError: naming what is wrong.
    """
    from hal.errors import HalError
    from hal.scenario import load_scenario

    if config.hal.backend != "sim":
        raise FaultScriptError(
            f"--sim-faults needs [hal] backend = 'sim' (is {config.hal.backend!r}): set it in the config"
        )
    cameras = config.hal.camera_specs()
    try:
        scenario = load_scenario(path, cameras)
    except HalError as exc:
        raise FaultScriptError(str(exc)) from exc
    unknown = {s.camera for s in scenario.steps if s.camera is not None} - {c.id for c in cameras}
    if unknown:
        raise FaultScriptError(f"{path}: steps name cameras the agent does not have: {sorted(unknown)}")
    # Without pipelines there is nothing to throw faults at: refuse now, with the fix, rather than let
    # the script's service fail and be restarted over and over by the supervisor.
    if config.media.sink is None or not config.media.enabled:
        raise FaultScriptError(
            "--sim-faults needs running media pipelines, and this config has "
            + ("[media] enabled = false" if config.media.sink is not None else "no [media] sink")
            + ': add [media] sink = "rtp://127.0.0.1:5004" (or "file:///tmp/room.ramf") and '
            'enabled = true to the config (docs/daemon.md, "Testers")'
        )
    return tuple(scenario.steps)


class SimFaultScript:
    """A service that applies the script's steps to the media path's sim devices, once each."""

    name = "sim_faults"

    def __init__(self, runtime: Runtime, media: Media, steps: tuple[object, ...]) -> None:
        self._runtime = runtime
        self._media = media
        self._steps = steps
        self._next = 0
        self._start = time.monotonic()
        self._log = runtime.logger.bind(service=self.name)

    async def run(self, progress: Progress) -> None:
        from hal.scenario import Step, apply_step
        from hal.sim import SimEncoderFaults, SimInventory

        media = self._media
        inventory = media.inventory
        if not isinstance(inventory, SimInventory):
            raise FaultScriptError("the fault script needs running media pipelines on the sim HAL")
        encoder_faults = getattr(media.encoders, "faults", None)
        if not isinstance(encoder_faults, SimEncoderFaults):
            encoder_faults = SimEncoderFaults()  # encoder steps then have no encoder to act on
        default_camera = self._runtime.config.hal.cameras[0].id
        while self._next < len(self._steps):
            step = self._steps[self._next]
            assert isinstance(step, Step)
            # Beat while waiting: a script that is waiting is not a hung service.
            while (wait := step.at_s - (time.monotonic() - self._start)) > 0:
                progress.beat()
                await asyncio.sleep(min(wait, 1.0))
            apply_step(step, inventory, encoder_faults, default_camera=default_camera)
            self._next += 1  # a restarted script never applies a step twice
            self._log.warning("sim_fault_applied", fault=step.fault, camera=step.camera or default_camera)
        while True:
            progress.beat()
            await asyncio.sleep(1.0)
