"""Property: whatever arrives on a device topic ends as a typed rejection (acked, or counted when
nobody is accountable for it), never as an exception, and the device still applies a valid document.

Structure-aware generators (hypothesis): arbitrary recursive JSON, nesting far past the limit (in the
envelope and inside its base64 payload), huge arrays, invalid UTF-8, envelopes whose signatures name
the real fleet key id. The path under test is ``ControlService.handle``, which the MQTT link calls
with each message's topic and payload bytes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.control.service import ControlService
from agent.control.standalone import FileApplyTarget
from tests.plane import PREFIX, Plane, device_config, kid

KINDS = ("policy", "config", "command", "keys", "root")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=8) | st.dictionaries(st.text(max_size=8), children, max_size=8)
    ),
    max_leaves=60,
)


@st.composite
def hostile(draw: st.DrawFn, fleet_keyid: str) -> bytes:
    shape = draw(st.sampled_from(["json", "deep", "deep_payload", "huge_array", "utf8", "envelope"]))
    if shape == "json":
        return json.dumps(draw(json_values)).encode()
    if shape == "deep":
        depth = draw(st.integers(30, 5000))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        return opener * depth + b"0" + closer * depth
    if shape == "deep_payload":
        depth = draw(st.integers(30, 3000))
        payload = b"[" * depth + b"]" * depth
        env = {"payload": base64.b64encode(payload).decode(), "payloadType": "x", "signatures": []}
        return json.dumps(env).encode()
    if shape == "huge_array":
        n = draw(st.integers(1000, 30000))
        return b'{"payload":"e30=","payloadType":"x","signatures":[' + b"0," * n + b"0]}"
    if shape == "utf8":
        junk = draw(st.binary(min_size=1, max_size=64)) + b"\xff\xfe\xc3\x28"
        return b'{"payload":"' + junk + b'","payloadType":"x","signatures":[]}'
    payload = json.dumps(draw(json_values)).encode()
    n = draw(st.integers(0, 400))
    sig = base64.b64encode(draw(st.binary(min_size=0, max_size=80))).decode()
    env = {
        "payload": base64.b64encode(payload).decode(),
        "payloadType": draw(st.sampled_from([f"application/vnd.roomagent.{k}+json" for k in KINDS])),
        "signatures": [{"keyid": fleet_keyid, "sig": sig}] * n,
    }
    return json.dumps(env).encode()


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> tuple[ControlService, Plane]:
    tmp: Path = tmp_path_factory.mktemp("fuzz-path")
    plane = Plane()
    root = tmp / "root.json"
    root.write_bytes(plane.root())
    config = device_config(tmp / "state", root, None)
    return ControlService(config, FileApplyTarget(tmp / "state" / "running")), plane


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_any_message_ends_as_a_typed_rejection(
    device: tuple[ControlService, Plane], kind: str, data: st.DataObject
) -> None:
    service, plane = device
    raw = data.draw(hostile(kid(plane.fleet)))
    topic = f"{PREFIX}/devices/room-101/{'cmd' if kind == 'command' else kind}"
    acks = len(service.acks)
    counted = sum(c.count for c in service.rejections.counters.values())

    asyncio.run(service.handle(kind, raw, topic))

    assert service.unexpected_errors == 0, "an exception reached the message boundary"
    after = sum(c.count for c in service.rejections.counters.values())
    if len(service.acks) > acks:
        ack: Any = service.acks[-1][0]
        assert ack.status == "rejected"
        assert ack.reason in ("malformed", "too_large", "wrong_type", "bad_signature")
    else:
        assert after == counted + 1, "neither acked nor counted"


async def test_after_the_garbage_a_valid_document_is_applied(device: tuple[ControlService, Plane]) -> None:
    service, plane = device
    raw = plane.sign("config", {"encoder": {"bitrate_kbps": 1500}}, version=7)

    class _Beat:
        def beat(self) -> None:
            pass

    task = asyncio.create_task(service.run(_Beat()))
    try:
        while service._tg is None:  # noqa: ASYNC110 - run() sets it up first thing
            await asyncio.sleep(0.01)
        await service.handle("config", raw, f"{PREFIX}/devices/room-101/desired/config")
        async with asyncio.timeout(20):
            while not service.acks or service.acks[-1][0].doc_version != 7:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert service.acks[-1][0].status == "applied"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_crash_inside_an_apply_task_is_acked_and_the_service_keeps_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plane = Plane()
    root = tmp_path / "root.json"
    root.write_bytes(plane.root())
    service = ControlService(device_config(tmp_path / "state", root, None), FileApplyTarget(tmp_path / "run"))

    async def keyframe(name: str, args: Any, doc: Any) -> str:
        return "ok"

    service.commands.register("keyframe", keyframe)

    class _Beat:
        def beat(self) -> None:
            pass

    task = asyncio.create_task(service.run(_Beat()))
    try:
        while service._tg is None:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        # Fault injected into a real object: recording the outcome blows up with a foreign error.
        monkeypatch.setattr(service.state, "record", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
        await service.handle("command", plane.sign("command", {"name": "keyframe", "args": {}}, version=1))
        async with asyncio.timeout(10):
            while not service.acks:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        ack = service.acks[-1][0]
        assert (ack.status, ack.reason, ack.message) == ("rolled_back", "apply_failed", "RuntimeError")
        assert not task.done(), "the control service died with its apply task"
        monkeypatch.undo()
        await service.handle("command", plane.sign("command", {"name": "keyframe", "args": {}}, version=2))
        async with asyncio.timeout(10):
            while service.acks[-1][0].doc_version != 2:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert service.acks[-1][0].status == "applied"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
