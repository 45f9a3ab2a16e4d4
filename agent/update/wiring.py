"""WIRING of firmware updates into ``roomagent run``: the one place the integrator moves into the
daemon's composition root (``agent/daemon/room.py``).

:func:`wire_update` is the typed part: it registers the ``update`` handler on the control service
and the three hooks the control plane reads (who owns a deferred outcome, the firmware version for
rule 11, the ``update`` field of the state). :func:`services` is the provider for
``agent.daemon.main.SERVICE_PROVIDERS`` as the daemon is wired today: it builds the updater with RAUC
and logind on the configured bus and the health probes of the running room.
"""

from __future__ import annotations

__all__ = ["room_probes", "services", "wire_update"]

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent.control.audit import verify_chain
from agent.control.errors import Deferred
from agent.control.keys import parse_public_key
from agent.control.service import ControlService
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


def room_probes(control: ControlService, runtime: Any) -> HealthProbes:
    """READY (every supervised service running), control link up, cameras present, audit intact."""

    def services_running() -> bool:
        health = runtime.state_snapshot().get("health", {})
        return bool(health) and all(h.get("state") == "running" for h in health.values())

    def link_up() -> bool:
        return control.link is not None and control.link.connected.is_set()

    def cameras_present() -> bool:
        return all(c.device is None or Path(c.device).exists() for c in runtime.config.hal.cameras)

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


def services(runtime: Any) -> list[Updater]:
    """The daemon's provider hook; nothing to run unless ``[update] enabled``."""
    cfg = runtime.config.update
    if not cfg.enabled:
        return []
    control: ControlService = runtime.control
    probes = room_probes(control, runtime)
    meeting_active = _meeting_probe(runtime)

    async def health() -> str | None:
        return await wait_healthy(probes, cfg.health_timeout_s)

    updater = Updater(
        runtime.state_dir,
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
    return [updater]


def _meeting_probe(runtime: Any) -> Callable[[], bool]:
    try:
        from agent.privacy.service import guard_of
    except ImportError:  # pragma: no cover - privacy is part of every build
        return lambda: False
    guard = guard_of(runtime)
    return lambda: not guard.keys.keys.idle
