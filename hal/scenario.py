"""Scripted fault scenarios against the sim devices (``roomagent hal scenario FILE.toml``).

A scenario file::

    duration_s = 4.0              # how long the pipeline runs in all
    settle_s = 1.0                # after the last step, frames must flow again within this
    codec = "h264"                # family or FFmpeg encoder name
    [[camera]]                    # optional: defaults to the agent config's sim cameras
    id = "cam0"
    width = 320
    height = 240
    fps = 30
    [[step]]
    at_s = 0.5
    fault = "unplug"              # unplug | replug | stall | drop_every | corrupt_next | clear
    camera = "cam0"               #   | encoder_slow | encoder_fail | encoder_clear
    [[step]]
    at_s = 1.0
    fault = "stall"
    ms = 300                      # for stall and encoder_slow; n for drop_every

A small pipeline (camera -> encoder -> decoder -> stamp reader) runs on the first camera like the
agent's: on ``DeviceGoneError`` it waits for the camera's ``added`` event and reopens it, on
``EncoderError`` it reopens the encoder. The result lists what it observed and whether frames flowed
again after the last fault.
"""

from __future__ import annotations

__all__ = [
    "Observation",
    "ScenarioError",
    "ScenarioResult",
    "Step",
    "apply_step",
    "faults_end_s",
    "load_scenario",
    "run_scenario",
]

import asyncio
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hal.codecs import PyAvEncoderFactory, family_of, open_decoder
from hal.errors import DeviceGoneError, EncoderError, HalError
from hal.sim import SimInventory
from hal.sim.faults import SimEncoderFaults
from hal.stamps_report import StampReport, analyse
from hal.types import CameraSpec, EncoderConfig

_FAULTS = {
    "unplug",
    "replug",
    "stall",
    "drop_every",
    "corrupt_next",
    "clear",
    "encoder_slow",
    "encoder_fail",
    "encoder_clear",
}


class ScenarioError(HalError):
    """The scenario file is unreadable or invalid (``HalError``: the tool reports it like any other)."""


@dataclass(frozen=True, slots=True)
class Step:
    at_s: float
    fault: str
    camera: str | None = None
    ms: float = 0.0
    n: int = 0


@dataclass(frozen=True, slots=True)
class Scenario:
    cameras: tuple[CameraSpec, ...]
    steps: tuple[Step, ...]
    duration_s: float = 4.0
    settle_s: float = 1.0
    codec: str = "h264"


@dataclass(frozen=True, slots=True)
class Observation:
    t_s: float
    event: str
    detail: str = ""


@dataclass(slots=True)
class ScenarioResult:
    observations: list[Observation] = field(default_factory=list)
    report: StampReport | None = None
    recovered: bool = False
    frames_after_last_fault: int = 0
    faults_end_s: float | None = None
    verdict: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "recovered": self.recovered,
            "verdict": self.verdict,
            "faults_end_s": self.faults_end_s,
            "frames_after_last_fault": self.frames_after_last_fault,
            "stamps": None if self.report is None else self.report.as_dict(),
            "observations": [{"t_s": o.t_s, "event": o.event, "detail": o.detail} for o in self.observations],
        }


def load_scenario(path: Path, default_cameras: Sequence[CameraSpec]) -> Scenario:
    """Parse a scenario file.

    Raises:
        ScenarioError: unreadable, bad TOML, or invalid keys (the message names the key).
    """
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"{path}: {exc}") from exc
    allowed = {"duration_s", "settle_s", "codec", "camera", "step"}
    unknown = set(data) - allowed
    if unknown:
        raise ScenarioError(f"{path}: unknown keys {sorted(unknown)}")
    try:
        cameras = tuple(CameraSpec(**c) for c in data.get("camera", [])) or tuple(default_cameras)
        steps = tuple(sorted((Step(**s) for s in data.get("step", [])), key=lambda s: s.at_s))
        scenario = Scenario(
            cameras=cameras,
            steps=steps,
            duration_s=float(data.get("duration_s", 4.0)),
            settle_s=float(data.get("settle_s", 1.0)),
            codec=str(data.get("codec", "h264")),
        )
        family_of(scenario.codec)
    except (TypeError, ValueError, HalError) as exc:
        raise ScenarioError(f"{path}: {exc}") from exc
    for i, step in enumerate(steps):
        if step.fault not in _FAULTS:
            raise ScenarioError(
                f"{path}: step[{i}].fault {step.fault!r}; known: {', '.join(sorted(_FAULTS))}"
            )
        if step.camera is not None and step.camera not in {c.id for c in cameras}:
            raise ScenarioError(f"{path}: step[{i}].camera {step.camera!r} is not a scenario camera")
    if not cameras:
        raise ScenarioError(f"{path}: no cameras")
    if any(c.backend != "sim" for c in cameras):
        raise ScenarioError(f"{path}: scenarios run on sim cameras only")
    return scenario


def apply_step(
    step: Step, inventory: SimInventory, encoder_faults: SimEncoderFaults, *, default_camera: str
) -> None:
    """Flip one fault switch of a sim camera or of the sim encoder faults."""
    cam = inventory.faults(step.camera or default_camera)
    match step.fault:
        case "unplug":
            cam.unplug()
        case "replug":
            cam.replug()
        case "stall":
            cam.stall(step.ms)
        case "drop_every":
            cam.drop_every(step.n)
        case "corrupt_next":
            cam.corrupt_next()
        case "clear":
            cam.clear()
        case "encoder_slow":
            encoder_faults.slow(step.ms)
        case "encoder_fail":
            encoder_faults.fail()
        case "encoder_clear":
            encoder_faults.clear()


def faults_end_s(scenario: Scenario) -> float | None:
    """When the last fault is over, in seconds from the start; ``None`` if one never ends.

    A stall lasts ``ms`` past its step; an unplug lasts until that camera's ``replug`` or ``clear``
    (never, without one). Other switches take effect at their step: drops and a slow encoder are
    degraded states during which frames still flow, so they do not hold recovery back.
    """
    default = scenario.cameras[0].id
    end = 0.0
    unplugged: set[str] = set()
    for step in scenario.steps:
        camera = step.camera or default
        end = max(end, step.at_s)
        if step.fault == "stall":
            end = max(end, step.at_s + step.ms / 1000)
        elif step.fault == "unplug":
            unplugged.add(camera)
        elif step.fault in ("replug", "clear"):
            unplugged.discard(camera)
    # Only the first camera feeds the pipeline: an unplugged second camera does not stop its frames.
    return None if default in unplugged else end


async def run_scenario(scenario: Scenario) -> ScenarioResult:
    """Run the pipeline and the fault script side by side; observe and judge recovery."""
    inventory = SimInventory(scenario.cameras)
    factory = PyAvEncoderFactory()
    spec = scenario.cameras[0]
    result = ScenarioResult()
    start = time.monotonic()
    start_wall_ns = time.time_ns()
    arrivals: list[tuple[Any, int | None, float]] = []  # (stamp, arrival ns, t_s)

    def observe(event: str, detail: str = "") -> None:
        result.observations.append(Observation(round(time.monotonic() - start, 3), event, detail))

    async def faults() -> None:
        for step in scenario.steps:
            await asyncio.sleep(max(0.0, step.at_s - (time.monotonic() - start)))
            apply_step(step, inventory, factory.faults, default_camera=spec.id)
            observe("fault", f"{step.fault} {step.camera or spec.id}".strip())

    async def pipeline() -> None:
        events = inventory.events()
        config = EncoderConfig(codec=scenario.codec, width=spec.width, height=spec.height, fps=spec.fps)
        while True:
            try:
                camera = inventory.open_camera(spec.id)
                async with camera:
                    observe("camera_opened", spec.id)
                    encoder = factory.open(config)
                    decoder = open_decoder(encoder.capabilities.codec)
                    async for frame in camera.frames():
                        try:
                            packets = await asyncio.to_thread(encoder.encode, frame)
                        except EncoderError as exc:
                            observe("encoder_failed", str(exc))
                            encoder.close()
                            encoder = factory.open(config)
                            decoder = open_decoder(encoder.capabilities.codec)
                            encoder.request_keyframe()
                            observe("encoder_reopened", encoder.capabilities.name)
                            continue
                        for packet in packets:
                            for decoded in decoder.decode(packet.data):
                                arrivals.append((decoded.stamp, time.time_ns(), time.monotonic() - start))
            except DeviceGoneError as exc:
                observe("camera_gone", str(exc))
                while spec.id not in {d.id for d in inventory.list_devices()}:
                    event = await anext(events)
                    observe("hotplug", f"{event.action} {event.device.id}")

    async def stop_after() -> None:
        await asyncio.sleep(scenario.duration_s)
        raise _Done

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(pipeline(), name="scenario.pipeline")
            tg.create_task(faults(), name="scenario.faults")
            tg.create_task(stop_after(), name="scenario.deadline")
    except* _Done:
        pass
    # Judge by capture time, not arrival: frames captured before the faults were over (a stall that
    # outlasts the scenario, frames queued before an unplug) prove nothing about recovery.
    fault_end = faults_end_s(scenario)
    result.faults_end_s = fault_end
    result.report = analyse((a[0], a[1]) for a in arrivals)
    if fault_end is None:
        result.verdict = "NOT recovered: a camera was unplugged and never plugged back in"
    else:
        after = [
            a for a in arrivals if a[0] is not None and (a[0].capture_ns - start_wall_ns) / 1e9 >= fault_end
        ]
        result.frames_after_last_fault = len(after)
        result.recovered = bool(after) and after[0][2] <= fault_end + scenario.settle_s
        if result.recovered:
            result.verdict = (
                f"recovered: {len(after)} frames captured after the faults ended at {fault_end:.2f} s"
            )
        elif fault_end >= scenario.duration_s:
            result.verdict = (
                f"NOT recovered: the faults end at {fault_end:.2f} s, after the scenario's "
                f"{scenario.duration_s:.2f} s (raise duration_s)"
            )
        elif not after:
            result.verdict = f"NOT recovered: no frame captured after the faults ended at {fault_end:.2f} s"
        else:
            result.verdict = (
                f"NOT recovered: the first frame after the faults ended at {fault_end:.2f} s arrived at "
                f"{after[0][2]:.2f} s, later than settle_s = {scenario.settle_s:.2f} s"
            )
    observe("result", result.verdict)
    return result


class _Done(Exception):
    """Ends the scenario's task group at its deadline."""
