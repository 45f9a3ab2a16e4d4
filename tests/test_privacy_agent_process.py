"""The real ``roomagent run`` process, with its privacy guard, against a real Mosquitto.

A court outside the room's jurisdiction cannot lock it; the room's own court can: the room locks,
reports it, audits it; then someone edits the audit log on the device and ``roomctl audit verify``
names the first entry that was changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from tests.broker import Broker
from tests.plane import Plane, PlaneClient

pytestmark = pytest.mark.broker


@contextlib.asynccontextmanager
async def agent_process(config: Path, env: dict[str, str]) -> AsyncIterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, waited for in a thread below
        [sys.executable, "-m", "agent", "run", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


async def test_court_lock_jurisdiction_rule_lock_state_and_tampered_audit_found(
    mosquitto: Broker, tmp_path: Path, agent_env: dict[str, str]
) -> None:
    plane = Plane()
    root = tmp_path / "root.json"
    root.write_bytes(plane.root())
    state_dir = tmp_path / "state"
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[device]\nid = "room-101"\ngroups = ["hq"]\n[mqtt]\nurl = "{mosquitto.url}"\n'
        f'[trust]\nroot = "{root}"\n[state]\ndir = "{state_dir}"\n[log]\nformat = "json"\n'
    )
    async with aiomqtt.Client(
        mosquitto.host, mosquitto.port, identifier="plane", protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        pc = PlaneClient(client, "room-101")
        listener = asyncio.create_task(pc.listen(), name="plane.listen")
        try:
            async with agent_process(config, agent_env):
                state = await pc.wait_for(lambda s: s.get("device") == "room-101" and s.get("online"), 20)
                assert set(state["identity"]["hpke"]) == {"x25519", "mlkem768-x25519"}
                assert state["locked"] is False
                # The customer sets the room's jurisdiction (a weakening-class change: fleet + customer).
                ack = await pc.push(
                    "policy", plane.sign("policy", plane.policy(), [plane.fleet, plane.customer]), wait_s=15
                )
                assert ack["status"] == "applied", ack
                foreign = {
                    "name": "lock",
                    "args": {"lawful_order": {"issuer": "SDNY", "id": "26-1", "jurisdiction": "US"}},
                }
                ack = await pc.push("command", plane.sign("command", foreign, [plane.legal]), wait_s=15)
                assert (ack["status"], ack["reason"]) == ("rejected", "lawful_order_mismatch")
                own = {
                    "name": "lock",
                    "args": {
                        "lawful_order": {"issuer": "AG Berlin", "id": "7 Js 1/26", "jurisdiction": "DE"}
                    },
                }
                ack = await pc.push("command", plane.sign("command", own, [plane.legal]), wait_s=15)
                assert ack["status"] == "applied", ack
                locked = await pc.wait_for(lambda s: s.get("locked") is True, 15)
                assert locked["privacy"]["state"] == "locked"
                # Telemetry minimal: no media figures or inventory in what reached the broker.
                assert all("inventory" not in s and "agent" not in s for s in pc.states)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    audit = state_dir / "audit" / "audit.jsonl"
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    assert any(e["event"] == "intervention" and "7 Js 1/26" in e["message"] for e in entries)
    # The room's key as enrolled (roomagent identity --json on the room), not from the broker.
    enrolled = subprocess.run(  # noqa: ASYNC221 - the room has stopped; nothing else runs
        [sys.executable, "-m", "agent", "identity", "--config", str(config), "--json"],
        env=agent_env,
        check=True,
        capture_output=True,
    )
    device_key = tmp_path / "identity.json"
    device_key.write_bytes(enrolled.stdout)
    assert json.loads(enrolled.stdout)["ed25519"] == locked["identity"]["ed25519"]

    def verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "agent.fleet",
                "audit",
                "verify",
                str(audit),
                "--device-key",
                str(device_key),
            ],
            env=agent_env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    ok = verify()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # Someone on the device hides the lawful order: edits that entry's message.
    victim = next(i for i, e in enumerate(entries) if e["event"] == "intervention")
    lines = audit.read_text().splitlines()
    lines[victim] = lines[victim].replace("7 Js 1/26", "nothing")
    audit.write_text("\n".join(lines) + "\n")
    bad = verify()
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert report["ok"] is False
    assert report["first_bad_seq"] == entries[victim]["seq"]
