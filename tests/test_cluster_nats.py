"""Rooms on a real three-node NATS cluster: real ``roomagent run`` processes, real ``roomctl push``.

Rooms are spread over the nodes (each lists all three endpoints, its own first); the plane publishes
on one node. Then the node a third of the rooms use is killed in the middle of a roll-out: every
room must fail over, converge to the pushed version, apply it exactly once and ack it, and
``roomctl push --wait`` must see every ack. Then the node comes back and the next push reaches all.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.control.signing_keys import private_key_pem
from tests.nats_cluster import BrokerTarget, NatsCluster
from tests.plane import Plane
from tests.room_processes import RoomProcess, applied_count, enroll, roomctl, wait_until, write_room_config

pytestmark = pytest.mark.broker

GROUP = "hq"


def _policy(plane: Plane, tmp_path: Path, version: int) -> Path:
    body = plane.policy(camera__remote_ptz=version % 2 == 0)
    raw = plane.sign(
        "policy", body, [plane.fleet, plane.customer], version=version, devices=[], groups=[GROUP]
    )
    path = tmp_path / f"policy-v{version}.env"
    path.write_bytes(raw)
    return path


def _rooms(
    tmp_path: Path, target: BrokerTarget, env: dict[str, str], plane: Plane, root: Path, n: int
) -> tuple[list[RoomProcess], list[str]]:
    """``n`` rooms, each enrolled in the customer-signed roster before it starts; returns the rooms
    and roomctl's ``--roster``/``--root`` arguments."""
    key = tmp_path / "customer.pem"
    key.write_bytes(private_key_pem(plane.customer))
    roster = tmp_path / "roster.env.json"
    rooms = []
    for i in range(n):
        device = f"room-{i:02d}"
        config = write_room_config(
            tmp_path / "rooms",
            device,
            groups=[GROUP],
            urls=target.rotated(i),
            protocol=target.protocol,
            root=root,
        )
        enroll(env, config, groups=[GROUP], customer_key=key, roster=roster, root=root)
        rooms.append(RoomProcess(device, config, tmp_path / "rooms" / device, env).start())
    return rooms, ["--roster", str(roster), "--root", str(root)]


def _online(env: dict[str, str], trust: list[str], brokers: list[str], devices: set[str]) -> bool:
    """Every room's retained state verifies against the roster and says online."""
    proc = roomctl(
        env, "status", "--broker", ",".join(brokers), "--mqtt-protocol", "3.1.1", "--settle", "2", "--json",
        *trust,
    )  # fmt: skip
    if proc.returncode != 0:
        return False
    report = json.loads(proc.stdout)
    return all(
        report.get(d, {}).get("trust") == "verified" and (report[d].get("state") or {}).get("online") is True
        for d in devices
    )


def _push(trust: list[str], brokers: list[str], envelope: Path, wait_s: float) -> list[str]:
    return [
        sys.executable, "-m", "agent.fleet", "push", str(envelope),
        "--broker", ",".join(brokers), "--mqtt-protocol", "3.1.1",
        "--group", GROUP, "--wait", str(wait_s), *trust, "--json",
    ]  # fmt: skip


def _acks(stdout: str) -> dict[str, Any]:
    out = json.loads(stdout.strip().splitlines()[-1])
    rooms: dict[str, Any] = out["rooms"]
    return rooms


def test_group_push_on_one_node_reaches_rooms_on_all_three_and_survives_a_node_kill(
    nats_cluster: NatsCluster, tmp_path: Path, agent_env: dict[str, str]
) -> None:
    plane = Plane()
    root = tmp_path / "root.json"
    root.write_bytes(plane.root())
    target = BrokerTarget("nats", tuple(nats_cluster.urls), "3.1.1", nats_cluster)
    rooms, trust = _rooms(tmp_path, target, agent_env, plane, root, 6)  # two rooms start on each node
    devices = {r.device for r in rooms}
    try:
        wait_until(lambda: _online(agent_env, trust, [nats_cluster.urls[1]], devices), 90, "all rooms online")

        # 1. A group push published on node 1 only reaches the rooms of all three nodes.
        proc = roomctl(agent_env, *_push(trust, [nats_cluster.urls[1]], _policy(plane, tmp_path, 1), 60)[3:])
        assert proc.returncode == 0, proc.stdout + proc.stderr
        acks = _acks(proc.stdout)
        assert set(acks) == devices
        assert all(a["status"] == "applied" and a["verified"] is True for a in acks.values())

        # 2. The rooms of node 0 (00 and 03) are held (SIGSTOP) while the plane pushes version 2 on
        # node 1; the rooms of nodes 1 and 2 apply it; then node 0 dies with version 2 on its way to
        # its rooms, and they resume: they must fail over, re-read the retained document, apply it
        # once and ack it, while the plane is still waiting.
        on_node0 = [rooms[0], rooms[3]]
        others = [r for r in rooms if r not in on_node0]
        for room in on_node0:
            room.freeze()
        push = subprocess.Popen(
            _push(trust, [nats_cluster.urls[1], nats_cluster.urls[2]], _policy(plane, tmp_path, 2), 120),
            env=agent_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until(lambda: all(applied_count(r, "policy", 2) for r in others), 90, "nodes 1-2 rooms")
            assert not any(applied_count(r, "policy", 2) for r in on_node0)  # the roll-out is half done
            nats_cluster.kill_node(0)
        finally:
            for room in on_node0:
                room.thaw()
        out, err = push.communicate(timeout=180)
        assert push.returncode == 0, out + err + "\n".join(r.log_text[-1500:] for r in rooms[:1])
        acks = _acks(out)
        assert set(acks) == devices
        assert all(a["status"] == "applied" and a["verified"] is True for a in acks.values())
        for room in rooms:
            assert room.proc is not None
            assert room.proc.poll() is None, room.log_text[-2000:]
            assert applied_count(room, "policy", 2) == 1, room.device  # none applied twice
            assert applied_count(room, "policy", 1) == 1, room.device
        assert all("control_link_lost" in r.log_text for r in on_node0)

        # 3. The node comes back; the next push reaches every room again.
        nats_cluster.start_node(0)
        nats_cluster.wait_mqtt_ready(0, 60)
        proc = roomctl(agent_env, *_push(trust, [nats_cluster.urls[0]], _policy(plane, tmp_path, 3), 90)[3:])
        assert proc.returncode == 0, proc.stdout + proc.stderr
        acks = _acks(proc.stdout)
        assert set(acks) == devices
        assert all(a["status"] == "applied" for a in acks.values())
    finally:
        for room in rooms:
            room.stop()
