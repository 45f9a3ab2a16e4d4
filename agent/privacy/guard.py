"""The device's privacy guard: one owner for the policy in force and everything that follows from it.

The control plane calls it after a document passed verification:

- :meth:`PrivacyGuard.refusal` first (``locked`` while the room is locked or deprovisioned);
- :meth:`PrivacyGuard.apply_policy` for an applied ``policy``;
- :meth:`PrivacyGuard.install_keys` for a ``keys`` document (raises ``KeyDeliveryError`` with an ack
  reason code);
- :meth:`PrivacyGuard.intervene` for ``lock`` / ``unlock`` / ``deprovision``;
- :meth:`PrivacyGuard.snapshot_refusal` before a ``snapshot``.

It publishes :meth:`identity_fragment` (HPKE public keys, under ``identity.hpke``) and
:meth:`state_fragment` (``privacy`` and ``e2ee``) into the device state, filters logs and state through
the policy's telemetry allow-list, and as a supervised service (:meth:`run`) expires meeting keys on
time and keeps the camera shutters closed while the room is idle (no meeting keys) and the policy says
``camera.shutter_when_idle``, or while the room is locked.
"""

from __future__ import annotations

__all__ = ["AuditAppender", "PrivacyGuard", "ShutterControl", "audit_to"]

import asyncio
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import structlog

from agent.e2ee.counter import CounterStore
from agent.media.key_source import KeySource
from agent.privacy.errors import KeyDeliveryError
from agent.privacy.hpke import HpkeIdentity
from agent.privacy.interventions import (
    AuditFn,
    InterventionRecord,
    InterventionState,
    RoomState,
    check_snapshot,
)
from agent.privacy.key_packages import KeyManager, KeySet
from agent.privacy.sframe_keys import SFrameKeyTarget
from agent.privacy.snapshot import FrameSource
from agent.privacy.telemetry import TelemetryFilter
from agent.schema.key_package import KeysBody
from agent.schema.policy import DEFAULT_POLICY, PolicyBody
from agent.service import Progress

# An idle wait beats this often, so the supervisor's stall detection (as low as ~0.5 s in tests) never
# mistakes a quiet room for a hung service.
_IDLE_TURN_S = 0.2


class ShutterControl(Protocol):
    """A privacy shutter and an in-room announcer: ``hal.protocols.Camera`` (or the media pipeline)."""

    async def set_shutter(self, closed: bool) -> None: ...

    async def announce(self, message: str) -> None: ...


class AuditAppender(Protocol):
    """The control plane's audit log (``agent.control.audit.AuditLog.append``)."""

    def append(
        self,
        event: str,
        *,
        kind: str | None = ...,
        version: int | None = ...,
        outcome: str,
        reason: str | None = ...,
        message: str | None = ...,
    ) -> dict[str, Any]: ...


def audit_to(log: AuditAppender) -> AuditFn:
    """An intervention audit callback writing to the device's hash-chained audit log."""

    def append(event: str, fields: dict[str, Any]) -> None:
        order = fields.get("lawful_order")
        ref = "" if not order else f" order {order['issuer']}/{order['id']} ({order['jurisdiction']})"
        log.append(
            event,
            kind="command",
            version=fields.get("doc_version"),
            outcome=str(fields["state"]),
            message=f"{fields['command']} by {fields['role']}{ref}",
        )

    return append


class PrivacyGuard:
    """Policy, HPKE identity, meeting keys, interventions, telemetry and camera privacy of one device.

    Args:
        state_dir: the agent's state directory (``identity/hpke.json``, ``privacy/...`` live there).
        device_id: this device.
        key_source: the media pipeline's SFrame sender holder (a fresh one if not given).
        policy: the policy in force at start (last-known-good, or the first-boot default).
        audit: appends an audit entry (the control plane's audit log).
    """

    name = "privacy"

    def __init__(
        self,
        *,
        state_dir: Path,
        device_id: str,
        key_source: KeySource | None = None,
        policy: PolicyBody = DEFAULT_POLICY,
        audit: AuditFn | None = None,
        cameras: Iterable[ShutterControl] = (),
    ) -> None:
        state_dir = Path(state_dir)
        self.device_id = device_id
        self._policy = policy
        self._log = structlog.get_logger()
        self.identity = HpkeIdentity.load_or_create(state_dir / "identity" / "hpke.json")
        self.telemetry = TelemetryFilter(policy)
        self.cameras = list(cameras)
        self.interventions = InterventionState(
            state_dir / "privacy" / "intervention.json", audit=audit, announcers=self.cameras
        )
        self.interventions.add_listener(self._on_intervention)
        self.key_source = key_source if key_source is not None else KeySource()
        self.sframe = SFrameKeyTarget(
            self.key_source,
            counter_store=CounterStore(state_dir / "privacy" / "meeting-ctr.json"),
            on_change=self._on_keys,
        )
        self.keys = KeyManager(
            device_id=device_id, identity=self.identity, policy=lambda: self._policy, target=self.sframe
        )
        self._camera_dirty = asyncio.Event()
        self._camera_dirty.set()  # enforce once at start
        self.shutter_closed: bool | None = None
        self._state_sinks: list[Callable[[dict[str, Any]], None]] = []
        self._policy_listeners: list[Callable[[PolicyBody], None]] = []
        # Where remote snapshots come from (agent.privacy.snapshot.InventoryFrameSource); None: no camera.
        self.snapshot_source: FrameSource | None = None

    def add_policy_listener(self, listener: Callable[[PolicyBody], None]) -> None:
        """Call ``listener(policy)`` now and after every applied policy (e.g. media's E2EE switch)."""
        self._policy_listeners.append(listener)
        listener(self._policy)

    def add_state_sink(self, sink: Callable[[dict[str, Any]], None]) -> None:
        """Also send :meth:`state_fragment` to ``sink`` now and whenever it changes (the daemon's
        ``update_state``, the control plane's state publisher)."""
        self._state_sinks.append(sink)
        sink(self.state_fragment())

    def _publish_state(self) -> None:
        if self._state_sinks:
            fragment = self.state_fragment()
            for sink in self._state_sinks:
                sink(fragment)

    # --- what the device publishes -------------------------------------------------------------------
    @property
    def policy(self) -> PolicyBody:
        return self._policy

    def identity_fragment(self) -> dict[str, Any]:
        """``{"hpke": {kem: base64 public key}}`` for the state's ``identity``."""
        return {"hpke": self.identity.public_keys()}

    def state_fragment(self) -> dict[str, Any]:
        """``privacy`` and ``e2ee`` fields for the device state (no key material)."""
        keys = self.keys.keys
        return {
            "privacy": {**self.interventions.state_fragment(), "shutter_closed": self.shutter_closed},
            "e2ee": {
                "required": self._policy.e2ee.required,
                "active": not keys.idle,
                "meeting": keys.meeting,
                "epoch": keys.epoch,
                "sending": keys.own is not None,
                "peers": len(keys.peers),
            },
        }

    def filter_state(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """The state as it may leave the device under the policy's telemetry level."""
        return self.telemetry.filter_state(state)

    # --- control-plane hooks --------------------------------------------------------------------------
    def refusal(self, doc_kind: str, command: str | None = None) -> str | None:
        """``locked`` when a verified document must still be refused in the room's state."""
        return self.interventions.refusal(doc_kind, command)

    def apply_policy(self, policy: PolicyBody) -> None:
        """A verified, applied policy takes effect: telemetry, key checks, camera shutter."""
        self._policy = policy
        self.telemetry.set_policy(policy)
        self.keys.on_policy(policy)
        for listener in self._policy_listeners:
            listener(policy)
        self._camera_dirty.set()
        self._publish_state()
        self._log.info("privacy_policy_applied", level=policy.telemetry.level)

    def install_keys(self, body: KeysBody, issued_at: datetime | None = None) -> KeySet:
        """Install a verified (customer-signed) key package issued at ``issued_at`` (its signed
        ``issued_at``; ``None`` skips the unlock rule, for local callers).

        After an unlock only a package issued after the unlock is taken: a package signed before it
        (sent, say, while the room was locked, and redelivered by the broker) would otherwise bring
        back keys without any new action by the customer.

        Raises:
            KeyDeliveryError: ``locked``; ``rollback`` (issued before the unlock); or a reason from
                :meth:`KeyManager.install`; nothing installed.
        """
        reason = self.refusal("keys")
        if reason is not None:
            raise KeyDeliveryError(reason, "the room is locked: no meeting keys are accepted")
        record = self.interventions.record
        if issued_at is not None and record.command == "unlock":
            unlocked = datetime.strptime(record.since, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            if issued_at <= unlocked:
                raise KeyDeliveryError(
                    "rollback",
                    f"key package issued {issued_at.strftime('%Y-%m-%dT%H:%M:%SZ')}, not after the unlock "
                    f"at {record.since}: send a new one",
                )
        return self.keys.install(body)

    async def intervene(
        self,
        command: str,
        args: Mapping[str, Any],
        *,
        roles_met: Iterable[str],
        doc_version: int | None = None,
    ) -> InterventionRecord:
        """Run a verified ``lock`` / ``unlock`` / ``deprovision`` (see :class:`InterventionState`)."""
        return await self.interventions.apply(
            command, args, roles_met=roles_met, policy=self._policy, doc_version=doc_version
        )

    def snapshot_refusal(self, roles_met: Iterable[str]) -> str | None:
        """``None`` when a ``snapshot`` may run now, else the rejection reason."""
        return check_snapshot(roles_met, self._policy, self.interventions.state)

    def add_camera(self, camera: ShutterControl) -> None:
        """A camera (or pipeline) whose shutter follows the policy and that announces interventions."""
        self.cameras.append(camera)
        self.interventions.add_announcer(camera)
        self._camera_dirty.set()

    # --- reactions ------------------------------------------------------------------------------------
    async def _on_intervention(self, record: InterventionRecord) -> None:
        if record.state is not RoomState.ACTIVE:
            self.keys.clear(record.state.value)  # media stops: no sender key, nothing leaves
            self.enforce_lock()
        await self.enforce_camera()
        self._publish_state()

    def enforce_lock(self) -> None:
        """While locked or deprovisioned no sender key of any origin (meeting or lab) stays set."""
        if not self.interventions.media_allowed and self.key_source.current()[0] is not None:
            self.key_source.set_sender(None, 0)
            self._log.warning("privacy_media_stopped", reason=self.interventions.state.value)

    def _on_keys(self, keys: KeySet) -> None:
        self._camera_dirty.set()
        self._publish_state()

    def shutter_should_close(self) -> bool:
        if not self.interventions.media_allowed:
            return True
        return self._policy.camera.shutter_when_idle and self.keys.keys.idle

    async def enforce_camera(self) -> None:
        """Close or open every camera's shutter as the policy and the room's state require."""
        self._camera_dirty.clear()
        closed = self.shutter_should_close()
        for camera in self.cameras:
            try:
                await camera.set_shutter(closed)
            except Exception as exc:  # one broken camera must not keep the others open
                self._log.error("privacy_shutter_failed", error=type(exc).__name__)
        if not self.cameras:
            return  # the media pipelines own the shutters (they follow shutter_when_idle themselves)
        if closed != self.shutter_closed:
            self._log.info("privacy_shutter", state="closed" if closed else "open")
            self.shutter_closed = closed
            self._publish_state()

    async def run(self, progress: Progress) -> None:
        """Supervised service: key expiry timer and camera shutter enforcement, until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.keys.run(), name="privacy.key_expiry")
            while True:
                progress.beat()
                try:
                    async with asyncio.timeout(_IDLE_TURN_S):
                        await self._camera_dirty.wait()
                except TimeoutError:
                    continue  # an idle turn: beat and wait again
                await self.enforce_camera()
