"""Telemetry minimisation: what leaves the device follows the policy; personal data never, anywhere.

The policy's ``telemetry.level`` plus its ``telemetry.fields`` is an allow-list for what LEAVES the
device: :meth:`TelemetryFilter.filter_state` applies it to the retained state document before it is
published over MQTT. Allow-list entries are dotted paths; an entry allows its whole subtree
(``health`` allows ``health.fps``), a deeper entry allows just that leaf (``health.status``). The
control protocol's own fields (device id, online flag, applied versions, identity public keys, audit
head, lock state) are not telemetry: without them the fleet plane could not tell what a room runs, so
they pass at every level, ``none`` included.

Local logs (stdout, stored by journald on the device) are diagnostics, not telemetry: a tester or
admin at the room needs the fault, encoder, reason and counts to see what happened, so
:meth:`TelemetryFilter.processor` keeps operational fields at every level. What never passes, in logs
or state, whatever the level and whatever ``telemetry.fields`` says: values that are bytes (frame or
key material), and keys named like secrets, keys, frame contents or personal data (:data:`NEVER`).
"""

from __future__ import annotations

__all__ = [
    "NEVER",
    "PROTOCOL_STATE_FIELDS",
    "STATE_FIELDS",
    "TelemetryFilter",
    "allowed_paths",
    "install_log_filter",
]

from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

from agent.schema.policy import DEFAULT_POLICY, PolicyBody

# Never published or logged: secrets, key and frame material, personal data (by leaf key name).
NEVER: frozenset[str] = frozenset(
    {
        "key",
        "keys",
        "base_key",
        "private_key",
        "secret",
        "password",
        "passphrase",
        "token",
        "sealed",
        "plaintext",
        "ciphertext",
        "frame",
        "frame_bytes",
        "image",
        "snapshot",
        "payload",
        "data",
        "ip",
        "ip_address",
        "mac_address",
        "email",
        "user",
        "username",
        "person",
        "participants",
        "display_name",
        "face",
    }
)
_NEVER_SUFFIXES = (
    "_secret",
    "_password",
    "_token",
    "_private",
    "_plaintext",
    "_bytes",
    "_ip",
    "_address",
    "_email",
)

# Retained state document: protocol fields always, then per level.
PROTOCOL_STATE_FIELDS: frozenset[str] = frozenset(
    {
        "device",
        "groups",
        "online",
        "time",
        "updated_at",
        "applied",
        "identity",
        "audit_head",
        "audit_corrupt",
        "rejections",
        "locked",
        "privacy.locked",
        "privacy.state",
        # Firmware: running version and update phase/progress (the fleet must see what runs where).
        "update",
    }
)
# minimal: whether the room works (per-service health), and its privacy posture; no media figures.
_MINIMAL_STATE = frozenset(
    {"health", "agent_version", "privacy", "e2ee.required", "e2ee.active", "e2ee.epoch", "media.sending"}
)
STATE_FIELDS: dict[str, frozenset[str]] = {
    "none": frozenset(),
    "minimal": _MINIMAL_STATE,
    "standard": _MINIMAL_STATE
    | frozenset({"e2ee", "media", "inventory", "agent", "restarts", "version", "uptime_s"}),
}


def allowed_paths(policy: PolicyBody) -> frozenset[str]:
    """The dotted paths of the state document allowed off the device under ``policy``."""
    return PROTOCOL_STATE_FIELDS | STATE_FIELDS[policy.telemetry.level] | frozenset(policy.telemetry.fields)


def _never(key: str, value: Any) -> bool:
    if isinstance(value, bytes | bytearray | memoryview):
        return True
    name = key.lower()
    return name in NEVER or name.endswith(_NEVER_SUFFIXES)


def _is_bytes(value: Any) -> bool:
    return isinstance(value, bytes | bytearray | memoryview)


def _scrub(value: Any, *, names: bool = True) -> Any:
    """Remove never-allowed keys (and always bytes) anywhere inside an allowed subtree.

    ``names=False`` for the protocol's own fields (signed attestations carry a ``payload``): their
    content is made by the agent for the fleet plane, so only bytes values are removed.
    """
    if isinstance(value, Mapping):
        return {
            k: _scrub(v, names=names)
            for k, v in value.items()
            if not (_is_bytes(v) or (names and _never(str(k), v)))
        }
    if isinstance(value, list | tuple):
        return [_scrub(v, names=names) for v in value if not _is_bytes(v)]
    return value


def _filter(
    value: Mapping[str, Any],
    allowed: frozenset[str],
    prefixes: frozenset[str],
    path: str,
    protocol: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        full = f"{path}{key}"
        if full in protocol and not _is_bytes(item):
            out[key] = _scrub(item, names=False)
        elif _never(str(key), item):
            continue
        elif full in allowed:
            out[key] = _scrub(item)
        elif full in prefixes and isinstance(item, Mapping):
            inner = _filter(item, allowed, prefixes, full + ".", protocol)
            if inner:
                out[key] = inner
    return out


def _prefixes(allowed: frozenset[str]) -> frozenset[str]:
    out: set[str] = set()
    for path in allowed:
        parts = path.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return frozenset(out)


class TelemetryFilter:
    """The allow-list for the published state (following the policy in force) and the log scrubber."""

    def __init__(self, policy: PolicyBody = DEFAULT_POLICY) -> None:
        self.set_policy(policy)

    def set_policy(self, policy: PolicyBody) -> None:
        """Switch to a newly applied policy (takes effect for the next log line / state publish)."""
        state_allowed = allowed_paths(policy)
        # One tuple, swapped in one assignment, so a publisher in another thread sees old or new.
        self._lists = (state_allowed, _prefixes(state_allowed))
        self.level = policy.telemetry.level

    def processor(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> dict[str, Any]:
        """structlog processor for local logs: operational fields stay; secrets, key and frame
        material and personal data go (at any depth), whatever the telemetry level."""
        return {k: _scrub(v) for k, v in event_dict.items() if not _never(str(k), v)}

    def filter_state(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """The state document as it may leave the device."""
        state_allowed, state_prefixes = self._lists
        return _filter(state, state_allowed, state_prefixes, "", PROTOCOL_STATE_FIELDS)


def install_log_filter(telemetry: TelemetryFilter) -> None:
    """Put ``telemetry.processor`` (the log scrubber) into the running structlog configuration, just
    before the renderer.

    The daemon configures logging before the policy is loaded; this adds the filter afterwards. The
    processor list is changed in place, so loggers already bound (and cached) filter too. Idempotent.
    """
    processors = structlog.get_config()["processors"]
    if any(getattr(p, "__self__", None) is telemetry for p in processors):
        return
    processors.insert(max(len(processors) - 1, 0), telemetry.processor)
