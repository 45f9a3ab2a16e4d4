"""roomctl end to end: keygen, root init/rotate, template, sign + countersign, push, status, audit verify."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
from securesystemslib.dsse import Envelope as SslEnvelope
from securesystemslib.signer import SSlibKey

from agent.control.verify import VerifyContext, verify_document, verify_initial_root
from agent.fleet.cli import main as roomctl
from tests.broker import Broker
from tests.fleet_trust import wait_online
from tests.test_privacy_agent_process import agent_process

pytestmark = pytest.mark.broker


def keygen(tmp: Path, name: str, env: dict[str, str], *extra: str) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-m", "agent.fleet", "keygen", "--out", str(tmp / name), *extra],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


@pytest.fixture
def keys(tmp_path: Path, agent_env: dict[str, str]) -> dict[str, Path]:
    env = {**agent_env, "CUSTOMER_PASS": "correct horse battery staple"}
    for name, extra in [
        ("root1", ()),
        ("root2", ("--type", "ecdsa")),
        ("fleet", ()),
        ("legal", ()),
        ("customer", ("--passphrase-env", "CUSTOMER_PASS")),
    ]:
        keygen(tmp_path, name, env, *extra)
    assert (tmp_path / "root1").stat().st_mode & 0o777 == 0o600
    assert b"ENCRYPTED" in (tmp_path / "customer").read_bytes()
    return {n: tmp_path / n for n in ("root1", "root2", "fleet", "legal", "customer")}


def test_root_init_template_sign_countersign(
    keys: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CUSTOMER_PASS", "correct horse battery staple")
    root = tmp_path / "root.json"
    common = [
        "--fleet-key",
        f"{keys['fleet']}.pub.json",
        "--customer-key",
        f"{keys['customer']}.pub.json",
        "--legal-key",
        f"{keys['legal']}.pub.json",
    ]
    assert (
        roomctl(
            [
                "root",
                "init",
                "--root-key",
                f"{keys['root1']}.pub.json",
                "--root-key",
                f"{keys['root2']}.pub.json",
                "--root-threshold",
                "2",
                *common,
                "--sign",
                str(keys["root1"]),
                "--out",
                str(root),
            ]
        )
        == 2
    )  # one signature is below the root threshold of 2
    assert (
        roomctl(
            [
                "root",
                "init",
                "--root-key",
                f"{keys['root1']}.pub.json",
                "--root-key",
                f"{keys['root2']}.pub.json",
                "--root-threshold",
                "2",
                *common,
                "--sign",
                str(keys["root1"]),
                "--sign",
                str(keys["root2"]),
                "--out",
                str(root),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert roomctl(["template", "policy"]) == 0
    policy = json.loads(capsys.readouterr().out)
    assert set(policy) == {"kind", "version", "issued_at", "expires", "targets", "body"}
    policy["body"]["e2ee"]["required"] = False  # a weakening: needs fleet AND customer
    (tmp_path / "policy.json").write_text(json.dumps(policy))
    assert (
        roomctl(
            [
                "sign",
                "policy",
                str(tmp_path / "policy.json"),
                "--key",
                str(keys["fleet"]),
                "--out",
                str(tmp_path / "p1.json"),
            ]
        )
        == 0
    )
    # The customer countersigns on another machine with an encrypted key.
    assert (
        roomctl(
            [
                "sign",
                "policy",
                str(tmp_path / "p1.json"),
                "--key",
                str(keys["customer"]),
                "--passphrase-env",
                "CUSTOMER_PASS",
                "--out",
                str(tmp_path / "p2.json"),
            ]
        )
        == 0
    )
    env = json.loads((tmp_path / "p2.json").read_text())
    assert len(env["signatures"]) == 2
    # Interop: securesystemslib verifies roomctl's envelope with both keys.
    ssl_env = SslEnvelope.from_dict(env)
    pubs = [json.loads(Path(f"{keys[n]}.pub.json").read_text()) for n in ("fleet", "customer")]
    ssl_keys = [SSlibKey.from_dict(p.pop("keyid"), p) for p in pubs]
    assert len(ssl_env.verify(ssl_keys, 2)) == 2
    # Rotation: drop root2, add nothing else; signed by old root keys (root1+root2) and new (root1).
    assert (
        roomctl(
            [
                "root",
                "rotate",
                "--current",
                str(root),
                "--root-key",
                f"{keys['root1']}.pub.json",
                "--root-threshold",
                "1",
                "--sign",
                str(keys["root1"]),
                "--sign",
                str(keys["root2"]),
                "--out",
                str(tmp_path / "root2.json"),
            ]
        )
        == 0
    )
    assert roomctl(["sign", "config", str(tmp_path / "policy.json"), "--key", str(keys["fleet"])]) == 2
    # The device accepts the rotation (threshold of old AND new root keys, version N+1).
    trusted = verify_initial_root(root.read_bytes())
    ctx = VerifyContext("room-101", (), dt.datetime.now(dt.UTC), {"root": 1})
    rotated = verify_document((tmp_path / "root2.json").read_bytes(), "root", trusted, ctx)
    assert rotated.version == 2
    # TOML in, with native TOML datetimes: the payload carries RFC 3339 "Z" strings the device accepts.
    soon = dt.datetime.now(dt.UTC).replace(microsecond=0)
    (tmp_path / "config.toml").write_text(
        f'kind = "config"\nversion = 1\nissued_at = {soon.isoformat().replace("+00:00", "Z")}\n'
        f"expires = {(soon + dt.timedelta(days=1)).isoformat().replace('+00:00', 'Z')}\n"
        '[targets]\ndevices = ["room-101"]\ngroups = []\n[body.encoder]\nbitrate_kbps = 1800\n'
    )
    assert (
        roomctl(
            [
                "sign",
                "config",
                str(tmp_path / "config.toml"),
                "--key",
                str(keys["fleet"]),
                "--out",
                str(tmp_path / "config.env"),
            ]
        )
        == 0
    )
    doc = verify_document((tmp_path / "config.env").read_bytes(), "config", trusted, ctx)
    assert doc.body.model_dump()["encoder"]["bitrate_kbps"] == 1800


async def test_push_status_and_audit_verify(
    keys: dict[str, Path], tmp_path: Path, mosquitto: Broker, agent_env: dict[str, str]
) -> None:
    root = tmp_path / "root.json"
    assert (
        roomctl(
            [
                "root",
                "init",
                "--root-key",
                f"{keys['root1']}.pub.json",
                "--fleet-key",
                f"{keys['fleet']}.pub.json",
                "--customer-key",
                f"{keys['root2']}.pub.json",
                "--legal-key",
                f"{keys['legal']}.pub.json",
                "--sign",
                str(keys["root1"]),
                "--out",
                str(root),
            ]
        )
        == 0
    )
    config = tmp_path / "room-101.toml"
    config.write_text(
        f'[device]\nid = "room-101"\ngroups = ["hq"]\n[mqtt]\nurl = "{mosquitto.url}"\n'
        f'[trust]\nroot = "{root}"\n[state]\ndir = "{tmp_path / "state"}"\n[log]\nformat = "json"\n'
    )
    # Enrollment: the room prints its identity, the customer (here the root2 key) signs it into the roster.
    identity = subprocess.run(  # noqa: ASYNC221 - the room is not running yet
        [sys.executable, "-m", "agent", "identity", "--config", str(config), "--json"],
        env=agent_env,
        check=True,
        capture_output=True,
    )
    (tmp_path / "identity.json").write_bytes(identity.stdout)
    roster = tmp_path / "roster.env.json"
    trust = ["--roster", str(roster), "--root", str(root)]
    assert (
        roomctl(
            [
                "roster",
                "add",
                "room-101",
                "--identity",
                str(tmp_path / "identity.json"),
                "--groups",
                "hq",
                "--customer",
                "acme",
                "--customer-key",
                str(keys["root2"]),
                *trust,
            ]
        )
        == 0
    )
    async with agent_process(config, agent_env):
        await wait_online(mosquitto, ["room-101"])
        from agent.fleet.docs import template

        payload = template("config")
        payload["targets"] = {"devices": [], "groups": ["hq"]}
        # This room runs no media pipeline (no local [media] sink): a config naming cameras, encoder or
        # media cannot take effect and is rolled back, so push only what it can apply.
        payload["body"] = {"log": payload["body"]["log"]}
        (tmp_path / "config.json").write_text(json.dumps(payload))
        assert (
            roomctl(
                [
                    "sign",
                    "config",
                    str(tmp_path / "config.json"),
                    "--key",
                    str(keys["fleet"]),
                    "--out",
                    str(tmp_path / "config.env"),
                ]
            )
            == 0
        )
        push = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent.fleet",
            "push",
            str(tmp_path / "config.env"),
            "--broker",
            mosquitto.url,
            "--group",
            "hq",
            "--wait",
            "10",
            "--json",
            *trust,
            env=agent_env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await push.communicate()
        assert push.returncode == 0, err.decode()
        acks = json.loads(out.decode().strip().splitlines()[-1])["rooms"]
        assert acks["room-101"]["status"] == "applied"
        assert acks["room-101"]["verified"] is True
        # Pushing it again is a replay: the device acks it again as applied (idempotent), exit 0.
        # A rejected one makes push fail.
        payload["version"] = 1
        payload["body"]["backdoor"] = 1
        (tmp_path / "bad.json").write_text(json.dumps(payload))
        bad_env = tmp_path / "bad.env"
        from agent.control.dsse import Envelope
        from agent.control.signing_keys import load_private_key

        env = Envelope("application/vnd.roomagent.config+json", json.dumps(payload).encode(), ())
        bad_env.write_bytes(env.signed_by(load_private_key(keys["fleet"])).to_json())
        push = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent.fleet",
            "push",
            str(bad_env),
            "--broker",
            mosquitto.url,
            "--device",
            "room-101",
            "--wait",
            "10",
            *trust,
            env=agent_env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, _ = await push.communicate()
        assert push.returncode == 1
        assert b"rejected" in out

        status = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent.fleet",
            "status",
            "--broker",
            mosquitto.url,
            "--json",
            *trust,
            env=agent_env,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await status.communicate()
        states = json.loads(out)
        assert states["room-101"]["trust"] == "verified"
        assert states["room-101"]["state"]["online"] is True
        assert states["room-101"]["state"]["applied"]["config"] == 1

    audit = tmp_path / "state" / "audit" / "audit.jsonl"
    assert roomctl(["audit", "verify", str(audit), "--device", "room-101", *trust]) == 0
    # The enrollment identity works as the key too (offline, without the roster).
    assert roomctl(["audit", "verify", str(audit), "--device-key", str(tmp_path / "identity.json")]) == 0
    original = audit.read_bytes()
    for index in (0, 2):  # an entry in the middle of the chain, and the last one (pinned by the head)
        lines = original.splitlines()
        tampered = json.loads(lines[index])
        tampered["outcome"] = "hidden"
        lines[index] = json.dumps(tampered, sort_keys=True, separators=(",", ":")).encode()
        audit.write_bytes(b"\n".join(lines) + b"\n")
        proc = subprocess.run(  # noqa: ASYNC221 - the device is stopped; nothing else runs on the loop
            [
                sys.executable,
                "-m",
                "agent.fleet",
                "audit",
                "verify",
                str(audit),
                "--device",
                "room-101",
                *trust,
            ],
            env=agent_env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 1
        assert json.loads(proc.stdout)["first_bad_seq"] == index + 1
