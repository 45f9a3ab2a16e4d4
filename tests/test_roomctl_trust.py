"""Attack scenarios against roomctl's trust in what the broker says, with a real Mosquitto, real
``roomagent run`` rooms enrolled through ``roomagent identity --json`` + ``roomctl roster add``, and
real ``roomctl`` processes. Each test is the attack, then the outcome the threat model promises
(docs/threat-model.md)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent.control.dsse import Envelope
from agent.control.identity import DeviceIdentity
from agent.control.signing_keys import private_key_pem
from agent.privacy.errors import PrivacyError
from agent.privacy.hpke import HpkeIdentity
from agent.privacy.key_packages import KeyManager, KeysBody, KeySet
from agent.schema.policy import DEFAULT_POLICY
from tests.broker import Broker
from tests.fleet_trust import GARBAGE, Fleet, publish, running, topic
from tests.plane import PREFIX

pytestmark = pytest.mark.broker


@pytest.fixture
def fleet(tmp_path: Path, agent_env: dict[str, str]) -> Fleet:
    return Fleet(tmp_path, agent_env)


def _forged_state(device: str, attacker_dir: Path) -> tuple[dict[str, Any], HpkeIdentity, DeviceIdentity]:
    """A retained state with the attacker's own Ed25519 key, HPKE keys and a valid self-signed attestation."""
    ed = DeviceIdentity.load_or_create(attacker_dir)
    hpke = HpkeIdentity.generate()
    attestation = ed.sign_envelope("hpke-identity", {"device": device, "hpke": hpke.public_keys()})
    head = ed.sign_envelope("audit-head", {"device": device, "seq": 99, "hash": "0" * 64})
    state = {
        "device": device,
        "online": True,
        "groups": ["hq"],
        "applied": {"root": 7, "policy": 7, "config": 7},
        "identity": {
            "ed25519": ed.public_dict,
            "keyid": ed.keyid,
            "hpke": hpke.public_keys(),
            "hpke_attestation": attestation.to_dict(),
        },
        "audit_head": {"seq": 99, "hash": "0" * 64, "signed": head.to_dict()},
        "locked": False,
    }
    return state, hpke, ed


async def _capture(broker: Broker, topics: list[str], ready: asyncio.Event, out: dict[str, bytes]) -> None:
    async with aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        for t in topics:
            await client.subscribe(t, qos=1)
        ready.set()
        async for message in client.messages:
            out[str(message.topic)] = bytes(message.payload)  # type: ignore[arg-type]


async def test_broker_client_with_its_own_keys_gets_no_meeting_keys_and_shows_as_forged(
    fleet: Fleet, mosquitto: Broker
) -> None:
    fleet.enroll("room-a", mosquitto)
    fleet.enroll("room-b", mosquitto)
    async with running(fleet, mosquitto, "room-a", "room-b"):
        status = await fleet.aroomctl("status", *fleet.broker_args(mosquitto), "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert {d: r["trust"] for d, r in report.items()} == {"room-a": "verified", "room-b": "verified"}

        # The attack: overwrite room-b's retained state with the attacker's keys and self-signed attestation.
        forged, attacker_hpke, _ = _forged_state("room-b", fleet.tmp / "attacker")
        await publish(mosquitto, topic("room-b", "state"), json.dumps(forged).encode(), retain=True)
        status = await fleet.aroomctl("status", *fleet.broker_args(mosquitto), "--json")
        report = json.loads(status.stdout)
        assert report["room-b"]["trust"] == "forged"
        assert "identity key is not the enrolled one" in report["room-b"]["reason"]
        table = await fleet.aroomctl("status", *fleet.broker_args(mosquitto))
        assert table.returncode == 0
        row = next(line for line in table.stdout.splitlines() if line.strip("│ ").startswith("room-b"))
        assert "forged" in row
        assert "7" not in row  # the forged versions are not shown as facts

        # The customer starts a meeting as the README says: keys come from the roster, not the state.
        captured: dict[str, bytes] = {}
        ready = asyncio.Event()
        spy = asyncio.create_task(_capture(mosquitto, [topic("+", "keys")], ready, captured))
        await ready.wait()
        try:
            result = await fleet.aroomctl(
                "meeting",
                "start",
                "--rooms",
                "room-a,room-b",
                *fleet.broker_args(mosquitto),
                "--customer-key",
                str(fleet.keys["customer"]),
                "--meeting",
                "m-1",
                "--wait-acks",
                "--json",
            )
            assert result.returncode == 0, result.stderr
            report = json.loads(result.stdout)
            assert {r["ack"] for r in report["rooms"].values()} == {"applied"}
            assert all(r["ack_verified"] for r in report["rooms"].values())
            async with asyncio.timeout(10):
                while len(captured) < 2:  # noqa: ASYNC110 - the spy fills a plain dict
                    await asyncio.sleep(0.05)
        finally:
            spy.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await spy

    # The attacker holds every sealed package that crossed the broker, and opens none of them.
    class Sink:
        def apply_keys(self, keys: KeySet) -> None:
            raise AssertionError("the attacker opened a key package")

    assert {t.split("/")[-2] for t in captured} == {"room-a", "room-b"}
    for where, raw in captured.items():
        body = KeysBody.model_validate(json.loads(Envelope.parse(raw).payload)["body"])
        # The attacker opens each package as its addressee, with the HPKE key it planted for room-b.
        thief = KeyManager(
            device_id=where.split("/")[-2],
            identity=attacker_hpke,
            policy=lambda: DEFAULT_POLICY,
            target=Sink(),
        )
        with pytest.raises(PrivacyError, match="bad_seal"):
            thief.install(body)


async def test_forged_acks_do_not_make_an_offline_room_look_applied(fleet: Fleet, mosquitto: Broker) -> None:
    """room-c is enrolled but offline; a broker client answers every command with forged acks."""
    fleet.enroll("room-c", mosquitto)
    forged_state, _, planted = _forged_state("room-c", fleet.tmp / "attacker")
    await publish(mosquitto, topic("room-c", "state"), json.dumps(forged_state).encode(), retain=True)

    async def answer(mode: str) -> None:
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5) as c:
            await c.subscribe(topic("room-c", "cmd"), qos=1)
            await c.subscribe(topic("room-c", "desired/+"), qos=1)
            async for message in c.messages:
                doc = Envelope.parse(bytes(message.payload))  # type: ignore[arg-type]
                payload = json.loads(doc.payload)
                ack = {
                    "kind": "ack",
                    "device": "room-c",
                    "doc_kind": payload["kind"],
                    "doc_version": payload["version"],
                    "payload_sha256": hashlib.sha256(doc.payload).hexdigest(),
                    "status": "applied",
                    "reason": None,
                    "message": "applied and healthy",
                    "time": "2026-01-01T00:00:00.000000Z",
                }
                if mode == "planted":
                    env = planted.sign_envelope("ack", ack)
                else:
                    env = Envelope("application/vnd.roomagent.ack+json", json.dumps(ack).encode(), ())
                await c.publish(topic("room-c", "ack"), env.to_json(), qos=1)

    for mode in ("planted", "unsigned"):
        attacker = asyncio.create_task(answer(mode))
        await asyncio.sleep(0.3)
        try:
            lock = await fleet.aroomctl(
                "lock",
                "room-c",
                *fleet.broker_args(mosquitto),
                "--customer-key",
                str(fleet.keys["customer"]),
                "--wait",
                "3",
                "--json",
            )
            assert lock.returncode == 1, (mode, lock.stdout, lock.stderr)
            outcome = json.loads(lock.stdout)["rooms"]["room-c"]
            assert outcome["status"] == "forged"
            assert outcome["verified"] is False
            signed = fleet.plane.sign(
                "config", {"log": {"level": "info", "format": "json"}}, devices=["room-c"]
            )
            (fleet.tmp / "config.env").write_bytes(signed)
            push = await fleet.aroomctl(
                "push",
                str(fleet.tmp / "config.env"),
                *fleet.broker_args(mosquitto),
                "--device",
                "room-c",
                "--wait",
                "3",
            )
            assert push.returncode == 1, (mode, push.stdout, push.stderr)
            assert "FORGED" in push.stdout
        finally:
            attacker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await attacker


async def test_garbage_on_ack_and_state_topics_does_not_break_push_status_or_lock(
    fleet: Fleet, mosquitto: Broker
) -> None:
    fleet.enroll("room-a", mosquitto)
    # Retained garbage on other devices' state topics (one per shape).
    for n, junk in enumerate(GARBAGE[:-1]):
        await publish(mosquitto, topic(f"junk-{n}", "state"), junk, retain=True)
    stop = asyncio.Event()

    async def spray() -> None:
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5) as c:
            while not stop.is_set():
                for junk in GARBAGE:
                    await c.publish(topic("room-a", "ack"), junk, qos=1)
                await asyncio.sleep(0.05)

    async with running(fleet, mosquitto, "room-a"):
        # Retained garbage on the ack topic reaches every roomctl the moment it subscribes; the
        # sprayer adds a stream of fresh garbage on top.
        await publish(mosquitto, topic("room-a", "ack"), GARBAGE[3], retain=True)
        sprayer = asyncio.create_task(spray())
        try:
            status = await fleet.aroomctl("status", *fleet.broker_args(mosquitto), "--json")
            assert status.returncode == 0, status.stderr
            report = json.loads(status.stdout)
            assert report["room-a"]["trust"] == "verified"
            for n in range(4):  # invalid UTF-8, a JSON list, not JSON, deep nesting
                assert f"from junk-{n} on {PREFIX}/devices/junk-{n}/state" in status.stderr
            assert report["junk-4"]["trust"] == "unverified"  # an object, but no rostered room
            signed = fleet.plane.sign("config", {"log": {"level": "info", "format": "json"}}, groups=["hq"])
            (fleet.tmp / "config.env").write_bytes(signed)
            push = await fleet.aroomctl(
                "push",
                str(fleet.tmp / "config.env"),
                *fleet.broker_args(mosquitto),
                "--group",
                "hq",
                "--json",
            )
            assert push.returncode == 0, push.stdout + push.stderr
            assert json.loads(push.stdout)["rooms"]["room-a"]["verified"] is True
            assert f"room-a on {PREFIX}/devices/room-a/ack" in push.stderr
            lock = await fleet.aroomctl(
                "lock", "room-a", *fleet.broker_args(mosquitto), "--customer-key", str(fleet.keys["customer"])
            )
            assert lock.returncode == 0, lock.stdout + lock.stderr
            unlock = await fleet.aroomctl(
                "unlock",
                "room-a",
                *fleet.broker_args(mosquitto),
                "--customer-key",
                str(fleet.keys["customer"]),
            )
            assert unlock.returncode == 0, unlock.stdout + unlock.stderr
            for result in (status, push, lock, unlock):
                assert "Traceback" not in result.stderr
                # One warning line per topic, however many garbage messages arrived.
                lines = [x for x in result.stderr.splitlines() if "warning" in x]
                assert len(lines) == len(set(lines))
        finally:
            stop.set()
            await sprayer


async def test_lock_by_legal_needs_the_order_and_fleet_cannot_lock(fleet: Fleet, mosquitto: Broker) -> None:
    fleet.enroll("room-a", mosquitto)
    async with running(fleet, mosquitto, "room-a"):
        by_fleet = await fleet.aroomctl(
            "lock",
            "room-a",
            *fleet.broker_args(mosquitto),
            "--customer-key",
            str(fleet.keys["fleet"]),
            "--json",
        )
        assert by_fleet.returncode == 1
        outcome = json.loads(by_fleet.stdout)["rooms"]["room-a"]
        assert outcome["status"] == "rejected"
        assert outcome["reason"] == "needs_customer"
        assert outcome["verified"] is True
        no_order = await fleet.aroomctl(
            "lock", "room-a", *fleet.broker_args(mosquitto), "--legal-key", str(fleet.keys["legal"])
        )
        assert no_order.returncode == 2
        assert "--order-issuer" in no_order.stderr
        # The room's policy names no jurisdiction yet: a lawful order cannot match it.
        order = await fleet.aroomctl(
            "lock",
            "room-a",
            *fleet.broker_args(mosquitto),
            "--legal-key",
            str(fleet.keys["legal"]),
            "--order-issuer",
            "AG Berlin",
            "--order-id",
            "42",
            "--jurisdiction",
            "DE",
        )
        assert order.returncode == 1
        assert "lawful_order_mismatch" in order.stdout
        assert "jurisdiction" in order.stdout


async def test_snapshot_refused_by_policy_names_the_policy_field(fleet: Fleet, mosquitto: Broker) -> None:
    fleet.enroll("room-a", mosquitto)
    recipient = fleet.tmp / "me.json"
    HpkeIdentity.generate().save(recipient)
    async with running(fleet, mosquitto, "room-a"):
        result = await fleet.aroomctl(
            "snapshot",
            "--device",
            "room-a",
            *fleet.broker_args(mosquitto),
            "--customer-key",
            str(fleet.keys["customer"]),
            "--recipient-key",
            str(recipient),
            "--out",
            str(fleet.tmp / "room.png"),
        )
    assert result.returncode == 1, result.stderr
    assert "forbidden_by_policy" in result.stderr
    assert "camera.remote_snapshot" in result.stderr
    assert not (fleet.tmp / "room.png").exists()


async def test_a_picture_planted_by_a_broker_client_is_not_taken_for_the_rooms(
    mosquitto: Broker, tmp_path: Path, agent_env: dict[str, str]
) -> None:
    """The broker saw the requester's HPKE key in the request and answers first with a picture of
    its own, sealed to that key and signed by a key it planted: roomctl skips it (it is not signed by
    the rostered key) and writes the room's real picture."""
    import base64

    from agent.privacy.hpke import seal_to
    from agent.privacy.snapshot import SealedSnapshot, snapshot_info
    from hal.images import decode_png
    from hal.stamps import read_stamp
    from tests.plane import Plane
    from tests.privacy_rooms import enroll, running_rooms
    from tests.test_privacy_snapshot import _allow_snapshots, _with_camera

    plane = Plane()
    customer = tmp_path / "customer.pem"
    customer.write_bytes(private_key_pem(plane.customer))
    requester = tmp_path / "me.json"
    HpkeIdentity.generate().save(requester)
    planted = DeviceIdentity.load_or_create(tmp_path / "attacker")

    async def forge() -> None:
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5) as c:
            await c.subscribe(topic("room-101", "cmd"), qos=1)
            async for message in c.messages:
                env = Envelope.parse(bytes(message.payload))  # type: ignore[arg-type]
                payload = json.loads(env.payload)
                recipient = payload["body"]["args"]["recipient"]
                sha = hashlib.sha256(env.payload).hexdigest()
                png = b"\x89PNG\r\n\x1a\n a picture of the attacker's choosing"
                info = snapshot_info("room-101", payload["version"], sha)
                fields = {
                    "device": "room-101",
                    "doc_version": payload["version"],
                    "kem": recipient["kem"],
                    "sealed": base64.b64encode(
                        seal_to(recipient["kem"], recipient["public_key"], png, info)
                    ).decode(),
                    "sha256": hashlib.sha256(png).hexdigest(),
                }
                fake = SealedSnapshot("cam0", recipient["kem"], len(png), fields["sha256"], fields)
                await c.publish(topic("room-101", "snapshot"), fake.message(planted), qos=1)

    async with running_rooms(plane, mosquitto, tmp_path, "room-101") as (room,):
        _with_camera(room)
        source = room.guard.snapshot_source
        assert source is not None
        real_capture = source.capture

        async def slow_capture(camera_id: str | None, timeout_s: float) -> Any:
            await asyncio.sleep(1.0)  # fault injected: the room is slow, the attacker answers first
            return await real_capture(camera_id, timeout_s)

        source.capture = slow_capture  # type: ignore[method-assign]
        await _allow_snapshots(room, plane)
        attacker = asyncio.create_task(forge())
        await asyncio.sleep(0.3)
        try:
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
                "--customer-key",
                str(customer),
                "--recipient-key",
                str(requester),
                "--out",
                str(out),
                *enroll(plane, tmp_path, [room]),
                env=agent_env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await proc.communicate()
        finally:
            attacker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await attacker
    assert proc.returncode == 0, err.decode()
    assert "not signed by the room's rostered key" in err.decode()
    assert read_stamp(decode_png(out.read_bytes())) is not None  # the room's own camera picture


async def test_a_refused_weakening_names_the_weakened_fields(fleet: Fleet, mosquitto: Broker) -> None:
    fleet.enroll("room-a", mosquitto)
    async with running(fleet, mosquitto, "room-a"):
        weak = fleet.plane.policy(
            e2ee={"required": False, "suites": [4, 5], "kem": "x25519"},
            camera={"shutter_when_idle": True, "remote_snapshot": True, "remote_ptz": True},
        )
        (fleet.tmp / "weak.env").write_bytes(
            fleet.plane.sign("policy", weak, devices=["room-a"])
        )  # fleet alone
        push = await fleet.aroomctl(
            "push", str(fleet.tmp / "weak.env"), "--device", "room-a", *fleet.broker_args(mosquitto)
        )
        assert push.returncode == 1
        out = push.stdout.replace("\n", " ")
        assert "needs_customer" in out
        # roomctl names the weakened fields before pushing (the room's own check, run locally).
        assert "weakens e2ee.required, camera.remote_snapshot" in out
        assert "roomctl sign policy" in out
        # Countersigned by the customer, the same policy is applied.
        both = fleet.plane.envelope(
            "policy",
            json.loads(Envelope.parse(fleet.plane.sign("policy", weak, devices=["room-a"])).payload),
            [fleet.plane.fleet, fleet.plane.customer],
        )
        (fleet.tmp / "both.env").write_bytes(both.to_json())
        ok = await fleet.aroomctl(
            "push", str(fleet.tmp / "both.env"), "--device", "room-a", *fleet.broker_args(mosquitto)
        )
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "weakens" not in ok.stdout
