"""The root of every error the agent raises on purpose.

Errors are grouped by origin (configuration, persisted state, control plane, E2EE, media) so that a
caller can catch a whole group; each carries its data as attributes. Foreign exceptions are
translated where they enter (``raise ... from exc``).
"""

from __future__ import annotations

__all__ = [
    "AgentError",
    "ConfigError",
    "ConfigIssue",
    "StateError",
]

from dataclasses import dataclass


class AgentError(Exception):
    """Root of all roomagent errors."""


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One offending key of a configuration file: its dotted path and the reason."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class ConfigError(AgentError):
    """The local configuration cannot be used; ``issues`` names every offending key."""

    def __init__(self, source: str, issues: list[ConfigIssue]) -> None:
        self.source = source
        self.issues = issues
        detail = "; ".join(str(i) for i in issues)
        super().__init__(f"invalid configuration {source}: {detail}")

    def report_lines(self) -> list[str]:
        """What the CLIs print: one line per offending key, then what to do next."""
        lines = [f"{self.source}: {issue.path}: {issue.reason}" for issue in self.issues]
        if any(issue.path == "(file)" for issue in self.issues):
            lines.append(
                "next: pass the path of an existing agent.toml, or leave --config out for the built-in"
                " defaults"
            )
        else:
            lines.append(
                f"next: fix the keys above (every key, its type and default: docs/config.md), then"
                f" `roomagent check-config {self.source}`"
            )
        return lines


class StateError(AgentError):
    """Persisted state could not be read or written."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")
