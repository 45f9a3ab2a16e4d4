"""Attacks on the device's message boundary, against a real Mosquitto and the real ``roomagent run``.

Each story: an attacker (a broker client with no keys, or the vendor's ``fleet`` key alone) sends
something; the room acks it ``rejected`` with a reason code, changes nothing, accounts for it (an
audit entry, or a coalesced counter when nobody is accountable for the message), stays up, and the
next valid document is still applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.control.dsse import Envelope, Signature
from agent.control.signing_keys import key_dict
from tests.broker import Broker
from tests.plane import PREFIX, Plane, PlaneClient, kid
from tests.test_privacy_agent_process import agent_process

pytestmark = pytest.mark.broker

DEVICE = "room-101"


def poison(depth: int = 3000) -> bytes:
    """About 6 KB of nesting: it used to raise RecursionError in the JSON parser and kill the link."""
    return b'{"payload":' + b"[" * depth + b"]" * depth + b',"payloadType":"x","signatures":[]}'


def nested_payload_envelope(kind: str, depth: int = 3000) -> bytes:
    """A well-formed envelope whose (unsigned) payload is the deep nesting."""
    payload = b'{"body":' + b"[" * depth + b"]" * depth + b"}"
    return Envelope(f"application/vnd.roomagent.{kind}+json", payload, ()).to_json()


def write_config(tmp_path: Path, broker: Broker, plane: Plane, **control: Any) -> tuple[Path, Path]:
    root = tmp_path / "root.json"
    root.write_bytes(plane.root())
    state_dir = tmp_path / "state"
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in control.items())
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[device]\nid = "{DEVICE}"\ngroups = ["hq"]\n[mqtt]\nurl = "{broker.url}"\n'
        f'[trust]\nroot = "{root}"\n[state]\ndir = "{state_dir}"\n[log]\nformat = "json"\n'
        f"[control]\nhealth_timeout_s = 2.0\n{extra}"
    )
    return config, state_dir


@contextlib.asynccontextmanager
async def plane_client(
    broker: Broker, acks: list[dict[str, Any]] | None = None
) -> AsyncIterator[PlaneClient]:
    """The plane (or the attacker) on the broker, with a persistent session so that no ack is missed
    across a broker restart; ``acks`` carries the acks seen over several connections."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 600
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        identifier="plane-seams",
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=props,
    ) as client:
        pc = PlaneClient(client, DEVICE)
        if acks is not None:
            pc.acks = acks
        listener = asyncio.create_task(pc.listen(), name="plane.listen")
        try:
            yield pc
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener


def audit_entries(state_dir: Path) -> list[dict[str, Any]]:
    path = state_dir / "audit" / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines()]


async def apply_valid_policy(pc: PlaneClient, plane: Plane) -> dict[str, Any]:
    ack = await pc.push(
        "policy", plane.sign("policy", plane.policy(), [plane.fleet, plane.customer]), wait_s=20
    )
    assert ack["status"] == "applied", ack
    return ack


def unauthenticated(state: dict[str, Any], reason: str, topic: str) -> int:
    return int(state.get("rejections", {}).get(f"{reason} {topic}", {}).get("count", 0))


async def test_retained_poison_is_acked_once_and_never_stops_the_room(
    mosquitto: Broker, tmp_path: Path, agent_env: dict[str, str]
) -> None:
    plane = Plane()
    config, state_dir = write_config(tmp_path, mosquitto, plane)
    acks: list[dict[str, Any]] = []
    async with agent_process(config, agent_env) as proc:
        async with plane_client(mosquitto, acks) as pc:
            await pc.wait_for(lambda s: s.get("device") == DEVICE and s.get("online") is True, 30)
            # The attack: a broker client leaves ~6 KB of nesting retained on the room's policy topic.
            await pc.client.publish(pc.topic("policy"), poison(), qos=1, retain=True)
            ack = await pc.wait_for(lambda a: a.get("kind") == "ack" and a["doc_kind"] == "policy", 20)
            assert (ack["status"], ack["reason"]) == ("rejected", "malformed"), ack
            assert "nested deeper than 32" in ack["message"]

        # The broker restarts: on the room's reconnect the retained poison is delivered again.
        mosquitto.stop()
        mosquitto.start()
        async with plane_client(mosquitto, acks) as pc:
            state = await pc.wait_for(
                lambda s: (
                    s.get("online") is True and unauthenticated(s, "malformed", pc.topic("policy")) >= 1
                ),
                30,
            )
            # The room is up and still takes documents: a valid policy replaces the poison.
            await apply_valid_policy(pc, plane)
            state = await pc.wait_for(
                lambda s: (
                    unauthenticated(s, "malformed", pc.topic("policy")) == 2 and s["applied"].get("policy")
                ),
                20,
            )
            assert proc.poll() is None, "the agent process died"

    # Seen twice (counted twice), acked once; audited in full once (nobody signed it: the rest is
    # coalesced), the valid policy audited as accepted.
    assert unauthenticated(state, "malformed", f"{PREFIX}/devices/{DEVICE}/desired/policy") == 2
    # (The plane's own QoS 1 session may deliver one ack twice across the broker restart: the
    # device signed each ack once, with its own time, so distinct acks are told apart by it.)
    distinct = {(a["time"], a["payload_sha256"]): a for a in acks if a["doc_kind"] == "policy"}
    assert [a["reason"] for a in distinct.values()] == ["malformed", None]
    entries = audit_entries(state_dir)
    assert [e["reason"] for e in entries if e["event"] == "rejected"] == ["malformed"]
    assert any(e["event"] == "accepted" and e["kind"] == "policy" for e in entries)


def _fleet_keyid(plane: Plane) -> str:
    return kid(plane.fleet)


def many_signatures(plane: Plane, n: int = 350) -> bytes:
    """A policy with n signatures that all name the real fleet key id (each one a bad signature)."""
    env = Envelope.parse(plane.sign("policy", plane.policy(), [plane.fleet]))
    bogus = tuple(Signature(_fleet_keyid(plane), bytes([i % 256]) * 64) for i in range(n))
    return Envelope(env.payload_type, env.payload, bogus).to_json()


def root_listing_one_key_twice(plane: Plane) -> bytes:
    """A root rotation (signed by the root keys) whose fleet role is one key under two key ids."""
    body = plane.root_body()
    lower = key_dict(plane.fleet.public_key())
    upper = {**lower, "keyval": {"public": lower["keyval"]["public"].upper()}}
    from agent.control.signing_keys import keyid_of

    body["keys"][keyid_of(upper)] = upper
    body["roles"]["fleet"] = {"keyids": [keyid_of(lower), keyid_of(upper)], "threshold": 2}
    plane.root_version += 1
    payload = plane.payload("root", body, version=plane.root_version)
    plane.root_version -= 1  # refused: the next valid root is still this version
    return plane.envelope("root", payload, list(plane.root_keys)).to_json()


def signed_huge_version(plane: Plane) -> bytes:
    payload = plane.payload("policy", plane.policy(), version=1)
    text = json.dumps(payload).replace('"version": 1,', '"version": 1' + "0" * 3999 + ",")
    return plane.envelope("policy", text.encode(), [plane.fleet, plane.customer]).to_json()


def uppercase_keyid(plane: Plane) -> bytes:
    """A valid policy whose signature names its key id in upper case (DSSE key ids are hints)."""
    env = Envelope.parse(plane.sign("policy", plane.policy(), [plane.fleet, plane.customer]))
    sigs = tuple(Signature(s.keyid.upper(), s.sig) for s in env.signatures)
    return Envelope(env.payload_type, env.payload, sigs).to_json()


async def test_garbage_of_every_shape_is_rejected_and_the_room_keeps_working(
    mosquitto: Broker, tmp_path: Path, agent_env: dict[str, str]
) -> None:
    plane = Plane()
    config, state_dir = write_config(tmp_path, mosquitto, plane)
    invalid_utf8 = b'{"payload":"\xff\xfe","payloadType":"\xc3\x28","signatures":[]}'
    huge_array = b'{"payload":"e30=","payloadType":"x","signatures":[' + b"1," * 20000 + b"1]}"
    attacks: list[tuple[str, str, bytes, str]] = [
        # (story, kind, bytes on the wire, expected reason)
        (
            "deep nesting inside an unsigned payload",
            "command",
            nested_payload_envelope("command"),
            "malformed",
        ),
        ("invalid UTF-8", "command", invalid_utf8, "malformed"),
        ("a 40 KB array", "command", huge_array, "malformed"),
        ("350 signatures naming the real fleet key id", "policy", many_signatures(plane), "malformed"),
        (
            "a signed version of 10^3999 (fleet + customer keys)",
            "policy",
            signed_huge_version(plane),
            "malformed",
        ),
        (
            "a root listing one key under two key ids",
            "root",
            root_listing_one_key_twice(plane),
            "invalid_body",
        ),
        ("more than the size cap", "config", b"{" + b" " * (70 * 1024) + b"}", "too_large"),
    ]
    async with agent_process(config, agent_env) as proc, plane_client(mosquitto) as pc:
        first = await pc.wait_for(lambda s: s.get("device") == DEVICE and s.get("online") is True, 30)
        for story, kind, raw, reason in attacks:
            ack = await pc.push(kind, raw, retain=False, wait_s=20)
            assert (ack["status"], ack["reason"]) == ("rejected", reason), (story, ack)
            assert proc.poll() is None, f"the agent died on: {story}"
        # Nothing changed: root still v1, no policy applied; the room is alive and a valid policy
        # (its key ids in upper case: normalised) is applied after all of it, at a small version: the
        # huge signed version did not raise the policy's rollback floor.
        ack = await pc.push("policy", uppercase_keyid(plane), wait_s=20)
        assert ack["status"] == "applied", ack
        state = await pc.wait_for(lambda s: s.get("applied", {}).get("policy") is not None, 20)
        assert state["applied"]["root"] == first["applied"]["root"] == 1
        assert state["applied"]["policy"] == plane.versions["policy"] < 10
        assert proc.poll() is None
    entries = audit_entries(state_dir)
    rejected = [(e["kind"], e["reason"]) for e in entries if e["event"] == "rejected"]
    # Unauthenticated garbage is audited once per (reason, topic) and counted in the state; the two
    # signed attacks (huge version, root) are audited one by one.
    assert ("command", "malformed") in rejected
    assert ("config", "too_large") in rejected
    assert ("policy", "malformed") in rejected
    assert ("root", "invalid_body") in rejected
    assert rejected.count(("command", "malformed")) == 1
    counted = state["rejections"][f"malformed {PREFIX}/devices/{DEVICE}/cmd"]["count"]
    assert counted == 3


async def test_the_vendor_cannot_point_media_at_the_audit_log(
    mosquitto: Broker, tmp_path: Path, agent_env: dict[str, str]
) -> None:
    plane = Plane()
    config, state_dir = write_config(tmp_path, mosquitto, plane)
    audit_log = state_dir / "audit" / "audit.jsonl"
    async with agent_process(config, agent_env) as proc, plane_client(mosquitto) as pc:
        await pc.wait_for(lambda s: s.get("device") == DEVICE and s.get("online") is True, 30)
        # The attack: the fleet key alone signs a config whose sink is the room's own audit log.
        evil = plane.sign("config", {"media": {"sink": f"file://{audit_log}"}}, [plane.fleet])
        ack = await pc.push("config", evil, wait_s=20)
        assert (ack["status"], ack["reason"]) == ("rejected", "invalid_body"), ack
        assert "network sink" in ack["message"]
        # A pushed camera cannot name a file either.
        evil = plane.sign(
            "config", {"cameras": [{"id": "cam0", "backend": "v4l2", "device": str(audit_log)}]}
        )
        ack = await pc.push("config", evil, wait_s=20)
        assert (ack["status"], ack["reason"]) == ("rejected", "invalid_body"), ack
        # A network sink is fine.
        ack = await pc.push(
            "config", plane.sign("config", {"media": {"sink": "rtp://127.0.0.1:5004"}}), wait_s=20
        )
        assert ack["status"] in ("applied", "rolled_back"), ack
        assert proc.poll() is None
    # The audit log is still one clean chain of JSON entries (no media bytes in it).
    entries = audit_entries(state_dir)
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))


def test_a_local_file_sink_inside_the_state_directory_is_refused_at_check_config(
    tmp_path: Path, agent_env: dict[str, str]
) -> None:
    import subprocess
    import sys

    state_dir = tmp_path / "state"

    def check(sink: str) -> subprocess.CompletedProcess[str]:
        config = tmp_path / "agent.toml"
        config.write_text(f'[state]\ndir = "{state_dir}"\n[media]\nsink = "{sink}"\n')
        return subprocess.run(
            [sys.executable, "-m", "agent", "check-config", str(config)],
            env=agent_env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    bad = check(f"file://{state_dir}/audit/audit.jsonl")
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "media.sink" in bad.stderr
    assert "state directory" in bad.stderr
    assert check(f"file://{state_dir}/../x/../state/audit.jsonl").returncode == 2  # no path tricks
    ok = check(f"file://{tmp_path}/recording.ivf")
    assert ok.returncode == 0, ok.stderr


async def test_a_damaged_audit_log_is_kept_recorded_and_reported_never_rewritten(
    mosquitto: Broker, tmp_path: Path, agent_env: dict[str, str]
) -> None:
    import hashlib
    import subprocess
    import sys

    plane = Plane()
    config, state_dir = write_config(tmp_path, mosquitto, plane)
    audit_log = state_dir / "audit" / "audit.jsonl"
    async with agent_process(config, agent_env), plane_client(mosquitto) as pc:
        await pc.wait_for(lambda s: s.get("device") == DEVICE and s.get("online") is True, 30)
        for name in ("lock", "unlock"):  # the customer's actions: what an attacker wants to erase
            cmd = plane.sign("command", {"name": name, "args": {}}, [plane.customer])
            assert (await pc.push("command", cmd, wait_s=20))["status"] == "applied"
        before = await pc.wait_for(lambda s: s.get("locked") is False and s["audit_head"]["seq"] >= 4, 20)
    head_before = before["audit_head"]["seq"]

    # The attack: bytes written into the middle of the log (media records from a file sink, or anyone
    # with the disk), then the room restarts.
    lines = audit_log.read_bytes().split(b"\n")
    damaged = b"\n".join([*lines[:1], b"\x00\x00\x01\xb3 media frame bytes", *lines[1:]])
    audit_log.write_bytes(damaged)

    async with agent_process(config, agent_env), plane_client(mosquitto) as pc:
        after = await pc.wait_for(
            lambda s: s.get("online") is True and s.get("audit_corrupt") is not None, 30
        )
    # Kept byte for byte, recorded, reported; the head's seq only grew.
    kept = next(audit_log.parent.glob("audit-damaged-*.jsonl"))
    assert kept.read_bytes() == damaged
    assert after["audit_corrupt"]["damaged_sha256"] == hashlib.sha256(damaged).hexdigest()
    local = json.loads((state_dir / "state.json").read_text())  # the local state says so too
    assert local["audit_corrupt"]["damaged_sha256"] == after["audit_corrupt"]["damaged_sha256"]
    assert after["audit_head"]["seq"] > head_before
    kept_entries = [json.loads(line) for line in kept.read_bytes().splitlines() if line.startswith(b"{")]
    # The customer's lock and unlock records are still there, in the file kept as it was.
    interventions = [e for e in kept_entries if e["event"] == "intervention"]
    assert [e["message"] for e in interventions] == ["lock by customer", "unlock by customer"]

    # The device key as enrollment records it (roomctl takes keys from a roster or such a file, never
    # from a state document).
    device_state = tmp_path / "device-identity.json"
    device_state.write_text(json.dumps(after["identity"]))
    verify = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "agent.fleet",
            "audit",
            "verify",
            str(audit_log),
            "--device-key",
            str(device_state),
        ],
        env=agent_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 1, verify.stdout + verify.stderr
    report = json.loads(verify.stdout)
    assert report["audit_corrupt"] is True
    assert report["damaged_file_matches"] is True
    assert report["damaged_sha256"] == hashlib.sha256(damaged).hexdigest()


async def test_a_garbage_flood_costs_the_room_little_and_a_valid_document_still_goes_first(
    mosquitto: Broker, tmp_path: Path, agent_env: dict[str, str]
) -> None:
    plane = Plane()
    config, state_dir = write_config(tmp_path, mosquitto, plane)
    flood = 3000
    async with agent_process(config, agent_env) as proc, plane_client(mosquitto) as pc:
        await pc.wait_for(lambda s: s.get("device") == DEVICE and s.get("online") is True, 30)
        audit_before = len(audit_entries(state_dir))
        # The attack: a broker client sends thousands of small unsigned messages on the command topic.
        for i in range(flood):
            await pc.client.publish(pc.topic("command"), b"garbage %d" % i, qos=0)
        # A valid document sent right behind the flood is applied.
        await apply_valid_policy(pc, plane)
        await asyncio.sleep(2.0)  # the rest of the flood drains
        await apply_valid_policy(pc, plane)  # (publishes a fresh state with the counters)
        topic = pc.topic("command")
        state = await pc.wait_for(
            lambda s: (
                (
                    s.get("rejections", {}).get(f"malformed {topic}", {}).get("count", 0)
                    + s.get("rejections", {}).get(f"unprocessed {topic}", {}).get("count", 0)
                )
                == flood
            ),
            20,
        )
        assert proc.poll() is None
    counted = state["rejections"]
    # Every garbage message is accounted for, most never parsed (at most 200/s per topic are).
    assert counted[f"unprocessed {topic}"]["count"] > flood / 2
    # Few acks (5/s per topic after a burst of 20), a handful of audit entries: no amplification.
    garbage_acks = [a for a in pc.acks if a["doc_kind"] == "command"]
    assert len(garbage_acks) <= 60, len(garbage_acks)
    new_entries = audit_entries(state_dir)[audit_before:]
    # The first garbage message audited in full; the rest as coalesced counters (written every
    # minute and at shutdown), one entry per (reason, topic): nothing per message.
    assert [e["reason"] for e in new_entries if e["event"] == "rejected"] == ["malformed"]
    coalesced = [e for e in new_entries if e["event"] == "rejections_coalesced"]
    assert sorted(e["reason"] for e in coalesced) == ["malformed", "unprocessed"]
    assert len(new_entries) == 1 + 2 * 2 + len(coalesced)  # + accepted/applied of the two policies
