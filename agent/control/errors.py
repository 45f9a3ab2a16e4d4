"""Errors of the control plane, grouped by origin.

``Rejected`` is bad data from the management plane (or an attacker): a document that fails a rule
of docs/design.md "Rules every document passes". Its ``reason`` is one of :data:`REASONS`, the code the
device puts in its ack. ``Refused`` is a command (or key package) handler declining a verified
document in the device's current state (locked, forbidden by policy, ...): acked ``rejected`` with
its reason, nothing changed. ``KeyFileError`` and ``LinkError`` are local problems.
"""

from __future__ import annotations

__all__ = [
    "REASONS",
    "ControlError",
    "Deferred",
    "KeyFileError",
    "LinkError",
    "Reason",
    "Refused",
    "Rejected",
]

from typing import Literal, get_args

from agent.errors import AgentError

Reason = Literal[
    "malformed",
    "too_large",
    "wrong_type",
    "bad_signature",
    "needs_customer",
    "lawful_order_mismatch",
    "rollback",
    "version_gap",
    "expired",
    "not_yet_valid",
    "not_for_this_device",
    "invalid_body",
    "locked",
    "apply_failed",
    "health_check_failed",
    "superseded",
    "state_error",
    # refusals by command / key-package handlers (``Refused``), see docs/control-plane.md
    "forbidden_by_policy",
    "shutter_closed",
    "no_camera",
    "capture_failed",
    "suite_forbidden",
    "kem_too_weak",
    "bad_seal",
    "deprovisioned",
    "unsupported",
    # firmware updates (agent.update), see docs/firmware.md
    "not_in_log",
    "hash_mismatch",
    "download_failed",
    "install_failed",
    "fell_back",
]
REASONS: tuple[str, ...] = get_args(Reason)


class ControlError(AgentError):
    """Root of the control plane's errors."""


class Rejected(ControlError):
    """A document was refused; ``reason`` is its ack reason code, ``message`` says why in words.

    ``authenticated`` is True when the document got past the signature gate (a threshold of some
    role signed it) before being refused: such a rejection names an accountable signer and is
    audited entry by entry; an unauthenticated one (anyone with a broker connection can send it) is
    only counted (docs/control-plane.md "Coalesced rejections").
    """

    def __init__(
        self, reason: Reason, message: str, *, authenticated: bool = False, unreadable: bool = False
    ) -> None:
        if reason not in REASONS:  # pragma: no cover - programming error
            raise ValueError(f"unknown reason code {reason!r}")
        self.reason: Reason = reason
        self.message = message
        self.authenticated = authenticated
        # Not even a DSSE envelope (or over the size cap): no version or digest can be read from it.
        self.unreadable = unreadable
        super().__init__(f"{reason}: {message}")


class Refused(ControlError):
    """A handler refuses a verified command or key package in the device's current state.

    The control plane acks it ``rejected`` with ``reason`` and audits a rejection; the handler must
    not have changed anything. Real failures while acting (any other exception) stay ``rolled_back``
    / ``apply_failed``. Subsystems with their own error root mix this class in (e.g. privacy's
    ``KeyDeliveryError``), so a handler simply raises its own typed error.
    """

    reason: str
    message: str

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        self.message = message
        AgentError.__init__(self, f"{reason}: {message}")


class Deferred(ControlError):
    """A handler accepted a verified document and reports its outcome later (a firmware update is
    acked ``applied`` only after the new slot booted and passed its health check).

    The control plane then neither acks nor records an outcome; the owner calls
    :meth:`agent.control.service.ControlService.report` when the outcome is known.
    """


class KeyFileError(ControlError):
    """A key file cannot be read, decrypted or is of an unsupported type."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class LinkError(ControlError):
    """The MQTT link cannot be set up (bad URL, missing TLS files)."""
