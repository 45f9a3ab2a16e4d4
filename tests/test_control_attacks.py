"""One scenario per attack (TUF threat list + docs/design.md rules), against a real Mosquitto.

Each scenario: the plane (or an attacker with broker access) publishes one bad document; the device
acks it ``rejected`` with the attack's own reason code, audits it, changes nothing, and keeps
running (a valid document right after is still applied).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.control.dsse import Envelope
from agent.control.standalone import FileApplyTarget
from tests.broker import Broker
from tests.plane import Plane, RunningDevice, device_config, now, start_device, stop_device

pytestmark = pytest.mark.broker

Attack = Callable[[Plane, RunningDevice], Awaitable[tuple[str, bytes]]]


@pytest.fixture
def plane() -> Plane:
    return Plane()


@pytest.fixture
async def dev(plane: Plane, mosquitto: Broker, tmp_path: Path) -> AsyncIterator[RunningDevice]:
    root = tmp_path / "root.json"
    root.write_bytes(plane.root())
    config = device_config(tmp_path / "state", root, mosquitto.url)
    d = await start_device(
        config, FileApplyTarget(tmp_path / "state" / "running"), mosquitto.host, mosquitto.port
    )
    try:
        yield d
    finally:
        await stop_device(d)


async def _apply_config_v2(plane: Plane, dev: RunningDevice) -> None:
    ack = await dev.plane.push("config", plane.sign("config", {"encoder": {"bitrate_kbps": 2000}}, version=2))
    assert ack["status"] == "applied", ack


async def unsigned(plane: Plane, dev: RunningDevice) -> tuple[str, bytes]:
    return "config", plane.envelope("config", plane.payload("config", {}), []).to_json()


async def wrong_key(plane: Plane, dev: RunningDevice) -> tuple[str, bytes]:
    return "config", plane.sign("config", {}, [ed25519.Ed25519PrivateKey.generate()])


async def same_key_twice(plane: Plane, dev: RunningDevice) -> tuple[str, bytes]:
    # Rotate to a fleet role of two keys, threshold 2; then one fleet key signs twice.
    plane.extra_fleet = [ed25519.Ed25519PrivateKey.generate()]
    plane.fleet_threshold = 2
    assert (await dev.plane.push("root", plane.root()))["status"] == "applied"
    env = plane.envelope("config", plane.payload("config", {}), [plane.fleet])
    doubled = Envelope(env.payload_type, env.payload, (env.signatures[0], env.signatures[0]))
    return "config", doubled.to_json()


async def tampered_payload(plane: Plane, dev: RunningDevice) -> tuple[str, bytes]:
    env = plane.envelope("config", plane.payload("config", {"encoder": {"bitrate_kbps": 900}}), [plane.fleet])
    evil = env.payload.replace(b"900", b"50")
    return "config", Envelope(env.payload_type, evil, env.signatures).to_json()


async def payload_type_swapped(plane: Plane, dev: RunningDevice) -> tuple[str, bytes]:
    # A validly signed policy replayed on the config topic.
    return "config", plane.sign("policy", plane.policy())


async def replayed_older(plane: Plane, dev: RunningDevice) -> tuple[str, bytes]:
    old = plane.sign("config", {"encoder": {"bitrate_kbps": 700}}, version=1)
    await _apply_config_v2(plane, dev)
    return "config", old


async def equal_version(plane: Plane, dev: RunningDevice) -> tuple[str, bytes]:
    await _apply_config_v2(plane, dev)
    return "config", plane.sign("config", {"encoder": {"bitrate_kbps": 300}}, version=2)


async def expired(plane: Plane, dev: RunningDevice) -> tuple[str, bytes]:
    return "config", plane.sign(
        "config", {}, issued_at=now() - dt.timedelta(days=40), expires=now() - dt.timedelta(days=1)
    )


async def issued_in_future(plane: Plane, dev: RunningDevice) -> tuple[str, bytes]:
    return "config", plane.sign("config", {}, issued_at=now() + dt.timedelta(days=2))


async def other_device(plane: Plane, dev: RunningDevice) -> tuple[str, bytes]:
    return "config", plane.sign("config", {}, devices=["room-999"])


async def other_group(plane: Plane, dev: RunningDevice) -> tuple[str, bytes]:
    return "config", plane.sign("config", {}, devices=[], groups=["branch-office"])


async def oversized(plane: Plane, dev: RunningDevice) -> tuple[str, bytes]:
    return "config", plane.sign("config", {}) + b" " * (70 * 1024)


async def malformed_json(plane: Plane, dev: RunningDevice) -> tuple[str, bytes]:
    return "config", b'{"payload": "e30=", "payloadType": '


async def duplicate_keys(plane: Plane, dev: RunningDevice) -> tuple[str, bytes]:
    body = json.dumps(plane.payload("config", {}))[:-1] + ', "version": 999}'
    return "config", plane.envelope("config", body.encode(), [plane.fleet]).to_json()


async def bad_base64(plane: Plane, dev: RunningDevice) -> tuple[str, bytes]:
    env = json.loads(plane.sign("config", {}))
    env["payload"] = env["payload"][:-4] + "!!!="
    return "config", json.dumps(env).encode()


async def unknown_body_field(plane: Plane, dev: RunningDevice) -> tuple[str, bytes]:
    return "config", plane.sign("config", {"encoder": {"bitrate_kbps": 900}, "backdoor": True})


async def root_signed_only_by_new_keys(plane: Plane, dev: RunningDevice) -> tuple[str, bytes]:
    plane.root_keys = [ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()]
    return "root", plane.root()


async def revoked_key(plane: Plane, dev: RunningDevice) -> tuple[str, bytes]:
    old_fleet = plane.fleet
    plane.fleet = ed25519.Ed25519PrivateKey.generate()
    assert (await dev.plane.push("root", plane.root()))["status"] == "applied"
    return "config", plane.sign("config", {}, [old_fleet])


ATTACKS: list[tuple[Attack, str]] = [
    (unsigned, "bad_signature"),
    (wrong_key, "bad_signature"),
    (same_key_twice, "bad_signature"),
    (tampered_payload, "bad_signature"),
    (payload_type_swapped, "wrong_type"),
    (replayed_older, "rollback"),
    (equal_version, "rollback"),
    (expired, "expired"),
    (issued_in_future, "not_yet_valid"),
    (other_device, "not_for_this_device"),
    (other_group, "not_for_this_device"),
    (oversized, "too_large"),
    (malformed_json, "malformed"),
    (duplicate_keys, "malformed"),
    (bad_base64, "malformed"),
    (unknown_body_field, "invalid_body"),
    (root_signed_only_by_new_keys, "bad_signature"),
    (revoked_key, "bad_signature"),
]


def _snapshot(dev: RunningDevice) -> tuple[bytes, int, dict[str, int]]:
    svc = dev.service
    return (
        svc.state.path.read_bytes() if svc.state.path.exists() else b"",
        svc.trust.version,
        svc.state.applied_versions(),
    )


@pytest.mark.parametrize(("attack", "reason"), ATTACKS, ids=[a.__name__ for a, _ in ATTACKS])
async def test_attack_is_rejected(attack: Attack, reason: str, plane: Plane, dev: RunningDevice) -> None:
    kind, raw = await attack(plane, dev)
    before = _snapshot(dev)
    audit_before = dev.service.audit.seq

    ack = await dev.plane.push(kind, raw)

    assert (ack["status"], ack["reason"]) == ("rejected", reason), ack
    assert (ack["device"], ack["doc_kind"]) == ("room-101", kind)
    # The ack is signed by the device identity published in its retained state.
    env: Envelope = ack["_env"]
    assert env.signatures[0].keyid == dev.service.identity.keyid
    assert _snapshot(dev) == before, "a rejected document changed state"
    entries = [json.loads(line) for line in dev.service.audit.path.read_bytes().splitlines()]
    assert entries[-1]["seq"] == audit_before + 1
    assert (entries[-1]["event"], entries[-1]["reason"]) == ("rejected", reason)
    # Agent alive: the next valid document is applied.
    good = await dev.plane.push(
        "config", plane.sign("config", {"encoder": {"bitrate_kbps": 1234}}, version=50)
    )
    assert good["status"] == "applied"
    assert dev.alive()
    running = json.loads((dev.service.config.state_dir() / "running" / "config.json").read_text())
    assert running["encoder"]["bitrate_kbps"] == 1234


def test_every_reason_code_is_distinct_per_attack_class() -> None:
    assert {r for _, r in ATTACKS} >= {
        "bad_signature",
        "wrong_type",
        "rollback",
        "expired",
        "not_yet_valid",
        "not_for_this_device",
        "too_large",
        "malformed",
        "invalid_body",
    }
    assert base64  # keeps the import list honest for bad_base64 readers
