"""A real systemd-style notify socket for tests: binds an AF_UNIX datagram socket, collects messages."""

from __future__ import annotations

import os
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType


@dataclass(frozen=True, slots=True)
class Notification:
    at: float  # time.monotonic() when received
    fields: dict[str, str]


class NotifyListener:
    """What systemd does for Type=notify: a datagram socket the service writes KEY=VALUE lines to.

    ``abstract=True`` binds a name in the abstract namespace and gives ``@name`` as NOTIFY_SOCKET.
    """

    def __init__(self, *, abstract: bool = False) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._dir: str | None = None
        if abstract:
            name = f"roomagent-test-{uuid.uuid4().hex}"
            self._sock.bind(b"\0" + name.encode())
            self.address = "@" + name
        else:
            # A short directory: sun_path is limited to 108 bytes, pytest's tmp_path can be longer.
            self._dir = tempfile.mkdtemp(prefix="ra-notify-", dir="/tmp")
            path = os.path.join(self._dir, "notify.sock")
            self._sock.bind(path)
            self.address = path
        self.received: list[Notification] = []

    def __enter__(self) -> NotifyListener:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()
        if self._dir is not None:
            for p in Path(self._dir).iterdir():
                p.unlink()
            os.rmdir(self._dir)
            self._dir = None

    def receive(self, timeout: float) -> Notification | None:
        """One message, or None after ``timeout`` seconds."""
        self._sock.settimeout(max(timeout, 0.001))
        try:
            data = self._sock.recv(4096)
        except TimeoutError:
            return None
        fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        note = Notification(time.monotonic(), fields)
        self.received.append(note)
        return note

    def drain(self) -> list[Notification]:
        """Whatever is already queued on the socket."""
        out = []
        while (note := self.receive(0.001)) is not None:
            out.append(note)
        return out

    def wait_for(self, key: str, timeout: float) -> Notification:
        """Receive until a message carries ``key``; fail the test after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            note = self.receive(remaining)
            if note is not None and key in note.fields:
                return note
        raise AssertionError(f"no {key}= within {timeout} s; got {[n.fields for n in self.received]}")

    def collect(self, seconds: float) -> list[Notification]:
        """Everything received during the next ``seconds``."""
        out = []
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            note = self.receive(remaining)
            if note is not None:
                out.append(note)
        return out
