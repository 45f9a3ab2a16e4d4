"""``roomagent run`` with a sim camera and live media, then ``roomctl snapshot`` end to end.

The daemon's wiring (privacy guard → media inventory and pipelines) serves the snapshot from the
running pipeline's camera; the customer's roomctl writes the PNG.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import aiomqtt
import pytest

from agent.control.signing_keys import private_key_pem
from agent.privacy.hpke import HpkeIdentity
from hal.images import decode_png
from hal.stamps import read_stamp
from tests.broker import Broker
from tests.plane import PREFIX, Plane, PlaneClient
from tests.test_privacy_agent_process import agent_process

pytestmark = pytest.mark.broker


async def test_roomagent_run_serves_a_customer_snapshot_from_its_running_camera(
    mosquitto: Broker, tmp_path: Path, agent_env: dict[str, str]
) -> None:
    plane = Plane()
    root = tmp_path / "root.json"
    root.write_bytes(plane.root())
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[device]\nid = "room-101"\n[mqtt]\nurl = "{mosquitto.url}"\n'
        f'[trust]\nroot = "{root}"\n[state]\ndir = "{tmp_path / "state"}"\n[log]\nformat = "json"\n'
        '[media]\nsink = "rtp://127.0.0.1:9"\n'
        '[hal.encoder]\ncodecs = ["libx264"]\nbitrate_kbps = 300\n'
        '[[hal.cameras]]\nid = "cam0"\nwidth = 320\nheight = 240\nfps = 15\n'
    )
    customer = tmp_path / "customer.pem"
    customer.write_bytes(private_key_pem(plane.customer))
    hpke_key = tmp_path / "me.json"
    HpkeIdentity.generate().save(hpke_key)
    # Enrollment: the room's identity (roomagent identity --json) signed into the customer's roster.
    identity = subprocess.run(  # noqa: ASYNC221 - before the room starts; nothing else runs
        [sys.executable, "-m", "agent", "identity", "--config", str(config), "--json"],
        env=agent_env,
        check=True,
        capture_output=True,
    )
    (tmp_path / "identity.json").write_bytes(identity.stdout)
    trust = ["--roster", str(tmp_path / "roster.env.json"), "--root", str(root)]
    enrolled = subprocess.run(  # noqa: ASYNC221 - before the room starts; nothing else runs
        [
            sys.executable,
            "-m",
            "agent.fleet",
            "roster",
            "add",
            "room-101",
            "--identity",
            str(tmp_path / "identity.json"),
            "--customer",
            "acme",
            "--customer-key",
            str(customer),
            *trust,
        ],
        env=agent_env,
        capture_output=True,
        text=True,
    )
    assert enrolled.returncode == 0, enrolled.stderr
    async with (
        aiomqtt.Client(mosquitto.host, mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5) as client,
        agent_process(config, agent_env),
    ):
        pc = PlaneClient(client, "room-101")
        listener = asyncio.create_task(pc.listen(), name="plane")
        try:
            await pc.wait_for(lambda s: s.get("device") == "room-101" and s.get("online") is True, 15.0)
            policy = plane.policy(
                camera={"shutter_when_idle": False, "remote_snapshot": True, "remote_ptz": True}
            )
            ack = await pc.push(
                "policy", plane.sign("policy", policy, [plane.fleet, plane.customer]), wait_s=10
            )
            assert ack["status"] == "applied", ack
            out = tmp_path / "room.png"
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "agent.fleet",
                "snapshot",
                "--device",
                "room-101",
                "--broker",
                mosquitto.url,
                "--prefix",
                PREFIX,
                "--customer-key",
                str(customer),
                "--recipient-key",
                str(hpke_key),
                "--out",
                str(out),
                *trust,
                env=agent_env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            assert read_stamp(decode_png(out.read_bytes())) is not None
        finally:
            listener.cancel()
    audit = [
        json.loads(line) for line in (tmp_path / "state" / "audit" / "audit.jsonl").read_text().splitlines()
    ]
    assert any(e["event"] == "snapshot" for e in audit)
