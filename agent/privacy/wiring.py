"""Plugging the privacy guard into the control plane (``agent.control.service.ControlService``).

:func:`wire_control` registers the privacy command handlers (``keys``, ``lock``, ``unlock``,
``deprovision``, ``snapshot``), the lock-state hook (media-affecting documents are refused with
``locked``), the HPKE public keys and the ``privacy``/``e2ee`` fields of the retained state, the
telemetry allow-list as the state filter, and the audit log for interventions.

:class:`PrivacyApplyTarget` wraps the control plane's apply target so that an applied (or rolled-back)
``policy`` takes effect in the guard before the rest of the system sees it.

The verifier has already enforced who may sign (docs/design.md table) when a handler runs; the handlers
enforce what depends on the device's own state (locked, policy suites and KEM, snapshot permission).
A handler's refusal raises a ``PrivacyError`` whose ``reason`` is an ack reason code.
"""

from __future__ import annotations

__all__ = ["PrivacyApplyTarget", "wire_control"]

from collections.abc import Mapping
from typing import Any, Protocol

from pydantic import BaseModel

from agent.control.roster import ATTESTATION_KIND
from agent.control.service import ControlService
from agent.control.verify import VerifiedDocument
from agent.privacy.errors import InterventionError
from agent.privacy.guard import PrivacyGuard, audit_to
from agent.privacy.interventions import INTERVENTIONS
from agent.privacy.snapshot import take_snapshot
from agent.schema.key_package import KeysBody
from agent.schema.policy import PolicyBody


class _ApplyTarget(Protocol):
    async def apply(self, kind: str, body: BaseModel) -> None: ...

    async def healthy(self, timeout_s: float) -> bool: ...


class PrivacyApplyTarget:
    """An apply target that first hands ``policy`` bodies to the guard, then to ``inner``."""

    def __init__(self, guard: PrivacyGuard, inner: _ApplyTarget) -> None:
        self._guard = guard
        self._inner = inner

    async def apply(self, kind: str, body: BaseModel) -> None:
        if kind == "policy":
            if not isinstance(body, PolicyBody):
                raise TypeError(f"a policy body, not {type(body).__name__}")
            self._guard.apply_policy(body)
        await self._inner.apply(kind, body)

    async def healthy(self, timeout_s: float) -> bool:
        return await self._inner.healthy(timeout_s)


def wire_control(service: ControlService, guard: PrivacyGuard, *, policy: PolicyBody | None = None) -> None:
    """Connect ``guard`` to a control service (call once, before ``service.run``).

    Args:
        policy: the control plane's last-known-good policy, made the guard's policy in force.
    """
    if policy is not None:
        guard.apply_policy(policy)

    async def keys(name: str, args: Mapping[str, Any], doc: VerifiedDocument) -> str:
        body = doc.body if isinstance(doc.body, KeysBody) else KeysBody.model_validate(args)
        installed = guard.install_keys(body, issued_at=doc.issued_at)
        own = installed.own
        sending = f"sending kid {own.kid}" if own is not None else "receive only"
        peers = len(installed.peers)
        return f"meeting {installed.meeting} epoch {installed.epoch}: {sending}, {peers} receive keys"

    async def intervention(name: str, args: Mapping[str, Any], doc: VerifiedDocument) -> str:
        record = await guard.intervene(name, args, roles_met=doc.roles, doc_version=doc.version)
        return f"{name} by {record.role}: room {record.state.value}"

    async def snapshot(name: str, args: Mapping[str, Any], doc: VerifiedDocument) -> str:
        reason = guard.snapshot_refusal(doc.roles)
        if reason is not None:
            raise InterventionError(reason, "snapshot refused")
        if guard.snapshot_source is None:
            raise InterventionError("no_camera", "this device has no camera for snapshots")
        # The image leaves the room only sealed to the requester (agent.privacy.snapshot).
        snap = await take_snapshot(
            guard.snapshot_source,
            args,
            device=service.device,
            doc_version=doc.version,
            payload_sha256=doc.payload_sha256,
            policy=guard.policy,
        )
        service.publish_device("snapshot", snap.message(service.identity))
        service.audit.append(
            "snapshot",
            kind="command",
            version=doc.version,
            outcome="sealed",
            message=f"camera {snap.camera} kem {snap.kem} png {snap.png_size} B sha256 {snap.png_sha256}",
        )
        return f"snapshot of {snap.camera} sealed ({snap.kem}, {snap.png_size} B)"

    service.commands.register("keys", keys)
    for name in sorted(INTERVENTIONS):
        service.commands.register(name, intervention)

    async def meeting_stop(name: str, args: Mapping[str, Any], doc: VerifiedDocument) -> str:
        # Customer-signed only (verify.required_roles): the vendor cannot cut a customer's meeting.
        meeting = args.get("meeting")
        running = guard.keys.keys.meeting
        if running is None:
            return "no meeting keys installed: nothing to stop"
        if meeting is not None and meeting != running:
            return f"meeting {meeting} not running here (running: {running}): nothing stopped"
        guard.keys.clear("meeting_stop")  # keys erased: media stops, indicator goes off
        await guard.enforce_camera()  # shutter closed when idle (policy)
        return f"meeting {running} stopped: keys erased, media stopped"

    service.commands.register("snapshot", snapshot)
    service.commands.register("meeting_stop", meeting_stop)
    service.lock_state = lambda: not guard.interventions.media_allowed
    service.identity_providers["hpke"] = guard.identity.public_keys
    # The HPKE keys signed by the device's Ed25519 identity: the broker (the vendor's) cannot swap in
    # its own key without the customer's tool noticing (roomctl checks it against the roster).
    attestation = service.identity.sign_envelope(
        ATTESTATION_KIND, {"device": service.device, "hpke": guard.identity.public_keys()}
    ).to_dict()
    service.identity_providers["hpke_attestation"] = lambda: attestation
    service.state_providers["privacy"] = lambda: guard.state_fragment()["privacy"]
    service.state_providers["e2ee"] = lambda: guard.state_fragment()["e2ee"]
    service.state_filter = guard.filter_state
    guard.interventions.set_audit(audit_to(service.audit))
    guard.add_state_sink(lambda fragment: service.publish_state())
