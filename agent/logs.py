"""structlog set-up, done once by the daemon and the CLIs (libraries only call ``get_logger``).

JSON lines to stdout when stdout is not a TTY (journald stores them), a console renderer on a TTY.
Never log keys, frame bytes or personal data: log sizes, ids and digests instead.
"""

from __future__ import annotations

__all__ = ["configure_logging"]

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, Literal

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

Processor = Callable[[Any, str, Any], Any]


def configure_logging(
    level: str = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    *,
    extra_processors: Sequence[Processor] = (),
    stream: Any = None,
) -> None:
    """Configure structlog for the whole process.

    Args:
        level: minimum level name.
        fmt: ``auto`` picks console on a TTY, JSON otherwise.
        extra_processors: run just before rendering (e.g. the telemetry allow-list filter).
        stream: where to write (default ``sys.stdout``).
    """
    out = stream if stream is not None else sys.stdout
    use_console = fmt == "console" or (fmt == "auto" and hasattr(out, "isatty") and out.isatty())
    renderer: Any = structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        *extra_processors,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
