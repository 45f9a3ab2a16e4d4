"""Remote snapshots over a real Mosquitto: sealed to the requester, never in clear on the broker.

The customer asks one room for a picture with its own HPKE public key; an MQTT sniffer subscribed to
everything sees only the sealed image. The vendor alone, a forbidding policy, a weak KEM, a closed
shutter or a locked room each get a typed rejection and no image leaves.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import sys
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent.control.dsse import Envelope
from agent.control.signing_keys import parse_public_key, private_key_pem
from agent.privacy.hpke import HpkeIdentity, seal_to
from agent.privacy.snapshot import InventoryFrameSource, open_snapshot, snapshot_info, snapshot_signed_by
from hal.images import decode_png
from hal.sim.camera import SimInventory
from hal.stamps import read_stamp
from hal.types import CameraSpec
from tests.broker import Broker
from tests.plane import PREFIX, Plane
from tests.privacy_rooms import Room, enroll, running_rooms

pytestmark = pytest.mark.broker

PNG_MAGIC = b"\x89PNG"
PNG_MAGIC_B64 = b"iVBORw0KGgo"  # base64 of the PNG signature: not even encoded may it pass


@pytest.fixture
def plane() -> Plane:
    return Plane()


@contextlib.asynccontextmanager
async def sniffer(broker: Broker) -> AsyncIterator[list[tuple[str, bytes]]]:
    """Every message the broker carries (the vendor's view), as (topic, payload)."""
    seen: list[tuple[str, bytes]] = []
    async with aiomqtt.Client(broker.host, broker.port, identifier="sniffer") as client:
        await client.subscribe("#", qos=1)

        async def collect() -> None:
            async for message in client.messages:
                seen.append((str(message.topic), bytes(message.payload)))

        task = asyncio.create_task(collect(), name="sniffer")
        await asyncio.sleep(0.05)
        try:
            yield seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _with_camera(room: Room) -> SimInventory:
    inventory = SimInventory([CameraSpec(id="cam0", width=320, height=180, fps=30)])
    room.guard.snapshot_source = InventoryFrameSource(inventory)
    return inventory


def _request(plane: Plane, requester: HpkeIdentity, kem: str, signers: list[Any]) -> tuple[bytes, int, str]:
    args = {"camera": "cam0", "recipient": {"kem": kem, "public_key": requester.public_keys()[kem]}}
    raw = plane.sign("command", {"name": "snapshot", "args": args}, signers)
    payload = Envelope.parse(raw).payload
    return raw, json.loads(payload)["version"], hashlib.sha256(payload).hexdigest()


async def _allow_snapshots(room: Room, plane: Plane, **extra: Any) -> None:
    policy = plane.policy(
        camera={"shutter_when_idle": False, "remote_snapshot": True, "remote_ptz": True}, **extra
    )
    ack = await room.plane.push("policy", plane.sign("policy", policy, [plane.fleet, plane.customer]))
    assert ack["status"] == "applied", ack


async def _snapshot_message(seen: list[tuple[str, bytes]], wait_s: float = 5.0) -> bytes:
    async with asyncio.timeout(wait_s):
        while True:
            for topic, payload in seen:
                if topic == f"{PREFIX}/devices/room-101/snapshot":
                    return payload
            await asyncio.sleep(0.02)


async def test_customer_snapshot_arrives_sealed_opens_to_a_stamped_png_and_never_in_clear(
    plane: Plane, mosquitto: Broker, tmp_path: Path
) -> None:
    async with sniffer(mosquitto) as seen, running_rooms(plane, mosquitto, tmp_path, "room-101") as (room,):
        inventory = _with_camera(room)
        await _allow_snapshots(
            room, plane, e2ee={"required": True, "suites": [4, 5], "kem": "mlkem768-x25519"}
        )
        requester = HpkeIdentity.generate()
        raw, version, sha = _request(plane, requester, "mlkem768-x25519", [plane.customer])
        ack = await room.plane.push("command", raw)
        assert ack["status"] == "applied", ack
        message = await _snapshot_message(seen)
        png = open_snapshot(requester, message, device="room-101", doc_version=version, payload_sha256=sha)
        assert png.startswith(PNG_MAGIC)
        stamp = read_stamp(decode_png(png))
        assert stamp is not None  # a real captured frame of the sim camera
        # Signed by the room's identity; a picture the broker seals to our (public) key is not.
        device_key = parse_public_key(room.service.identity.public_dict)
        assert snapshot_signed_by(message, device_key)
        forged = json.loads(message)
        forged["sealed"] = base64.b64encode(
            seal_to(
                "mlkem768-x25519",
                requester.public_keys()["mlkem768-x25519"],
                png,
                snapshot_info("room-101", version, sha),
            )
        ).decode()
        assert not snapshot_signed_by(json.dumps(forged).encode(), device_key)
        # Someone else's key (e.g. the vendor's) does not open it.
        with pytest.raises(Exception, match="bad_seal"):
            open_snapshot(
                HpkeIdentity.generate(), message, device="room-101", doc_version=version, payload_sha256=sha
            )
        # Announced in the room; audited with size and digest only.
        assert any("snapshot" in n.message for n in inventory.device("cam0").notices)
        audit = [json.loads(line) for line in room.service.audit.path.read_text().splitlines()]
        assert any(
            e["event"] == "snapshot" and hashlib.sha256(png).hexdigest() in e["message"] for e in audit
        )
        await asyncio.sleep(0.2)  # let the ack and audit messages reach the sniffer too
    assert any(topic.endswith("/snapshot") for topic, _ in seen)
    for topic, payload in seen:
        assert PNG_MAGIC not in payload, topic
        assert PNG_MAGIC_B64 not in payload, topic


async def test_snapshot_refusals_each_with_its_reason_and_no_image_published(
    plane: Plane, mosquitto: Broker, tmp_path: Path
) -> None:
    async with sniffer(mosquitto) as seen, running_rooms(plane, mosquitto, tmp_path, "room-101") as (room,):
        inventory = _with_camera(room)
        requester = HpkeIdentity.generate()
        # The default policy forbids remote snapshots: the customer is refused too.
        ack = await room.plane.push("command", _request(plane, requester, "x25519", [plane.customer])[0])
        assert (ack["status"], ack["reason"]) == ("rejected", "forbidden_by_policy"), ack
        await _allow_snapshots(
            room, plane, e2ee={"required": True, "suites": [4, 5], "kem": "mlkem768-x25519"}
        )
        # The vendor alone cannot look into the room.
        ack = await room.plane.push(
            "command", _request(plane, requester, "mlkem768-x25519", [plane.fleet])[0]
        )
        assert (ack["status"], ack["reason"]) == ("rejected", "needs_customer"), ack
        # A recipient KEM below the policy's floor.
        ack = await room.plane.push("command", _request(plane, requester, "x25519", [plane.customer])[0])
        assert (ack["status"], ack["reason"]) == ("rejected", "kem_too_weak"), ack
        # The privacy shutter wins over the customer's request.
        inventory.device("cam0").shutter_closed = True
        ack = await room.plane.push(
            "command", _request(plane, requester, "mlkem768-x25519", [plane.customer])[0]
        )
        assert (ack["status"], ack["reason"]) == ("rejected", "shutter_closed"), ack
        inventory.device("cam0").shutter_closed = False
        # A locked room takes no pictures.
        ack = await room.plane.push(
            "command", plane.sign("command", {"name": "lock", "args": {}}, [plane.customer])
        )
        assert ack["status"] == "applied", ack
        ack = await room.plane.push(
            "command", _request(plane, requester, "mlkem768-x25519", [plane.customer])[0]
        )
        assert (ack["status"], ack["reason"]) == ("rejected", "locked"), ack
        await asyncio.sleep(0.1)
    assert not any(topic.endswith("/snapshot") for topic, _ in seen)


async def _roomctl(env: dict[str, str], *argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.fleet", *argv, env=env, stdout=PIPE, stderr=PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_roomctl_snapshot_writes_the_png_and_reports_a_refusal(
    plane: Plane, mosquitto: Broker, tmp_path: Path, agent_env: dict[str, str]
) -> None:
    customer = tmp_path / "customer.pem"
    customer.write_bytes(private_key_pem(plane.customer))
    fleet = tmp_path / "fleet.pem"
    fleet.write_bytes(private_key_pem(plane.fleet))
    hpke_key = tmp_path / "requester-hpke.json"
    code, out, _ = await _roomctl(agent_env, "hpke-keygen", "--out", str(hpke_key))
    assert code == 0
    assert set(json.loads(out)) == {"x25519", "mlkem768-x25519"}
    assert hpke_key.stat().st_mode & 0o077 == 0
    async with running_rooms(plane, mosquitto, tmp_path, "room-101") as (room,):
        _with_camera(room)
        await _allow_snapshots(room, plane)
        common = [
            "--device",
            "room-101",
            "--broker",
            mosquitto.url,
            "--recipient-key",
            str(hpke_key),
            *enroll(plane, tmp_path, [room]),
        ]
        out_png = tmp_path / "room.png"
        code, out, err = await _roomctl(
            agent_env, "snapshot", *common, "--customer-key", str(customer), "--out", str(out_png)
        )
        assert code == 0, err
        assert read_stamp(decode_png(out_png.read_bytes())) is not None
        # Signed by the vendor's key instead: the room refuses, roomctl says why and writes nothing.
        other = tmp_path / "other.png"
        code, _, err = await _roomctl(
            agent_env,
            "snapshot",
            *common,
            "--customer-key",
            str(fleet),
            "--out",
            str(other),
        )
        assert code == 1
        assert "needs_customer" in err
        assert not other.exists()


async def test_snapshot_during_running_media_comes_from_the_pipelines_camera_and_obeys_its_shutter() -> None:
    """The pipeline holds the camera (a second open would fail busy): the frame comes from its capture
    loop. While idle with shutter_when_idle the pipeline closed the shutter: refused, no picture."""
    from agent.media.key_source import KeySource
    from agent.media.pipeline import MediaPipeline, StreamSettings
    from agent.media.sink import RtpSink
    from agent.privacy.errors import InterventionError
    from agent.privacy.snapshot import take_snapshot
    from agent.schema.policy import PolicyBody
    from hal.codecs import PyAvEncoderFactory
    from tests.plane import Beat

    requester = HpkeIdentity.generate()
    args = {"camera": "cam0", "recipient": {"kem": "x25519", "public_key": requester.public_keys()["x25519"]}}
    policy = PolicyBody.model_validate(
        Plane().policy(camera={"shutter_when_idle": False, "remote_snapshot": True, "remote_ptz": True})
    )
    for shutter_when_idle in (False, True):
        inventory = SimInventory([CameraSpec(id="cam0", width=320, height=180, fps=30)])
        sink = RtpSink("127.0.0.1", 9)  # no meeting key: nothing is ever sent
        pipeline = MediaPipeline(
            camera_id="cam0",
            inventory=inventory,
            encoders=PyAvEncoderFactory(),
            keys=KeySource(),
            sink=sink,
            settings=StreamSettings(width=320, height=180, fps=30, bitrate_kbps=300, keyframe_interval=30),
            shutter_when_idle=shutter_when_idle,
        )
        source = InventoryFrameSource(inventory, lambda p=pipeline: [p])  # type: ignore[misc]
        task = asyncio.create_task(pipeline.run(Beat()), name="test.pipeline")
        try:
            await asyncio.sleep(0.4)  # the pipeline opened the camera (and closed the shutter if idle)
            assert inventory.device("cam0").in_use
            if shutter_when_idle:
                with pytest.raises(InterventionError) as refused:
                    await take_snapshot(
                        source, args, device="room-101", doc_version=7, payload_sha256="ab", policy=policy
                    )
                assert refused.value.reason == "shutter_closed"
            else:
                snap = await take_snapshot(
                    source, args, device="room-101", doc_version=7, payload_sha256="ab", policy=policy
                )
                png = requester.open_sealed(
                    "x25519", base64.b64decode(snap.fields["sealed"]), snapshot_info("room-101", 7, "ab")
                )
                assert read_stamp(decode_png(png)) is not None
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            sink.close()
