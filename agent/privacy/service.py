"""The privacy guard inside ``roomagent run``: one :class:`PrivacyGuard` per runtime.

The control plane reaches it with :func:`guard_of` (to verify-then-apply policies, key packages and
interventions and to publish the HPKE identity); the daemon runs it as a service through
:func:`services` (provider ``("agent.privacy.service", "services")``, after media). The guard drives the
media path's ``KeySource`` (``agent.media.service.media_of``) whichever of the two is built first.
"""

from __future__ import annotations

__all__ = ["guard_of", "publish_identity", "services"]

import importlib
import weakref
from typing import Any

from agent.persist import read_json
from agent.privacy.guard import PrivacyGuard
from agent.privacy.policy import DEFAULT_POLICY, PolicyBody
from agent.privacy.telemetry import install_log_filter

_BY_RUNTIME: weakref.WeakKeyDictionary[Any, PrivacyGuard] = weakref.WeakKeyDictionary()


def _media_of(runtime: Any) -> Any:
    try:
        module = importlib.import_module("agent.media.service")
    except ModuleNotFoundError:
        return None
    return module.media_of(runtime)


def _last_policy(runtime: Any) -> PolicyBody:
    """The last-known-good policy body if the control plane stored one, else the first-boot default."""
    stored = read_json(runtime.state_dir / "privacy" / "policy.json")
    if isinstance(stored, dict):
        return PolicyBody.model_validate(stored)
    return DEFAULT_POLICY


def guard_of(runtime: Any) -> PrivacyGuard:
    """The guard of ``runtime``, created on first use (identity generated on first start)."""
    guard = _BY_RUNTIME.get(runtime)
    if guard is None:
        guard = PrivacyGuard(
            state_dir=runtime.state_dir, device_id=runtime.device_id, policy=_last_policy(runtime)
        )
        _BY_RUNTIME[runtime] = guard
        install_log_filter(guard.telemetry)  # every log line from now on passes the allow-list
        guard.set_state_sink(lambda fragment: runtime.update_state(**fragment))
        publish_identity(runtime, guard)
    media = _media_of(runtime)
    if media is not None and guard.key_source is not media.keys:
        guard.sframe.bind_key_source(media.keys)
        guard.key_source = media.keys
        # Policy e2ee.required reaches every pipeline and sink (they refuse plaintext while it holds);
        # camera.shutter_when_idle makes each pipeline close its camera's shutter while no key is set.
        guard.add_policy_listener(lambda policy: media.set_e2ee_required(policy.e2ee.required))
        guard.add_policy_listener(lambda policy: media.set_shutter_when_idle(policy.camera.shutter_when_idle))
        for pipeline in media.pipelines:
            # Pipelines that expose the camera's shutter follow shutter_when_idle and announce.
            if (
                hasattr(pipeline, "set_shutter")
                and hasattr(pipeline, "announce")
                and pipeline not in guard.cameras
            ):
                guard.add_camera(pipeline)
    return guard


def publish_identity(runtime: Any, guard: PrivacyGuard) -> None:
    """Add ``identity.hpke`` to the device state, keeping what is there (the Ed25519 key)."""
    current = runtime.state_snapshot().get("identity")
    merged = {**(current if isinstance(current, dict) else {}), **guard.identity_fragment()}
    runtime.update_state(identity=merged)


class _GuardService:
    name = "privacy"

    def __init__(self, runtime: Any) -> None:
        self._runtime = runtime

    async def run(self, progress: Any) -> None:
        guard = guard_of(self._runtime)  # binds the media key source, now that media is built
        publish_identity(self._runtime, guard)
        await guard.run(progress)


def services(runtime: Any) -> list[Any]:
    """The daemon's service provider."""
    guard_of(runtime)
    return [_GuardService(runtime)]
