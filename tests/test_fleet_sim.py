"""``roomctl fleet-sim``: N real control planes against a real Mosquitto, one signed group push."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agent.fleet.sim import FleetKeys, percentile
from tests.broker import Broker


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_sim_documents_pass_the_device_verifier() -> None:
    """The simulator signs exactly as docs/design.md says: the device's own verifier accepts its documents."""
    import datetime as dt

    from agent.control.verify import VerifyContext, verify_document, verify_initial_root

    keys = FleetKeys.generate()
    now = dt.datetime.now(dt.UTC)
    root = verify_initial_root(keys.root_envelope(now=now))
    doc = verify_document(
        keys.policy_envelope(version=1, group="g1", now=now),
        "policy",
        root,
        VerifyContext(device_id="sim-00000", groups=("g1",), now=now),
    )
    assert doc.roles == frozenset({"fleet"})


@pytest.mark.broker
def test_twenty_rooms_apply_one_group_push(mosquitto: Broker, agent_env: dict[str, str]) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.fleet",
            "fleet-sim",
            "--rooms",
            "20",
            "--broker",
            mosquitto.url,
            "--json",
        ],
        capture_output=True,
        text=True,
        env=agent_env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["rooms"] == 20
    assert out["acked"] == 20
    assert out["rejected"] == {}
    assert 0 < out["p50_ms"] <= out["p99_ms"] <= out["all_acked_s"] * 1000 + 1.0  # s rounded to ms
    assert out["rooms_stuck_at_stop"] == 0
    assert out["applied_once"] == 20


@pytest.mark.broker
def test_fleet_sim_on_a_nats_cluster_with_a_node_killed_mid_rollout(agent_env: dict[str, str]) -> None:
    """``--cluster nats:3 --kill-node``: node 0 dies when the first ack arrives; every room still
    applies the push exactly once and its ack reaches the plane."""
    from tests.nats_cluster import nats_available

    if not nats_available():
        pytest.skip("nats-server is not installed (make test-deps installs it)")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.fleet",
            "fleet-sim",
            "--rooms",
            "12",
            "--cluster",
            "nats:3",
            "--kill-node",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=agent_env,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["protocol"] == "3.1.1"
    assert out["acked"] == out["rooms"] == 12
    assert out["applied_once"] == 12
    assert out["applied_twice_or_more"] == 0
    assert out["node_killed_after_s"] is not None
    assert len(out["broker"].split(",")) == 3


def test_fleet_sim_refuses_kill_node_without_a_cluster(agent_env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agent.fleet", "fleet-sim", "--rooms", "1", "--kill-node"],
        capture_output=True,
        text=True,
        env=agent_env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "--cluster" in proc.stderr
