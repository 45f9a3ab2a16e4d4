"""Firmware update end to end: real ``roomagent run`` (updater wired in), real Mosquitto, real
``dbus-daemon`` with the RAUC/logind test service (tests/rauc_service.py), a real HTTP mirror, and
``roomctl log append|prove|verify`` / ``roomctl update push`` as real processes.

The "reboot" is the test's: when logind's ``Reboot`` was called, the agent process is stopped, the
firmware version file is switched to what the booted slot holds, and the agent starts again on the
same data directory (the data partition).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.control.signing_keys import private_key_pem
from tests.broker import Broker
from tests.firmware import Mirror, PrivateBus
from tests.plane import Plane

pytestmark = [pytest.mark.broker, pytest.mark.slow]

V2 = b"roomagent firmware v2 " * 30_000
V3 = b"roomagent firmware v3 " * 30_000


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[PrivateBus]:
    b = PrivateBus(tmp_path / "dbus")
    yield b
    b.close()


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    (tmp_path / "www").mkdir()
    m = Mirror(tmp_path / "www")
    yield m
    m.close()


@contextlib.asynccontextmanager
async def agent_process(config: Path, env: dict[str, str]) -> AsyncIterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, waited for in a thread below
        [sys.executable, "-m", "agent", "run", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def roomctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.fleet", *args], env=env, capture_output=True, text=True, timeout=60
    )


def enroll(env: dict[str, str], config: Path, root: Path, customer_key: Path) -> list[str]:
    """Enrol the room as docs/roomctl.md says (``roomagent identity --json``, ``roomctl roster add``,
    real processes) and return roomctl's ``--roster``/``--root`` arguments."""
    identity = subprocess.run(
        [sys.executable, "-m", "agent", "identity", "--config", str(config), "--json"],
        env=env,
        check=True,
        capture_output=True,
    )
    identity_file = config.parent / "identity.json"
    identity_file.write_bytes(identity.stdout)
    trust = ["--roster", str(config.parent / "roster.env.json"), "--root", str(root)]
    added = roomctl(
        env,
        "roster",
        "add",
        "room-101",
        "--identity",
        str(identity_file),
        "--customer",
        "acme",
        "--customer-key",
        str(customer_key),
        *trust,
    )
    assert added.returncode == 0, added.stderr
    return trust


async def wait_until(predicate: Any, timeout: float = 60) -> None:  # noqa: ASYNC109
    for _ in range(int(timeout * 10)):
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"not within {timeout} s")


async def test_roomctl_update_push_installs_reboots_and_acks_applied(
    mosquitto: Broker, tmp_path: Path, agent_env: dict[str, str], bus: PrivateBus, mirror: Mirror
) -> None:
    plane = Plane(transparency=ed25519.Ed25519PrivateKey.generate())
    root = tmp_path / "root.json"
    root.write_bytes(plane.root())
    keys = {}
    for name in ("fleet", "customer", "transparency"):
        keys[name] = tmp_path / f"{name}.pem"
        keys[name].write_bytes(private_key_pem(getattr(plane, name), None))
    bundle = tmp_path / "www" / "room-v2.raucb"
    bundle.write_bytes(V2)
    log = tmp_path / "log"
    appended = roomctl(
        agent_env,
        "log",
        "append",
        str(bundle),
        "--log",
        str(log),
        "--key",
        str(keys["transparency"]),
        "--version",
        "2",
        "--origin",
        "roomagent.test/fw",
    )
    assert appended.returncode == 0, appended.stderr
    first_checkpoint = tmp_path / "checkpoint-1"
    first_checkpoint.write_text(json.loads(appended.stdout)["checkpoint"])
    state_dir = tmp_path / "state"
    version_file = tmp_path / "firmware-version"
    version_file.write_text("1\n")
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[device]\nid = "room-101"\ngroups = ["hq"]\n[mqtt]\nurl = "{mosquitto.url}"\n'
        f'[trust]\nroot = "{root}"\n[state]\ndir = "{state_dir}"\n[log]\nformat = "json"\n'
        f'[update]\nenabled = true\ndbus = "{bus.address}"\nfirmware_version_file = "{version_file}"\n'
        "poll_s = 0.2\nhealth_timeout_s = 30\n"
    )
    trust = enroll(agent_env, config, root, keys["customer"])
    broker = ["--broker", mosquitto.url, *trust]
    push = [
        "update",
        "push",
        str(bundle),
        "--log",
        str(log),
        "--url",
        f"{mirror.url}/room-v2.raucb",
        "--group",
        "hq",
        *broker,
        "--settle",
        "1",
        "--json",
    ]
    async with agent_process(config, agent_env):
        await wait_until(lambda: (state_dir / "audit" / "audit.head").exists(), 30)
        await asyncio.sleep(2)  # retained state with the groups reaches the broker
        # Fleet alone under the default policy (customer_approval): refused, nothing installed.
        refused = await asyncio.to_thread(
            roomctl, agent_env, *push, "--sign", str(keys["fleet"]), "--wait", "30"
        )
        assert refused.returncode == 1, refused.stderr
        room = json.loads(refused.stdout)["rooms"]["room-101"]
        assert (room["status"], room["reason"]) == ("rejected", "needs_customer")
        assert bus.system()["installs"] == 0
        identity = (state_dir / "identity" / "ed25519.pem").read_bytes()
        # Fleet + customer: installs, then asks logind to reboot.
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent.fleet",
            *push,
            "--sign",
            str(keys["fleet"]),
            "--sign",
            str(keys["customer"]),
            "--wait",
            "120",
            env=agent_env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        await wait_until(lambda: bus.system()["reboots"] == 1, 90)
    # The reboot: slot B holds v2 and boots; the data partition (state_dir) stays.
    assert bus.system()["booted"] == "B"
    assert bus.slot("B") == V2
    version_file.write_text("2\n")
    v3 = tmp_path / "www" / "room-v3.raucb"
    v3.write_bytes(V3)
    logged = roomctl(
        agent_env,
        "log",
        "append",
        str(v3),
        "--log",
        str(log),
        "--key",
        str(keys["transparency"]),
        "--version",
        "3",
    )
    assert logged.returncode == 0, logged.stderr
    async with agent_process(config, agent_env):
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        # Refused without a reboot (fleet + customer signed each): the same version again, bytes
        # the mirror corrupted, and a bundle that is not in the log.
        both = ["--sign", str(keys["fleet"]), "--sign", str(keys["customer"]), *broker, "--settle", "1"]
        same = await asyncio.to_thread(
            roomctl,
            agent_env,
            "update",
            "push",
            str(bundle),
            "--log",
            str(log),
            "--url",
            f"{mirror.url}/room-v2.raucb",
            "--device",
            "room-101",
            *both,
            "--wait",
            "60",
            "--json",
        )
        mirror.corrupt = True
        corrupt = await asyncio.to_thread(
            roomctl,
            agent_env,
            "update",
            "push",
            str(v3),
            "--log",
            str(log),
            "--url",
            f"{mirror.url}/room-v3.raucb",
            "--device",
            "room-101",
            *both,
            "--wait",
            "60",
            "--json",
        )
        mirror.corrupt = False
        evil = tmp_path / "www" / "evil.raucb"
        evil.write_bytes(b"not the firmware anyone logged")
        evil_env = _unlogged_envelope(plane, evil, log, f"{mirror.url}/evil.raucb")
        unlogged = await asyncio.to_thread(
            roomctl,
            agent_env,
            "update",
            "push",
            str(evil),
            "--envelope",
            str(evil_env),
            "--url",
            f"{mirror.url}/evil.raucb",
            "--device",
            "room-101",
            *broker,
            "--settle",
            "1",
            "--wait",
            "60",
            "--json",
        )
    assert proc.returncode == 0, err.decode()[-2000:]
    for result, reason in ((same, "rollback"), (corrupt, "hash_mismatch"), (unlogged, "not_in_log")):
        assert result.returncode == 1, result.stderr[-2000:]
        got = json.loads(result.stdout)["rooms"]["room-101"]
        assert (got["status"], got["reason"]) == ("rejected", reason), got
    assert (bus.system()["installs"], bus.system()["reboots"]) == (1, 1)
    room = json.loads(out)["rooms"]["room-101"]
    assert room["status"] == "applied", room
    assert room["signature_ok"] is True
    assert room["firmware_version"] == 2
    assert ["good", "B"] in bus.system()["marks"]
    # State kept across the update: identity, audit chain (verified by roomctl), applied documents.
    assert (state_dir / "identity" / "ed25519.pem").read_bytes() == identity
    entries = [json.loads(x) for x in (state_dir / "audit" / "audit.jsonl").read_text().splitlines()]
    assert [(e["outcome"], e.get("reason")) for e in entries if e.get("kind") == "update"] == [
        ("rejected", "needs_customer"),
        ("accepted", None),
        ("applied", None),
        ("rejected", "rollback"),
        ("accepted", None),
        ("rejected", "hash_mismatch"),
        ("rejected", "not_in_log"),
    ]
    audit = roomctl(
        agent_env, "audit", "verify", str(state_dir / "audit" / "audit.jsonl"), "--device", "room-101", *trust
    )
    assert audit.returncode == 0, audit.stderr
    # Anyone holding the first checkpoint can check the log only grew and lists every firmware.
    again = roomctl(
        agent_env,
        "log",
        "append",
        str(tmp_path / "root.json"),
        "--log",
        str(log),
        "--key",
        str(keys["transparency"]),
        "--version",
        "4",
    )
    assert again.returncode == 0, again.stderr
    verified = roomctl(
        agent_env,
        "log",
        "verify",
        "--log",
        str(log),
        "--root",
        str(root),
        "--checkpoint",
        str(first_checkpoint),
    )
    assert verified.returncode == 0, verified.stderr
    report = json.loads(verified.stdout)
    assert (report["size"], report["consistent_from"]) == (3, 1)
    assert [e["version"] for e in report["entries"]] == [2, 3, 4]


def _unlogged_envelope(plane: Plane, evil: Path, log: Path, url: str) -> Path:
    """A fleet+customer-signed update for bytes the log never saw, borrowing a real entry's proof."""
    import hashlib

    from agent.control.documents import payload_type
    from agent.control.dsse import Envelope
    from agent.fleet.update import update_payload

    payload = update_payload(
        log.parent / "www" / "room-v3.raucb", log, [url], devices=["room-101"], groups=[]
    )
    data = evil.read_bytes()
    payload["version"] += 10
    payload["body"].update(firmware_version=5, length=len(data), sha256=hashlib.sha256(data).hexdigest())
    env = Envelope(payload_type("update"), json.dumps(payload).encode(), ())
    env = env.signed_by(plane.fleet).signed_by(plane.customer)
    out = evil.with_suffix(".env")
    out.write_bytes(env.to_json())
    return out


async def test_a_firmware_that_fails_its_health_check_falls_back_and_acks_rolled_back(
    mosquitto: Broker, tmp_path: Path, agent_env: dict[str, str], bus: PrivateBus, mirror: Mirror
) -> None:
    plane = Plane(transparency=ed25519.Ed25519PrivateKey.generate())
    root = tmp_path / "root.json"
    root.write_bytes(plane.root())
    keys = {}
    for name in ("fleet", "customer", "transparency"):
        keys[name] = tmp_path / f"{name}.pem"
        keys[name].write_bytes(private_key_pem(getattr(plane, name), None))
    bundle = tmp_path / "www" / "room-v3.raucb"
    bundle.write_bytes(V3)
    log = tmp_path / "log"
    logged = roomctl(
        agent_env,
        "log",
        "append",
        str(bundle),
        "--log",
        str(log),
        "--key",
        str(keys["transparency"]),
        "--version",
        "3",
    )
    assert logged.returncode == 0, logged.stderr
    state_dir = tmp_path / "state"
    version_file = tmp_path / "firmware-version"
    version_file.write_text("2\n")
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[device]\nid = "room-101"\ngroups = ["hq"]\n[mqtt]\nurl = "{mosquitto.url}"\n'
        f'[trust]\nroot = "{root}"\n[state]\ndir = "{state_dir}"\n[log]\nformat = "json"\n'
        f'[update]\nenabled = true\ndbus = "{bus.address}"\nfirmware_version_file = "{version_file}"\n'
        "poll_s = 0.2\nhealth_timeout_s = 5\n"
    )
    trust = enroll(agent_env, config, root, keys["customer"])
    async with agent_process(config, agent_env):
        await wait_until(lambda: (state_dir / "audit" / "audit.head").exists(), 30)
        await asyncio.sleep(2)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent.fleet",
            "update",
            "push",
            str(bundle),
            "--log",
            str(log),
            "--url",
            f"{mirror.url}/room-v3.raucb",
            "--device",
            "room-101",
            "--broker",
            mosquitto.url,
            *trust,
            "--sign",
            str(keys["fleet"]),
            "--sign",
            str(keys["customer"]),
            "--wait",
            "150",
            "--json",
            env=agent_env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        await wait_until(lambda: bus.system()["reboots"] == 1, 90)
    # v3 boots from slot B, but its room cannot reach the broker: the health check fails.
    assert bus.system()["booted"] == "B"
    version_file.write_text("3\n")
    mosquitto.stop()
    async with agent_process(config, agent_env):
        await wait_until(lambda: bus.system()["reboots"] == 2, 90)
    assert ["bad", "B"] in bus.system()["marks"]
    assert ["good", "B"] not in bus.system()["marks"]
    # The boot loader went back to slot A (v2); with the broker back, the room reports.
    assert bus.system()["booted"] == "A"
    version_file.write_text("2\n")
    mosquitto.start()
    async with agent_process(config, agent_env):
        out, err = await asyncio.wait_for(proc.communicate(), 150)
    assert proc.returncode == 1, err.decode()[-2000:]
    room = json.loads(out)["rooms"]["room-101"]
    assert (room["status"], room["reason"]) == ("rolled_back", "health_check_failed"), room
    assert "control link down" in room["message"]
    assert room["firmware_version"] == 2
