"""systemd's notify protocol (sd_notify(3)) over ``$NOTIFY_SOCKET``, without libsystemd.

The socket is an AF_UNIX datagram socket given either as a file system path or, when it starts with
``@``, as a name in the abstract namespace (leading NUL byte). Each datagram carries newline-separated
``KEY=VALUE`` assignments (READY=1, STATUS=..., WATCHDOG=1, STOPPING=1). Without ``NOTIFY_SOCKET`` every
call is a no-op, so the agent runs the same outside systemd. Send failures are logged, never raised:
a daemon must not die because its supervisor's socket is gone.
"""

from __future__ import annotations

__all__ = ["Notifier", "watchdog_interval"]

import os
import socket
from collections.abc import Mapping

import structlog

_MAX_STATUS = 512  # a STATUS line is for humans (systemctl status): keep it short


def _address(raw: str) -> str | bytes:
    if raw.startswith("@"):
        # sd_notify(3): "@" denotes the abstract namespace, i.e. a leading NUL byte.
        return b"\0" + raw[1:].encode()
    return raw


class Notifier:
    """Sends notify messages to the service manager named by ``NOTIFY_SOCKET``.

    Args:
        environ: where to read ``NOTIFY_SOCKET`` (default ``os.environ``).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self._log = structlog.get_logger()
        self._address: str | bytes | None = None
        self._sock: socket.socket | None = None
        if not raw:
            return
        if not (raw.startswith("/") or raw.startswith("@")):
            # systemd only ever sets absolute paths or abstract names (vsock addresses are not ours).
            self._log.warning("sd_notify_unsupported_socket", socket=raw)
            return
        self._address = _address(raw)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens (``NOTIFY_SOCKET`` was set)."""
        return self._sock is not None

    def send(self, **fields: str) -> bool:
        """Send one datagram with ``KEY=VALUE`` lines, e.g. ``send(READY="1", STATUS="up")``.

        Returns:
            True when a datagram was sent; False when disabled or the send failed (logged).
        """
        if self._sock is None or self._address is None:
            return False
        lines = []
        for key, value in fields.items():
            text = str(value).replace("\n", " ")
            if key == "STATUS":
                text = text[:_MAX_STATUS]
            lines.append(f"{key}={text}")
        try:
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:
            self._log.warning("sd_notify_failed", keys=sorted(fields), error=exc.strerror or str(exc))
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: start-up finished (systemd's Type=notify waits for this)."""
        return self.send(READY="1", **({"STATUS": status} if status else {}))

    def status(self, status: str) -> bool:
        """STATUS=: a one-line summary shown by ``systemctl status``."""
        return self.send(STATUS=status)

    def watchdog(self, status: str | None = None) -> bool:
        """WATCHDOG=1: keep-alive ping; send only while the agent really makes progress."""
        return self.send(WATCHDOG="1", **({"STATUS": status} if status else {}))

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: the agent is shutting down."""
        return self.send(STOPPING="1", **({"STATUS": status} if status else {}))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of ``WATCHDOG_USEC`` (sd_watchdog_enabled(3)).

    Returns None when the watchdog is not enabled for this process: no or invalid ``WATCHDOG_USEC``, or a
    ``WATCHDOG_PID`` naming another process.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / 1_000_000 / 2
