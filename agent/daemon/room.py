"""The composition root of ``roomagent run``: the one place where the whole room is built.

:func:`build_room` takes the validated local config and the runtime and builds, in dependency order,
each part with its typed collaborators in its constructor:

1. the **effective config**: the local file (defaults and device facts) overridden, section by section,
   by the last fleet-pushed ``config`` the device applied (persisted by the control plane), so that a
   pushed config takes effect again at boot, before READY (docs/config.md "Local and pushed config");
2. the **HAL** (camera inventory, encoder factory) and the **media** pipelines (one per camera);
3. the **privacy guard** (policy, HPKE identity, meeting keys, interventions, telemetry allow-list),
   bound to the media key source, E2EE and shutter switches;
4. the **control plane** (:class:`~agent.control.service.ControlService`) with the room's apply target;
5. the **command handlers** of every part, and the ``update`` document's (the firmware updater, RAUC
   over D-Bus, when ``[update] enabled``; else a handler that refuses updates); the room refuses to
   start (:class:`RoomIncomplete`, exit 2) unless every command and ``update`` has exactly one;
6. the **WebRTC meeting service** (:func:`agent.daemon.webrtc.build_webrtc`): the room joins the
   customer-signed SFU place of its installed meeting keys (docs/webrtc.md);
7. the **state reporter**, writing what the control plane retains on the broker to ``state.json``.

No string registries, no look-ups by name, no attributes set on other objects: what a part needs is an
argument of its constructor. A test that needs a room calls :func:`build_room` too.
"""

from __future__ import annotations

__all__ = ["Room", "RoomApplyTarget", "RoomIncomplete", "build_room", "effective_config"]

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel

from agent.config import AgentConfig
from agent.control.apply import CommandHandler, ControlState
from agent.control.audit_export import AuditExport
from agent.control.documents import COMMANDS, ConfigBody
from agent.control.errors import Refused
from agent.control.service import ControlService
from agent.control.verify import VerifiedDocument
from agent.daemon.faults import SimFaultScript
from agent.daemon.power import Power
from agent.daemon.runtime import Runtime
from agent.daemon.state import StateReporter
from agent.daemon.webrtc import build_webrtc
from agent.errors import AgentError
from agent.media.commands import MediaCommands
from agent.media.service import Media, build_media
from agent.persist import atomic_write_json
from agent.privacy.guard import PrivacyGuard
from agent.privacy.snapshot import InventoryFrameSource
from agent.privacy.telemetry import install_log_filter
from agent.privacy.wiring import wire_control
from agent.schema.policy import DEFAULT_POLICY, PolicyBody
from agent.service import Progress, Service
from agent.update.updater import Updater
from agent.update.wiring import build_updater, refuse_updates, room_probes
from agent.webrtc.service import WebRtcService
from hal.errors import HalError
from hal.protocols import Inventory

_log = structlog.get_logger()

# Every document the control plane routes to a handler: each command, the ``keys`` package and the
# firmware ``update``.
HANDLED = frozenset(COMMANDS) | {"keys", "update"}


class RoomIncomplete(AgentError):
    """The room cannot start as configured: a command without a handler, or one with two."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(problem)


class ConfigNotApplicable(AgentError):
    """A pushed config names something this room cannot do (acked ``rolled_back`` with the reason)."""


def effective_config(local: AgentConfig, pushed: ConfigBody) -> AgentConfig:
    """The config the room runs: ``local`` with each section ``pushed`` names replaced.

    ``cameras`` are merged by id (a pushed camera replaces the local one of that id; cameras the fleet
    does not name keep their local settings); ``encoder``, ``media`` and ``log`` replace the local
    section. Device facts (``device``, ``state``, ``mqtt``, ``trust``, ``hal.backend``, ...) are
    local only: the fleet cannot move a room to another broker or trust root by config.
    """
    hal = local.hal
    if pushed.cameras is not None:
        by_id = {c.id: c for c in pushed.cameras}
        hal = hal.model_copy(update={"cameras": [by_id.get(c.id, c) for c in hal.cameras]})
    if pushed.encoder is not None:
        hal = hal.model_copy(update={"encoder": pushed.encoder})
    update: dict[str, Any] = {"hal": hal}
    if pushed.media is not None:
        update["media"] = pushed.media
    if pushed.log is not None:
        update["log"] = pushed.log
    return local.model_copy(update=update)


class RoomApplyTarget:
    """The running room as the control plane's apply target (``agent.control.apply.ApplyTarget``).

    ``policy``: the guard applies it (telemetry, key checks, media E2EE and shutter switches).
    ``config``: the media pipelines apply it live; a config naming media settings on a room with no
    pipeline cannot take effect and fails (the transaction rolls back, the ack says why).
    Every applied body is also written to ``<state>/running/<kind>.json`` for inspection.
    Health: while this room sends (it holds a sender key), sealed frames must flow again within the
    bound; an idle room (no meeting) has nothing to check.
    """

    def __init__(self, guard: PrivacyGuard, media: Media, state_dir: Path) -> None:
        self._guard = guard
        self._media = media
        self._state_dir = state_dir

    async def apply(self, kind: str, body: BaseModel) -> None:
        if kind == "policy":
            if not isinstance(body, PolicyBody):
                raise TypeError(f"a policy body, not {type(body).__name__}")
            self._guard.apply_policy(body)
        elif kind == "config":
            if not isinstance(body, ConfigBody):
                raise TypeError(f"a config body, not {type(body).__name__}")
            names_media = body.cameras is not None or body.encoder is not None or body.media is not None
            if names_media and not self._media.pipelines:
                raise ConfigNotApplicable(
                    "no media pipeline runs on this room (no local [media] sink or media disabled): "
                    "cameras/encoder/media settings cannot take effect"
                )
            if self._media.pipelines:
                self._media.apply_config(body.model_dump(mode="json", exclude_none=True))
        atomic_write_json(self._state_dir / "running" / f"{kind}.json", body.model_dump(mode="json"))

    async def healthy(self, timeout_s: float) -> bool:
        if not self._media.pipelines or self._media.keys.current()[0] is None:
            return True
        return await self._media.healthy(timeout_s)


class _CameraAnnouncer:
    """Announces through the HAL camera of ``camera_id`` (the pipeline keeps the capture handle)."""

    def __init__(self, inventory: Inventory, camera_id: str) -> None:
        self._inventory = inventory
        self.camera_id = camera_id

    async def announce(self, message: str) -> None:
        await self._inventory.open_camera(self.camera_id).announce(message)


def _if_remote_ptz_allowed(handler: CommandHandler, guard: PrivacyGuard) -> CommandHandler:
    """Policy ``camera.remote_ptz`` false (the customer's choice): nobody moves the camera remotely."""

    async def checked(name: str, args: Mapping[str, Any], doc: VerifiedDocument) -> str:
        if not guard.policy.camera.remote_ptz:
            raise Refused("forbidden_by_policy", "policy camera.remote_ptz is false: no remote camera moves")
        return await handler(name, args, doc)

    return checked


@dataclass(slots=True)
class Room:
    """One assembled room: its parts and its services in start order (stopped in reverse)."""

    runtime: Runtime
    config: AgentConfig
    media: Media
    guard: PrivacyGuard
    control: ControlService
    reporter: StateReporter
    webrtc: WebRtcService
    updater: Updater | None = None  # None unless ``[update] enabled``
    services: list[Service] = field(default_factory=list)


class _GuardService:
    """The privacy guard's supervised loop (key expiry, shutter enforcement)."""

    name = "privacy"

    def __init__(self, guard: PrivacyGuard) -> None:
        self._guard = guard

    async def run(self, progress: Progress) -> None:
        await self._guard.run(progress)


def _open_inventory(config: AgentConfig, media: Media) -> Inventory | None:
    """The HAL inventory: the media path's when it runs, else one for commands (PTZ, snapshots)."""
    if media.inventory is not None:
        return media.inventory
    if not config.hal.cameras or not config.media.enabled:
        return None  # media switched off: the cameras are not this agent's to drive
    import hal

    try:
        return hal.open_inventory(
            config.hal.camera_specs(), backend=config.hal.backend, presets_dir=config.presets_dir()
        )
    except HalError as exc:
        _log.warning("hal_inventory_unavailable", error=str(exc))
        return None


def build_room(
    local: AgentConfig,
    runtime: Runtime,
    *,
    fault_steps: tuple[object, ...] = (),
    media: Media | None = None,
) -> Room:
    """Build the whole room (see the module docstring); nothing runs until the services start.

    Args:
        local: the validated local config.
        runtime: the process runtime (state dir, device state, stop).
        fault_steps: a sim fault script (``--sim-faults``) to run as a service.
        media: an already built media path (benchmarks with their own HAL); default: from the config.

    Raises:
        RoomIncomplete: a command of the schema has no handler or two.
        AgentError: a part cannot be built (bad lab key file, sink, HAL).
    """
    state_dir = runtime.state_dir
    # 1. Desired state first: the pushed config the device applied last takes effect again now.
    pushed = ControlState(state_dir).last_known_good("config")
    assert isinstance(pushed, ConfigBody)
    config = effective_config(local, pushed)
    if pushed != ConfigBody():
        _log.info("pushed_config_restored", sections=sorted(pushed.model_dump(exclude_none=True)))

    # 2. HAL and media.
    if media is None:
        media = build_media(config)
    inventory = _open_inventory(config, media)

    # 3. Privacy, bound to the media path.
    guard = PrivacyGuard(
        state_dir=state_dir, device_id=runtime.device_id, key_source=media.keys, policy=DEFAULT_POLICY
    )
    install_log_filter(guard.telemetry)  # every log line from now on passes the allow-list
    guard.add_state_sink(lambda fragment: runtime.update_state(**fragment))
    guard.add_policy_listener(lambda policy: media.set_e2ee_required(policy.e2ee.required))
    guard.add_policy_listener(lambda policy: media.set_shutter_when_idle(policy.camera.shutter_when_idle))
    if inventory is not None:
        # Remote snapshots: the running pipeline's camera, else the camera opened via the inventory.
        guard.snapshot_source = InventoryFrameSource(inventory, lambda: media.pipelines)
        for spec in config.hal.cameras:
            guard.interventions.add_announcer(_CameraAnnouncer(inventory, spec.id))

    # 4. The control plane, applying to this room.
    control = ControlService(
        config,
        RoomApplyTarget(guard, media, state_dir),
        state_dir=state_dir,
        device_state=runtime,
    )
    lkg = control.state.last_known_good("policy")
    wire_control(control, guard, policy=lkg if isinstance(lkg, PolicyBody) else DEFAULT_POLICY)
    guard.enforce_lock()  # a room locked before a restart stays dark (a lab key included)

    # 5. Every command has exactly one handler (CommandRegistry.register refuses a second).
    try:
        default_camera = config.hal.cameras[0].id if config.hal.cameras else None
        for name, handler in MediaCommands(media, inventory, default_camera).handlers().items():
            if name in ("ptz", "ptz_preset"):
                handler = _if_remote_ptz_allowed(handler, guard)
            control.commands.register(name, handler)
        control.commands.register("audit_fetch", AuditExport(control).handle)
        power = Power(runtime, control)
        control.commands.register("reboot", power.reboot)
        control.commands.register("restart_agent", power.restart_agent)
        updater: Updater | None = None
        if config.update.enabled:
            probes = room_probes(
                control,
                health=lambda: runtime.state_snapshot().get("health", {}),
                camera_devices=lambda: [c.device for c in config.hal.cameras],
            )
            updater = build_updater(
                config.update,
                control,
                state_dir,
                probes=probes,
                meeting_active=lambda: not guard.keys.keys.idle,
            )
        else:
            refuse_updates(control)
    except ValueError as exc:
        raise RoomIncomplete(str(exc)) from exc
    missing = control.commands.missing(HANDLED)
    if missing:
        raise RoomIncomplete(f"no handler for command(s) {', '.join(missing)}")

    # 6. WebRTC meetings, from the guard's installed keys (started last, stopped first).
    webrtc = build_webrtc(
        device_id=runtime.device_id,
        config=config,
        guard=guard,
        media=media,
        inventory=inventory,
        report=lambda fragment: runtime.update_state(webrtc=fragment),
    )

    # 7. State: state.json is the retained state document; media counters are read live.
    runtime.add_state_source("media", media.describe)
    reporter = StateReporter(runtime, document=control.current_state)

    services: list[Service] = [reporter, control, *media.pipelines, _GuardService(guard), power]
    if updater is not None:
        services.append(updater)
    if fault_steps and not media.pipelines:
        # A fault script acts on running pipelines: refuse now rather than fail in a restart loop.
        raise RoomIncomplete("--sim-faults needs a running media pipeline ([media] sink on the sim HAL)")
    if fault_steps:
        services.append(SimFaultScript(runtime, media, fault_steps))
    services.append(webrtc)
    runtime.update_state(media=media.describe(), identity=control.state_document(False)["identity"])
    _log.info(
        "room_built",
        cameras=[c.id for c in config.hal.cameras],
        pipelines=[p.name for p in media.pipelines],
        commands=sorted(control.commands.names()),
    )
    return Room(runtime, config, media, guard, control, reporter, webrtc, updater, services)
