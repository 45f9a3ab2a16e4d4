"""Real ``roomagent run`` processes (``python -m agent run --config``) and the plane's roomctl calls.

Rooms run with the sim HAL and media off (only the control plane and its services matter here); each
has its own state directory and ``agent.toml`` naming its broker endpoints and MQTT protocol.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["RoomProcess", "applied_count", "enroll", "roomctl", "write_room_config"]


def write_room_config(
    workdir: Path,
    device: str,
    *,
    groups: list[str],
    urls: list[str],
    protocol: str,
    root: Path,
    mqtt_extra: str = "",
) -> Path:
    state = workdir / device
    state.mkdir(parents=True, exist_ok=True)
    config = workdir / f"{device}.toml"
    config.write_text(
        f'[device]\nid = "{device}"\ngroups = {json.dumps(groups)}\n'
        f'[mqtt]\nurls = {json.dumps(urls)}\nprotocol = "{protocol}"\nconnect_timeout_s = 3.0\n'
        f"{mqtt_extra}"
        f'[trust]\nroot = "{root}"\n[state]\ndir = "{state}"\n'
        '[media]\nenabled = false\n[log]\nformat = "json"\nlevel = "info"\n'
    )
    return config


@dataclass
class RoomProcess:
    device: str
    config: Path
    state_dir: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RoomProcess:
        log = (self.state_dir.parent / f"{self.device}.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(self.config)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def freeze(self) -> None:
        """SIGSTOP: the room hangs (its TCP connection stays open, nothing is read)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @property
    def log_text(self) -> str:
        path = self.state_dir.parent / f"{self.device}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def audit(self) -> list[dict[str, Any]]:
        path = self.state_dir / "audit" / "audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def applied_count(room: RoomProcess, kind: str, version: int) -> int:
    """How many times the room's audit log records ``kind`` ``version`` as applied."""
    return sum(
        1
        for e in room.audit()
        if e.get("event") == "applied" and e.get("kind") == kind and e.get("version") == version
    )


def roomctl(env: dict[str, str], *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.fleet", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def enroll(
    env: dict[str, str], config: Path, *, groups: list[str], customer_key: Path, roster: Path, root: Path
) -> None:
    """Enroll a room the way the docs say, before it runs: ``roomagent identity --json`` on its own
    agent.toml (a real process; it creates the identity the daemon then uses), then ``roomctl roster
    add`` (a real process) signs it into the customer's roster. roomctl trusts acks and states only
    through that roster."""
    ident = subprocess.run(
        [sys.executable, "-m", "agent", "identity", "--config", str(config), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert ident.returncode == 0, ident.stderr
    identity = config.with_suffix(".identity.json")
    identity.write_text(ident.stdout)
    device = json.loads(ident.stdout)["device"]
    proc = roomctl(
        env, "roster", "add", device, "--identity", str(identity), "--groups", ",".join(groups),
        "--customer", "acme", "--customer-key", str(customer_key),
        "--roster", str(roster), "--root", str(root),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def wait_until(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
