"""A throw-away local Mosquitto broker for benchmarks and demos (never for production).

Starts ``mosquitto`` on a free loopback port with its own configuration and persistence directory,
waits until it accepts connections, and stops it again. Tests use the richer wrapper in
``tests/broker.py`` (TLS, client certificates, ACLs) which builds on this class.
"""

from __future__ import annotations

__all__ = ["MOSQUITTO", "BrokerError", "Mosquitto", "free_port"]

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from agent.errors import AgentError


def _find_mosquitto() -> str:
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto"


MOSQUITTO = _find_mosquitto()


class BrokerError(AgentError):
    """The local broker could not be started."""


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """One Mosquitto process on ``127.0.0.1:port`` with persistence in ``workdir``.

    ``extra_conf`` is appended to the generated configuration (a TLS listener, an ACL file, ...).
    ``stop()`` then ``start()`` restarts it on the same port with its persisted sessions and
    retained messages.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        extra_conf: str = "",
        anonymous: bool = True,
        scheme: str = "mqtt",
    ) -> None:
        self.workdir = Path(workdir)
        self.host = "127.0.0.1"
        self.port = port if port is not None else free_port()
        self.scheme = scheme
        self._extra_conf = extra_conf
        self._anonymous = anonymous
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def conf_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def _write_conf(self) -> None:
        persist = self.workdir / "data"
        persist.mkdir(parents=True, exist_ok=True)
        conf = (
            # Started as root, mosquitto would switch to user "mosquitto" and lose its work dir.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
            f"listener {self.port} {self.host}\n"
            f"allow_anonymous {'true' if self._anonymous else 'false'}\n"
            "persistence true\n"
            f"persistence_location {persist}/\n"
            "autosave_interval 1\n"
            f"log_dest file {self.log_path}\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            "max_queued_messages 10000\n"
            "set_tcp_nodelay true\n" + self._extra_conf
        )
        self.conf_path.write_text(conf)

    def start(self, timeout_s: float = 10.0) -> None:
        """Start (or restart) the broker and wait until the port accepts connections."""
        if self._proc is not None and self._proc.poll() is None:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_conf()
        self._proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # Its own session: Ctrl-C in a terminal reaches the agent alone, which disconnects
            # cleanly (publishing "offline") before it stops the broker.
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
                self._proc = None
                raise BrokerError(f"mosquitto exited at start: {err.strip()} {log[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.2):
                return
            time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout_s} s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop gracefully (SIGTERM: persistence is saved), SIGKILL if it hangs."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def kill(self) -> None:
        """SIGKILL: a broker crash (in-flight state since the last autosave is lost)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
