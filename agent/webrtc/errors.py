"""WebRTC errors: one group under ``AgentError``, subclasses by origin, data as attributes."""

from __future__ import annotations

__all__ = ["FrameRuleError", "JanusError", "JoinLinkError", "WebRtcError"]

from agent.errors import AgentError


class WebRtcError(AgentError):
    """Root of the WebRTC transport's errors."""


class JanusError(WebRtcError):
    """The Janus API refused a request or could not be reached; ``request`` names it."""

    def __init__(self, request: str, reason: str, code: int | None = None) -> None:
        self.request = request
        self.reason = reason
        self.code = code
        super().__init__(f"janus {request}: {reason}" + ("" if code is None else f" (code {code})"))


class FrameRuleError(WebRtcError):
    """An encoded frame does not fit its codec's SFrame rule (e.g. shorter than its clear header)."""

    def __init__(self, codec: str, reason: str) -> None:
        self.codec = codec
        self.reason = reason
        super().__init__(f"{codec} frame: {reason}")


class JoinLinkError(WebRtcError):
    """A join link or key file is not ours or is incomplete; ``reason`` says what is wrong."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"join keys: {reason}")
