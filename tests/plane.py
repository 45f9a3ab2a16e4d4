"""A management-plane simulator (like python-tuf's RepositorySimulator): keys for every role, a
root chain, and helpers that make and sign documents. Tests change one thing, then expect the
device's specific reason code.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from agent.control.documents import payload_type
from agent.control.dsse import Envelope
from agent.control.signing_keys import PrivateKey, key_dict, keyid_of

PREFIX = "roomagent/v1"


def ts(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def kid(key: PrivateKey) -> str:
    return keyid_of(key_dict(key.public_key()))


@dataclass
class Plane:
    """Role keys (two root keys, threshold 2 for root; one key each for the other roles)."""

    root_keys: list[PrivateKey] = field(
        default_factory=lambda: [
            ed25519.Ed25519PrivateKey.generate(),
            ec.generate_private_key(ec.SECP256R1()),
        ]
    )
    fleet: PrivateKey = field(default_factory=ed25519.Ed25519PrivateKey.generate)
    customer: PrivateKey = field(default_factory=ed25519.Ed25519PrivateKey.generate)
    legal: PrivateKey = field(default_factory=ed25519.Ed25519PrivateKey.generate)
    root_threshold: int = 2
    fleet_threshold: int = 1
    extra_fleet: list[PrivateKey] = field(default_factory=list)
    root_version: int = 0
    versions: dict[str, int] = field(default_factory=dict)
    # The firmware log key; None leaves the optional ``transparency`` role out (an older root).
    transparency: ed25519.Ed25519PrivateKey | None = None

    def root_body(self) -> dict[str, Any]:
        fleet_keys = [self.fleet, *self.extra_fleet]
        all_keys = [*self.root_keys, *fleet_keys, self.customer, self.legal]
        if self.transparency is not None:
            all_keys.append(self.transparency)
        body: dict[str, Any] = {
            "keys": {kid(k): key_dict(k.public_key()) for k in all_keys},
            "roles": {
                "root": {"keyids": [kid(k) for k in self.root_keys], "threshold": self.root_threshold},
                "fleet": {"keyids": [kid(k) for k in fleet_keys], "threshold": self.fleet_threshold},
                "customer": {"keyids": [kid(self.customer)], "threshold": 1},
                "legal": {"keyids": [kid(self.legal)], "threshold": 1},
            },
        }
        if self.transparency is not None:
            body["roles"]["transparency"] = {"keyids": [kid(self.transparency)], "threshold": 1}
        return body

    def payload(
        self,
        kind: str,
        body: Any,
        *,
        version: int | None = None,
        devices: list[str] | None = None,
        groups: list[str] | None = None,
        issued_at: dt.datetime | None = None,
        expires: dt.datetime | None = None,
    ) -> dict[str, Any]:
        if version is None:
            version = self.versions.get(kind, 0) + 1
        self.versions[kind] = max(version, self.versions.get(kind, 0))
        out: dict[str, Any] = {
            "kind": kind,
            "version": version,
            "issued_at": ts(issued_at or now() - dt.timedelta(seconds=5)),
            "expires": ts(expires or now() + dt.timedelta(days=30)),
            "targets": {"devices": devices if devices is not None else ["room-101"], "groups": groups or []},
            "body": body,
        }
        if kind == "root":
            del out["targets"]
        return out

    def envelope(
        self,
        kind: str,
        payload: dict[str, Any] | bytes,
        signers: list[PrivateKey],
        *,
        ptype: str | None = None,
    ) -> Envelope:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        env = Envelope(ptype or payload_type(kind), data, ())
        for key in signers:
            env = env.signed_by(key)
        return env

    def sign(self, kind: str, body: Any, signers: list[PrivateKey] | None = None, **kw: Any) -> bytes:
        """A complete, valid envelope (fleet-signed by default) as bytes."""
        chosen = signers if signers is not None else [self.fleet, *self.extra_fleet]
        return self.envelope(kind, self.payload(kind, body, **kw), chosen).to_json()

    def root(self, signers: list[PrivateKey] | None = None, **kw: Any) -> bytes:
        """The next root version, signed by the current root keys (or ``signers``)."""
        self.root_version += 1
        payload = self.payload("root", self.root_body(), version=self.root_version, **kw)
        return self.envelope(
            "root", payload, signers if signers is not None else list(self.root_keys)
        ).to_json()

    def policy(self, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "e2ee": {"required": True, "suites": [4, 5], "kem": "x25519"},
            "camera": {"shutter_when_idle": True, "remote_snapshot": False, "remote_ptz": True},
            "telemetry": {"level": "minimal", "fields": []},
            "jurisdiction": "DE",
        }
        for path, value in fields.items():
            section, _, key = path.partition("__")
            if key:
                body[section][key] = value
            else:
                body[section] = value
        return body


class PlaneClient:
    """The management plane on MQTT: publishes documents, collects the device's signed acks."""

    def __init__(self, client: Any, device: str = "room-101", prefix: str = PREFIX) -> None:
        self.client = client
        self.device = device
        self.prefix = prefix
        self.acks: list[dict[str, Any]] = []
        self.states: list[dict[str, Any]] = []
        self.audit: list[dict[str, Any]] = []
        self._new = __import__("asyncio").Event()

    async def listen(self) -> None:
        await self.client.subscribe(f"{self.prefix}/devices/+/ack", qos=1)
        await self.client.subscribe(f"{self.prefix}/devices/+/state", qos=1)
        await self.client.subscribe(f"{self.prefix}/devices/+/audit", qos=1)
        async for message in self.client.messages:
            topic = str(message.topic)
            if topic.endswith("/ack"):
                env = Envelope.parse(message.payload)
                self.acks.append({**json.loads(env.payload), "_env": env})
            elif topic.endswith("/state") and message.payload:
                self.states.append(json.loads(message.payload))
            elif topic.endswith("/audit"):
                self.audit.append(json.loads(message.payload))
            self._new.set()

    def topic(self, kind: str, group: str | None = None) -> str:
        if kind == "command":
            return f"{self.prefix}/devices/{self.device}/cmd"
        if kind == "keys":
            return f"{self.prefix}/devices/{self.device}/keys"
        if group is not None:
            return f"{self.prefix}/groups/{group}/desired/{kind}"
        return f"{self.prefix}/devices/{self.device}/desired/{kind}"

    async def wait_for(self, predicate: Any, wait_s: float = 5.0) -> Any:
        import asyncio

        async with asyncio.timeout(wait_s):
            while True:
                for item in [*self.acks, *self.states]:
                    if predicate(item):
                        return item
                self._new.clear()
                await self._new.wait()

    async def push(
        self,
        kind: str,
        raw: bytes,
        *,
        group: str | None = None,
        retain: bool | None = None,
        wait_s: float = 5.0,
    ) -> dict[str, Any]:
        """Publish and wait for the ack of this exact message (by count of acks on that kind)."""
        before = len(self.acks)
        try:
            import hashlib

            sha: str | None = hashlib.sha256(Envelope.parse(raw).payload).hexdigest()
        except ValueError:
            sha = None
        if retain is None:
            retain = kind in ("root", "policy", "config")
        await self.client.publish(self.topic(kind, group), raw, qos=1, retain=retain)
        return await self.wait_for(
            lambda a: (
                a in self.acks[before:]
                and a.get("kind") == "ack"
                and a["doc_kind"] == kind
                and (sha is None or a["payload_sha256"] in (sha, None))
            ),
            wait_s,
        )


class Beat:
    def __init__(self) -> None:
        self.beats = 0

    def beat(self) -> None:
        self.beats += 1


def device_config(
    state_dir: Any,
    root_path: Any,
    url: str | None,
    *,
    device: str = "room-101",
    groups: list[str] | None = None,
    mqtt: dict[str, Any] | None = None,
    control: dict[str, Any] | None = None,
) -> Any:
    from agent.config import parse_config

    data: dict[str, Any] = {
        "device": {"id": device, "groups": groups if groups is not None else ["hq"]},
        "trust": {"root": str(root_path)},
        "state": {"dir": str(state_dir)},
        "control": control or {"health_timeout_s": 2.0},
    }
    if url is not None:
        data["mqtt"] = {"url": url, **(mqtt or {})}
    elif mqtt:
        data["mqtt"] = mqtt  # e.g. urls + protocol of a cluster
    return parse_config(data)


class RunningDevice:
    """A ControlService running in this event loop against a broker, plus a plane client."""

    def __init__(
        self, service: Any, task: Any, plane_client: PlaneClient, listener: Any, client_cm: Any
    ) -> None:
        self.service = service
        self.task = task
        self.plane = plane_client
        self._listener = listener
        self._client_cm = client_cm

    def alive(self) -> bool:
        return not self.task.done()


async def start_device(
    config: Any, target: Any, host: str, port: int, *, device: str = "room-101", online_s: float = 5.0
) -> RunningDevice:
    """The control service of ``config`` in this loop, and a plane client on ``host:port`` speaking
    the device's MQTT protocol under its topic prefix."""
    import asyncio

    import aiomqtt

    from agent.control.service import ControlService

    service = ControlService(config, target)
    v5 = config.mqtt.protocol == "5"
    client_cm = aiomqtt.Client(
        host,
        port,
        identifier=f"plane-{device}-{id(service)}",
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        timeout=30,
    )
    client = await client_cm.__aenter__()
    pc = PlaneClient(client, device, config.mqtt.prefix)
    listener = asyncio.create_task(pc.listen(), name="plane.listen")
    task = asyncio.create_task(service.run(Beat()), name="control.service")
    await pc.wait_for(lambda s: s.get("device") == device and s.get("online") is True, online_s)
    return RunningDevice(service, task, pc, listener, client_cm)


async def stop_device(dev: RunningDevice) -> None:
    import asyncio
    import contextlib

    for task in (dev.task, dev._listener):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    with contextlib.suppress(Exception):
        await dev._client_cm.__aexit__(None, None, None)
