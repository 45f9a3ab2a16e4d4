"""Errors of the privacy package, one root (``PrivacyError``) grouped by origin.

- ``KeyDeliveryError``: an HPKE-sealed key package could not be used (bad seal, bad binding, a KEM
  or suite the policy forbids, an epoch that goes backwards). ``reason`` is an ack reason code.
- ``InterventionError``: a lock/unlock/deprovision/snapshot command is refused in the room's state.
- ``IdentityError``: the device HPKE identity cannot be loaded or created.

``KeyDeliveryError`` and ``InterventionError`` are also ``agent.control.errors.Refused``: raised from a
control-plane handler, the document is acked ``rejected`` with their ``reason`` (not ``rolled_back``).
"""

from __future__ import annotations

__all__ = ["IdentityError", "InterventionError", "KeyDeliveryError", "PrivacyError"]

from agent.control.errors import Refused
from agent.errors import AgentError


class PrivacyError(AgentError):
    """Root of the privacy package's errors. ``reason`` is a stable code for acks and audit."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        self.message = message
        AgentError.__init__(self, f"{reason}: {message}")


class IdentityError(PrivacyError):
    """The device HPKE identity is unreadable, of the wrong shape, or could not be persisted."""


class KeyDeliveryError(PrivacyError, Refused):
    """A key package (or one sealed entry of it) is unusable; nothing was installed."""


class InterventionError(PrivacyError, Refused):
    """An intervention or snapshot command is refused; the room's state is unchanged."""
