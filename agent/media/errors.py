"""Media errors: one group under ``AgentError``, subclasses by origin, data as attributes."""

from __future__ import annotations

__all__ = [
    "CommandError",
    "KeyFileError",
    "MalformedFrameError",
    "MalformedPacketError",
    "MediaError",
    "PlaintextRefusedError",
    "RecordFileError",
    "SinkError",
]

from agent.errors import AgentError


class MediaError(AgentError):
    """Root of the media path's errors."""


class MalformedPacketError(MediaError):
    """A datagram is not a packet of our RTP format; ``reason`` says which check failed."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"malformed RTP packet: {reason}")


class MalformedFrameError(MediaError):
    """A reassembled frame has no valid frame header; ``reason`` says which check failed."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"malformed media frame: {reason}")


class SinkError(MediaError):
    """A sink could not be opened or could not send; ``sink`` names it (URL)."""

    def __init__(self, sink: str, reason: str) -> None:
        self.sink = sink
        self.reason = reason
        super().__init__(f"{sink}: {reason}")


class PlaintextRefusedError(SinkError):
    """A payload that is not SFrame-protected was offered to a sink while E2EE is required.

    Nothing was sent: no unencrypted media leaves the device while policy requires E2EE.
    """


class RecordFileError(MediaError):
    """A media record file is not ours or is truncated; ``offset`` is where reading stopped."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(f"{path}@{offset}: {reason}")


class KeyFileError(MediaError):
    """A lab key file cannot be used; ``path`` names it, ``reason`` says why (never the key)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class CommandError(MediaError):
    """A camera command could not be carried out here (no camera, no pipeline, a HAL refusal)."""
