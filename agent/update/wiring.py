"""Firmware updates bound to a room's control plane; the composition root (``agent/daemon/room.py``)
calls :func:`build_updater` and registers the ``update`` handler this module returns.

:func:`wire_update` registers the ``update`` handler on the control service and the three hooks the
control plane reads (who owns a deferred outcome, the firmware version for rule 11, the ``update``
field of the state). A room without ``[update] enabled`` still handles every ``update`` document:
:func:`refuse_updates` rejects it with ``unsupported`` (audited, acked, nothing changed).
"""

from __future__ import annotations

__all__ = ["build_updater", "refuse_updates", "room_probes", "wire_update"]

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.config import UpdateSection
from agent.control.audit import verify_chain
from agent.control.errors import Deferred, Refused
from agent.control.service import ControlService
from agent.control.signing_keys import parse_public_key
from agent.control.verify import VerifiedDocument
from agent.update.bus import Logind, RaucInstaller
from agent.update.health import HealthProbes, wait_healthy
from agent.update.updater import Updater, read_firmware_version


def wire_update(control: ControlService, updater: Updater) -> None:
    """Make ``control`` hand ``update`` documents to ``updater`` and ack them when it reports."""

    async def handle(name: str, args: Mapping[str, Any], doc: VerifiedDocument) -> str:
        updater.submit(doc)  # Refused propagates: acked rejected, nothing changed
        raise Deferred(f"update (document v{doc.version}) under way")

    control.commands.register("update", handle)
    control.deferred_owner = updater.owns
    control.firmware_version = updater.firmware_version
    control.state_providers["update"] = updater.state


def refuse_updates(control: ControlService) -> None:
    """The ``update`` handler of a room without RAUC (``[update] enabled = false``)."""

    async def handle(name: str, args: Mapping[str, Any], doc: VerifiedDocument) -> str:
        raise Refused("unsupported", "firmware updates are not enabled on this room ([update] enabled)")

    control.commands.register("update", handle)


def room_probes(
    control: ControlService,
    *,
    health: Callable[[], Mapping[str, Mapping[str, Any]]],
    camera_devices: Callable[[], Sequence[str | Path | None]],
) -> HealthProbes:
    """READY (every supervised service running), control link up, cameras present, audit intact.

    ``health`` gives the supervisor's per-service health; ``camera_devices`` the configured cameras'
    device nodes (``None``: a camera without one, e.g. the simulator's).
    """

    def services_running() -> bool:
        services = health()
        return bool(services) and all(h.get("state") == "running" for h in services.values())

    def link_up() -> bool:
        return control.link is not None and control.link.connected.is_set()

    def cameras_present() -> bool:
        return all(d is None or Path(d).exists() for d in camera_devices())

    def audit_intact() -> bool:
        key = parse_public_key(control.identity.public_dict)
        verify_chain(control.audit.path.read_bytes(), control.audit.head_path.read_bytes(), key)
        return True  # ChainBroken (raised above) makes the probe fail

    return HealthProbes(
        ready=services_running,
        control_link_up=link_up,
        cameras_present=cameras_present,
        audit_intact=audit_intact,
    )


def build_updater(
    cfg: UpdateSection,
    control: ControlService,
    state_dir: Path,
    *,
    probes: HealthProbes,
    meeting_active: Callable[[], bool],
) -> Updater:
    """The updater of an ``[update] enabled`` room (RAUC and logind on ``cfg.dbus``), wired to
    ``control`` (:func:`wire_update`)."""

    async def health() -> str | None:
        return await wait_healthy(probes, cfg.health_timeout_s)

    updater = Updater(
        state_dir,
        installer=RaucInstaller(cfg.dbus),
        rebooter=Logind(cfg.dbus),
        report=control.report,
        health=health,
        running_version=lambda: read_firmware_version(cfg.firmware_version_file),
        meeting_active=meeting_active,
        changed=control.publish_state,
        ca_file=cfg.ca,
        poll_s=cfg.poll_s,
    )
    wire_update(control, updater)
    return updater
