"""Apply transactions, redelivery, supersession, lock, commands, TLS and broker restarts (real Mosquitto)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from agent.control.standalone import FileApplyTarget
from agent.control.verify import VerifiedDocument
from tests.broker import Broker, TlsBroker
from tests.nats_cluster import BrokerTarget
from tests.plane import Plane, device_config, start_device, stop_device

pytestmark = pytest.mark.broker


class FaultyTarget(FileApplyTarget):
    """The real file target with switchable faults (a mock only to inject the fault)."""

    def __init__(self, directory: Path, **kw: Any) -> None:
        super().__init__(directory, **kw)
        self.fail_bitrate: int | None = None
        self.unhealthy = False
        self.applies: list[tuple[str, dict[str, Any]]] = []

    async def apply(self, kind: str, body: BaseModel) -> None:
        dumped = body.model_dump(mode="json")
        self.applies.append((kind, dumped))
        await super().apply(kind, body)
        if (
            self.fail_bitrate is not None
            and (dumped.get("encoder") or {}).get("bitrate_kbps") == self.fail_bitrate
        ):
            raise RuntimeError("encoder refused the bitrate")

    async def healthy(self, timeout_s: float) -> bool:
        return not self.unhealthy


def running(tmp_path: Path, kind: str = "config") -> dict[str, Any]:
    return json.loads((tmp_path / "state" / "running" / f"{kind}.json").read_text())


def cfg(plane: Plane, tmp_path: Path, url: str, **kw: Any) -> Any:
    root = tmp_path / "root.json"
    if not root.exists():
        root.write_bytes(plane.root())
    return device_config(tmp_path / "state", root, url, **kw)


def cfg_on(plane: Plane, tmp_path: Path, target: BrokerTarget, **kw: Any) -> Any:
    """The device config for ``target``: its endpoints and protocol, a topic prefix of its own (a
    shared cluster keeps other tests' retained documents and sessions)."""
    prefix = f"t{uuid.uuid4().hex[:12]}/v1"
    mqtt = {"urls": list(target.urls), "protocol": target.protocol, "prefix": prefix}
    root = tmp_path / "root.json"
    if not root.exists():
        root.write_bytes(plane.root())
    return device_config(tmp_path / "state", root, None, mqtt=mqtt, **kw)


async def start_on(plane: Plane, tmp_path: Path, target: BrokerTarget, dev_target: Any) -> Any:
    return await start_device(
        cfg_on(plane, tmp_path, target), dev_target, target.host, target.port, online_s=45.0
    )


def bitrate(plane: Plane, kbps: int, **kw: Any) -> bytes:
    return plane.sign("config", {"encoder": {"bitrate_kbps": kbps}}, **kw)


async def test_apply_failure_rolls_back_to_last_known_good(
    broker_target: BrokerTarget, tmp_path: Path
) -> None:
    plane = Plane()
    target = FaultyTarget(tmp_path / "state" / "running")
    dev = await start_on(plane, tmp_path, broker_target, target)
    try:
        assert (await dev.plane.push("config", bitrate(plane, 1500)))["status"] == "applied"
        target.fail_bitrate = 666
        ack = await dev.plane.push("config", bitrate(plane, 666))
        assert (ack["status"], ack["reason"]) == ("rolled_back", "apply_failed")
        assert running(tmp_path)["encoder"]["bitrate_kbps"] == 1500  # last-known-good runs again
        target.unhealthy = True
        ack = await dev.plane.push("config", bitrate(plane, 900))
        assert (ack["status"], ack["reason"]) == ("rolled_back", "health_check_failed")
        assert running(tmp_path)["encoder"]["bitrate_kbps"] == 1500
        assert dev.service.state.applied_versions()["config"] == 1
        events = [json.loads(x)["event"] for x in dev.service.audit.path.read_bytes().splitlines()]
        assert events.count("rolled_back") == 2
        # The spent version cannot be replayed to churn the room.
        target.unhealthy = False
        again = await dev.plane.push("config", bitrate(plane, 1000, version=3))
        assert again["reason"] == "rollback"
        state = await dev.plane.wait_for(lambda s: s.get("applied", {}).get("config") == 1 and "online" in s)
        assert state["online"] is True
    finally:
        await stop_device(dev)


async def test_redelivery_is_acked_again_not_reapplied(broker_target: BrokerTarget, tmp_path: Path) -> None:
    plane = Plane()
    target = FaultyTarget(tmp_path / "state" / "running")
    dev = await start_on(plane, tmp_path, broker_target, target)
    try:
        raw = bitrate(plane, 1500)
        first = await dev.plane.push("config", raw)
        second = await dev.plane.push("config", raw)  # a QoS 1 duplicate / retained replay
        assert first["status"] == second["status"] == "applied"
        assert first["payload_sha256"] == second["payload_sha256"]
        assert [k for k, _ in target.applies] == ["config"]
        audit = [json.loads(x)["event"] for x in dev.service.audit.path.read_bytes().splitlines()]
        assert audit == ["accepted", "applied"]
    finally:
        await stop_device(dev)


async def test_newer_version_supersedes_apply_in_progress(mosquitto: Broker, tmp_path: Path) -> None:
    plane = Plane()
    target = FaultyTarget(tmp_path / "state" / "running", apply_delay_s=1.0)
    dev = await start_device(cfg(plane, tmp_path, mosquitto.url), target, mosquitto.host, mosquitto.port)
    try:
        await dev.plane.client.publish(dev.plane.topic("config"), bitrate(plane, 1100), qos=1, retain=True)
        await asyncio.sleep(0.3)
        await dev.plane.client.publish(dev.plane.topic("config"), bitrate(plane, 1200), qos=1, retain=True)
        ack2 = await dev.plane.wait_for(lambda a: a.get("doc_version") == 2 and a.get("kind") == "ack")
        acks = {a["doc_version"]: a for a in dev.plane.acks}
        assert acks[1]["status"] == "superseded"
        assert (ack2["status"], ack2["doc_version"]) == ("applied", 2)
        assert running(tmp_path)["encoder"]["bitrate_kbps"] == 1200
        # An older version arriving during an apply does not supersede it.
        target.apply_delay_s = 0.5
        await dev.plane.client.publish(dev.plane.topic("config"), bitrate(plane, 1400, version=5), qos=1)
        await asyncio.sleep(0.2)
        older = await dev.plane.push("config", bitrate(plane, 1300, version=4), retain=False)
        assert (older["status"], older["reason"]) == ("rejected", "rollback")
        v5 = await dev.plane.wait_for(lambda a: a.get("doc_version") == 5 and a.get("kind") == "ack")
        assert v5["status"] == "applied"
    finally:
        await stop_device(dev)


async def test_locked_device_refuses_media_documents(mosquitto: Broker, tmp_path: Path) -> None:
    plane = Plane()
    dev = await start_device(
        cfg(plane, tmp_path, mosquitto.url),
        FileApplyTarget(tmp_path / "state" / "running"),
        mosquitto.host,
        mosquitto.port,
    )
    try:
        dev.service.lock_state = lambda: True
        ack = await dev.plane.push("config", bitrate(plane, 1500))
        assert (ack["status"], ack["reason"]) == ("rejected", "locked")
        ack = await dev.plane.push("command", plane.sign("command", {"name": "keyframe", "args": {}}))
        assert ack["reason"] == "locked"
        # Privacy tightening still goes through while locked.
        ack = await dev.plane.push(
            "policy", plane.sign("policy", plane.policy(jurisdiction=None, telemetry__level="none"))
        )
        assert ack["status"] == "applied"
    finally:
        await stop_device(dev)


async def test_commands_reach_their_handlers_with_the_right_signers(
    mosquitto: Broker, tmp_path: Path
) -> None:
    plane = Plane()
    dev = await start_device(
        cfg(plane, tmp_path, mosquitto.url),
        FileApplyTarget(tmp_path / "state" / "running"),
        mosquitto.host,
        mosquitto.port,
    )
    calls: list[tuple[str, dict[str, Any], frozenset[str]]] = []

    async def handler(name: str, args: Mapping[str, Any], doc: VerifiedDocument) -> str:
        calls.append((name, dict(args), doc.roles))
        return f"{name} done"

    for name in ("keyframe", "ptz_preset", "snapshot", "lock"):
        dev.service.commands.register(name, handler)
    try:
        # Jurisdiction comes from the policy: set it first.
        assert (
            await dev.plane.push(
                "policy", plane.sign("policy", plane.policy(), signers=[plane.fleet, plane.customer])
            )
        )["status"] == "applied"
        keyframe = plane.sign("command", {"name": "keyframe", "args": {}})
        ack = await dev.plane.push("command", keyframe)
        assert (ack["status"], ack["message"]) == ("applied", "keyframe done")
        again = await dev.plane.push("command", keyframe)  # a QoS 1 duplicate: acked again, not re-run
        assert (again["status"], again["message"]) == ("applied", "keyframe done")
        snap = {"name": "snapshot", "args": {"recipient": {"kem": "x25519", "public_key": "A" * 43 + "="}}}
        ack = await dev.plane.push("command", plane.sign("command", snap))
        assert ack["reason"] == "needs_customer"
        ack = await dev.plane.push("command", plane.sign("command", snap, [plane.customer]))
        assert ack["status"] == "applied"
        order = {"issuer": "Amtsgericht Berlin", "id": "4711", "jurisdiction": "DE"}
        ack = await dev.plane.push(
            "command", plane.sign("command", {"name": "lock", "args": {"lawful_order": order}}, [plane.legal])
        )
        assert ack["status"] == "applied"
        ack = await dev.plane.push(
            "command", plane.sign("command", {"name": "unlock", "args": {}}, [plane.customer])
        )
        assert (ack["status"], ack["reason"]) == ("rolled_back", "apply_failed")  # no unlock handler here
        ack = await dev.plane.push("keys", plane.sign("keys", {"meeting": "m1"}, [plane.fleet]))
        assert ack["status"] == "rejected"
        assert ack["reason"] in {"needs_customer", "invalid_body"}
        assert [c[0] for c in calls] == ["keyframe", "snapshot", "lock"]
    finally:
        await stop_device(dev)


async def test_group_documents_apply_and_broker_restart_converges(mosquitto: Broker, tmp_path: Path) -> None:
    plane = Plane()
    dev = await start_device(
        cfg(plane, tmp_path, mosquitto.url),
        FileApplyTarget(tmp_path / "state" / "running"),
        mosquitto.host,
        mosquitto.port,
    )
    try:
        ack = await dev.plane.push("config", bitrate(plane, 1500, devices=[], groups=["hq"]), group="hq")
        assert ack["status"] == "applied"
        connections = dev.service.link.connections if dev.service.link else 0
        mosquitto.stop()
        await asyncio.sleep(0.3)
        mosquitto.start()
        # The plane reconnects too (a new client); the device reconnects on its own with backoff.
        await stop_device(dev)
        dev2 = await start_device(
            cfg(plane, tmp_path, mosquitto.url),
            FileApplyTarget(tmp_path / "state" / "running"),
            mosquitto.host,
            mosquitto.port,
        )
        dev = dev2
        ack = await dev.plane.push("config", bitrate(plane, 1700, devices=[], groups=["hq"]), group="hq")
        assert ack["status"] == "applied"
        assert running(tmp_path)["encoder"]["bitrate_kbps"] == 1700
        assert connections >= 1
    finally:
        await stop_device(dev)


async def test_device_reconnects_after_broker_restart_and_gets_queued_document(
    mosquitto: Broker, tmp_path: Path
) -> None:
    import aiomqtt

    plane = Plane()
    dev = await start_device(
        cfg(plane, tmp_path, mosquitto.url),
        FileApplyTarget(tmp_path / "state" / "running"),
        mosquitto.host,
        mosquitto.port,
    )
    link = dev.service.link
    assert link is not None
    try:
        mosquitto.stop()
        await asyncio.sleep(0.2)
        mosquitto.start()
        # A document published while the device is still reconnecting (persistent session + retained).
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5) as c:
            await c.publish(dev.plane.topic("config"), bitrate(plane, 1900), qos=1, retain=True)
        async with asyncio.timeout(10):
            applied = tmp_path / "state" / "running" / "config.json"
            while link.connections < 2 or not applied.exists():  # noqa: ASYNC110 - polls a file
                await asyncio.sleep(0.05)
        assert running(tmp_path)["encoder"]["bitrate_kbps"] == 1900
        assert dev.alive()
    finally:
        await stop_device(dev)


async def test_mqtts_with_client_certificate(mosquitto_tls: TlsBroker, tmp_path: Path) -> None:
    import ssl

    import aiomqtt

    plane = Plane()
    dc = mosquitto_tls.client("room-101")
    config = cfg(
        plane, tmp_path, mosquitto_tls.url, mqtt={"ca": str(dc.ca), "cert": str(dc.cert), "key": str(dc.key)}
    )
    pc = mosquitto_tls.client("plane")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pc.ca))
    ctx.load_cert_chain(str(pc.cert), str(pc.key))
    from agent.control.service import ControlService
    from tests.plane import Beat, PlaneClient

    service = ControlService(config, FileApplyTarget(tmp_path / "state" / "running"))
    async with aiomqtt.Client(
        mosquitto_tls.host,
        mosquitto_tls.port,
        tls_context=ctx,
        identifier="plane",
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:
        pcl = PlaneClient(client)
        listener = asyncio.create_task(pcl.listen())
        task = asyncio.create_task(service.run(Beat()))
        try:
            await pcl.wait_for(lambda s: s.get("online") is True)
            ack = await pcl.push("config", bitrate(plane, 1500))
            assert ack["status"] == "applied"
        finally:
            for t in (task, listener):
                t.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await t


async def test_rotated_root_survives_restart(mosquitto: Broker, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    plane = Plane()
    config = cfg(plane, tmp_path, mosquitto.url)
    target = FileApplyTarget(tmp_path / "state" / "running")
    dev = await start_device(config, target, mosquitto.host, mosquitto.port)
    old_fleet = plane.fleet
    try:
        plane.fleet = ed25519.Ed25519PrivateKey.generate()
        assert (await dev.plane.push("root", plane.root()))["status"] == "applied"
    finally:
        await stop_device(dev)
    dev = await start_device(config, target, mosquitto.host, mosquitto.port)
    try:
        assert dev.service.trust.version == 2  # persisted, not the image's root v1
        ack = await dev.plane.push(
            "config",
            bitrate(plane, 1500, version=2),
        )
        assert ack["status"] == "applied"
        ack = await dev.plane.push("config", bitrate(plane, 1600, version=3, signers=[old_fleet]))
        assert ack["reason"] == "bad_signature"
    finally:
        await stop_device(dev)


async def test_persistent_session_delivers_command_sent_while_offline(
    broker_target: BrokerTarget, tmp_path: Path
) -> None:
    import aiomqtt

    plane = Plane()
    config = cfg_on(plane, tmp_path, broker_target)
    target = FileApplyTarget(tmp_path / "state" / "running")
    calls: list[str] = []

    async def handler(name: str, args: Mapping[str, Any], doc: VerifiedDocument) -> str:
        calls.append(name)
        return "ok"

    dev = await start_device(config, target, broker_target.host, broker_target.port, online_s=45.0)
    await stop_device(dev)  # the session (subscriptions, QoS 1 queue) stays on the broker
    version = aiomqtt.ProtocolVersion.V5 if broker_target.protocol == "5" else aiomqtt.ProtocolVersion.V311
    async with aiomqtt.Client(broker_target.host, broker_target.port, protocol=version, timeout=30) as c:
        await c.publish(
            f"{config.mqtt.prefix}/devices/room-101/cmd",
            plane.sign("command", {"name": "keyframe", "args": {}}),
            qos=1,
            retain=False,
        )
    from agent.control.service import ControlService
    from tests.plane import Beat

    service = ControlService(config, target)
    service.commands.register("keyframe", handler)
    task = asyncio.create_task(service.run(Beat()))
    try:
        async with asyncio.timeout(30):
            while not calls:  # noqa: ASYNC110 - the handler list is filled by the service
                await asyncio.sleep(0.02)
        assert calls == ["keyframe"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
