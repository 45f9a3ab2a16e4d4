"""kill -9 during an apply: a real agent process (python -m agent.control) converges after restart."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest

from agent.control.dsse import Envelope
from tests.broker import Broker
from tests.plane import PREFIX, Plane

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def _write_config(tmp_path: Path, plane: Plane, url: str) -> Path:
    root = tmp_path / "root.json"
    root.write_bytes(plane.root())
    conf = tmp_path / "agent.toml"
    conf.write_text(
        f'[device]\nid = "room-101"\ngroups = ["hq"]\n[mqtt]\nurl = "{url}"\n[trust]\nroot = "{root}"\n'
        f'[state]\ndir = "{tmp_path / "state"}"\n[control]\nhealth_timeout_s = 2.0\n'
        '[log]\nlevel = "warning"\n'
    )
    return conf


def _spawn(conf: Path, env: dict[str, str], delay: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent.control", "--config", str(conf), "--apply-delay", str(delay)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def _acks(
    broker: Broker, want: int, wait_s: float, start: Callable[[], object]
) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    async with aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as c:
        await c.subscribe(f"{PREFIX}/devices/room-101/ack", qos=1)
        start()
        async with asyncio.timeout(wait_s):
            async for m in c.messages:
                out.append(json.loads(Envelope.parse(m.payload).payload))
                if any(a.get("doc_version") == want and a.get("status") == "applied" for a in out):
                    return out
    return out


async def test_kill_9_during_apply_converges(
    mosquitto: Broker, tmp_path: Path, agent_env: dict[str, str]
) -> None:
    plane = Plane()
    conf = _write_config(tmp_path, plane, mosquitto.url)
    state = tmp_path / "state" / "control" / "state.json"
    running = tmp_path / "state" / "running" / "config.json"
    proc = _spawn(conf, agent_env, delay=0.0)
    try:
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5) as c:
            topic = f"{PREFIX}/devices/room-101/desired/config"
            await c.publish(
                topic, plane.sign("config", {"encoder": {"bitrate_kbps": 1000}}), qos=1, retain=True
            )
        deadline = time.monotonic() + 10
        while not running.exists() and time.monotonic() < deadline:  # noqa: ASYNC110 - another process
            await asyncio.sleep(0.05)
        assert json.loads(running.read_text())["encoder"]["bitrate_kbps"] == 1000
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)

        # Restart with slow applies, push v2, SIGKILL while it is being applied.
        proc = _spawn(conf, agent_env, delay=3.0)
        await asyncio.sleep(1.0)
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5) as c:
            await c.publish(
                topic, plane.sign("config", {"encoder": {"bitrate_kbps": 2000}}), qos=1, retain=True
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            data = json.loads(state.read_text())
            if "config" in data["pending"]:
                break
            await asyncio.sleep(0.02)
        assert json.loads(state.read_text())["pending"]["config"]["version"] == 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        # The broker publishes the last will: the retained state now says offline.
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5) as c:
            await c.subscribe(f"{PREFIX}/devices/room-101/state", qos=1)
            async with asyncio.timeout(5):
                async for m in c.messages:
                    if json.loads(bytes(m.payload))["online"] is False:  # type: ignore[arg-type]
                        break
        # Old or new, never torn: both files parse, the running system is still v1.
        assert json.loads(running.read_text())["encoder"]["bitrate_kbps"] == 1000
        assert json.loads(state.read_text())["applied"]["config"]["version"] == 1

        # Restart: the retained v2 is redelivered and applied; the system converges to the new state.
        procs: list[subprocess.Popen[bytes]] = []
        acks = await _acks(mosquitto, 2, 15, lambda: procs.append(_spawn(conf, agent_env, delay=0.2)))
        proc = procs[0]
        assert any(a["doc_version"] == 2 and a["status"] == "applied" for a in acks)
        assert json.loads(running.read_text())["encoder"]["bitrate_kbps"] == 2000
        data = json.loads(state.read_text())
        assert data["applied"]["config"]["version"] == 2
        assert data["pending"] == {}
        audit = [
            json.loads(x) for x in (tmp_path / "state" / "audit" / "audit.jsonl").read_bytes().splitlines()
        ]
        assert "apply_interrupted" in [e["event"] for e in audit]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
