"""Errors of the transparency log, grouped by origin.

``ProofError`` and ``NoteError`` are bad data (a proof or a checkpoint that does not verify);
``LogStoreError`` is a local problem with the log directory.
"""

from __future__ import annotations

__all__ = ["LogStoreError", "NoteError", "ProofError", "TlogError"]

from agent.errors import AgentError


class TlogError(AgentError):
    """Root of the transparency log's errors."""


class ProofError(TlogError):
    """An inclusion or consistency proof does not verify (RFC 9162 2.1.3.2 / 2.1.4.2)."""


class NoteError(TlogError):
    """A signed note or checkpoint is malformed or not signed by a trusted key."""


class LogStoreError(TlogError):
    """The log directory cannot be read or written, or holds inconsistent data."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")
