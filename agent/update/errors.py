"""Errors of the device updater, grouped by origin; each carries the ack ``reason`` it maps to.

``DownloadError`` is transport or bad bytes from a mirror (``download_failed``, ``too_large``,
``hash_mismatch``); ``InstallError`` is RAUC refusing or failing (``install_failed``);
``BusError`` is D-Bus itself (no RAUC or logind on the bus).
"""

from __future__ import annotations

__all__ = ["BusError", "DownloadError", "InstallError", "UpdateError"]

from agent.errors import AgentError


class UpdateError(AgentError):
    """Root of the updater's errors; ``reason`` is the ack reason code, ``message`` the words."""

    reason = "install_failed"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        if reason is not None:
            self.reason = reason
        self.message = message
        super().__init__(f"{self.reason}: {message}")


class DownloadError(UpdateError):
    reason = "download_failed"


class InstallError(UpdateError):
    reason = "install_failed"


class BusError(UpdateError):
    reason = "install_failed"
