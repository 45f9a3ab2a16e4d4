"""The privacy guard inside ``roomagent run``: one :class:`PrivacyGuard` per runtime.

Two provider hooks (``agent.daemon.main.SERVICE_PROVIDERS``):

- :func:`early` (before the control plane): creates the guard and sets ``runtime.apply_target`` to a
  :class:`SystemApplyTarget`, so every applied (or rolled-back) ``policy`` takes effect in the guard
  and ``config`` documents reach the media pipelines;
- :func:`services` (after control and media): binds the media path (its ``KeySource``, E2EE and
  shutter switches), wires the control service (``runtime.control``: handlers, lock state, identity,
  telemetry state filter, audit) and returns the guard's service (key expiry, shutter enforcement).

:func:`guard_of` returns the guard from anywhere that holds the runtime.
"""

from __future__ import annotations

__all__ = ["SystemApplyTarget", "early", "guard_of", "publish_identity", "services"]

import importlib
import weakref
from typing import Any

from pydantic import BaseModel

from agent.persist import atomic_write_json
from agent.privacy.guard import PrivacyGuard
from agent.privacy.snapshot import InventoryFrameSource
from agent.privacy.telemetry import install_log_filter
from agent.privacy.wiring import wire_control
from agent.schema.policy import DEFAULT_POLICY, PolicyBody

_BY_RUNTIME: weakref.WeakKeyDictionary[Any, PrivacyGuard] = weakref.WeakKeyDictionary()
_WIRED: weakref.WeakSet[Any] = weakref.WeakSet()


def _media_of(runtime: Any) -> Any:
    try:
        module = importlib.import_module("agent.media.service")
    except ModuleNotFoundError:
        return None
    return module.media_of(runtime)


def guard_of(runtime: Any) -> PrivacyGuard:
    """The guard of ``runtime``, created on first use (HPKE identity generated on first start)."""
    guard = _BY_RUNTIME.get(runtime)
    if guard is None:
        guard = PrivacyGuard(state_dir=runtime.state_dir, device_id=runtime.device_id, policy=DEFAULT_POLICY)
        _BY_RUNTIME[runtime] = guard
        install_log_filter(guard.telemetry)  # every log line from now on passes the allow-list
        guard.add_state_sink(lambda fragment: runtime.update_state(**fragment))
        publish_identity(runtime, guard)
    media = _media_of(runtime)
    if media is not None and guard.key_source is not media.keys:
        guard.sframe.bind_key_source(media.keys)
        guard.key_source = media.keys
        # Policy e2ee.required reaches every pipeline and sink (they refuse plaintext while it holds);
        # camera.shutter_when_idle makes each pipeline close its camera's shutter while no key is set.
        guard.add_policy_listener(lambda policy: media.set_e2ee_required(policy.e2ee.required))
        guard.add_policy_listener(lambda policy: media.set_shutter_when_idle(policy.camera.shutter_when_idle))
        guard.enforce_lock()  # a room locked before a restart stays dark (a lab key included)
        if media.inventory is not None:
            # Remote snapshots: the running pipeline's camera, else the camera opened via the inventory.
            guard.snapshot_source = InventoryFrameSource(media.inventory, lambda: media.pipelines)
            # Interventions are announced by every camera (the sim shows a NOTICE on its indicator).
            for pipeline in media.pipelines:
                guard.interventions.add_announcer(_CameraAnnouncer(media.inventory, pipeline.camera_id))
    return guard


class _CameraAnnouncer:
    """Announces through the HAL camera of ``camera_id`` (the pipeline keeps the capture handle)."""

    def __init__(self, inventory: Any, camera_id: str) -> None:
        self._inventory = inventory
        self.camera_id = camera_id

    async def announce(self, message: str) -> None:
        await self._inventory.open_camera(self.camera_id).announce(message)


def publish_identity(runtime: Any, guard: PrivacyGuard) -> None:
    """Add ``identity.hpke`` to the device state, keeping what is there (the Ed25519 key)."""
    current = runtime.state_snapshot().get("identity")
    merged = {**(current if isinstance(current, dict) else {}), **guard.identity_fragment()}
    runtime.update_state(identity=merged)


class SystemApplyTarget:
    """The running system as the control plane's apply target (``agent.control.apply.ApplyTarget``).

    ``policy``: the guard applies it (telemetry, key checks, media E2EE and shutter switches).
    ``config``: the media pipelines apply it live when media runs, else it is only recorded.
    Every applied body is also written to ``<state>/running/<kind>.json`` for inspection.
    Health: while this room sends (it holds a sender key), sealed frames must flow again within the
    bound; an idle room (no meeting) has nothing to check.
    """

    def __init__(self, runtime: Any, guard: PrivacyGuard) -> None:
        self._runtime = runtime
        self._guard = guard

    async def apply(self, kind: str, body: BaseModel) -> None:
        if kind == "policy":
            if not isinstance(body, PolicyBody):
                raise TypeError(f"a policy body, not {type(body).__name__}")
            self._guard.apply_policy(body)
        elif kind == "config":
            media = _media_of(self._runtime)
            if media is not None and media.pipelines:
                media.apply_config(body.model_dump(mode="json", exclude_none=True))
        atomic_write_json(self._runtime.state_dir / "running" / f"{kind}.json", body.model_dump(mode="json"))

    async def healthy(self, timeout_s: float) -> bool:
        media = _media_of(self._runtime)
        if media is None or not media.pipelines or media.keys.current()[0] is None:
            return True
        return bool(await media.healthy(timeout_s))


class _GuardService:
    name = "privacy"

    def __init__(self, runtime: Any) -> None:
        self._runtime = runtime

    async def run(self, progress: Any) -> None:
        guard = guard_of(self._runtime)
        publish_identity(self._runtime, guard)
        await guard.run(progress)


def early(runtime: Any) -> list[Any]:
    """Provider run before the control plane: the guard and the system apply target."""
    runtime.apply_target = SystemApplyTarget(runtime, guard_of(runtime))
    return []


def services(runtime: Any) -> list[Any]:
    """Provider run after control and media: bind them to the guard; the guard's service."""
    guard = guard_of(runtime)
    control = getattr(runtime, "control", None)
    if control is not None and control not in _WIRED:
        lkg = control.state.last_known_good("policy")
        wire_control(control, guard, policy=lkg if isinstance(lkg, PolicyBody) else DEFAULT_POLICY)
        _WIRED.add(control)
    return [_GuardService(runtime)]
