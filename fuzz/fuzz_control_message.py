"""Fuzz target: the whole device path from an MQTT payload to its ack (``ControlService.handle``).

A real :class:`~agent.control.service.ControlService` (offline: acks are kept in ``service.acks``
instead of published) gets every input on one of its topics. Whatever the bytes, the message must end
as an ack with a reason code or as a counted unauthenticated rejection, and nothing may reach the
boundary's catch-all (``service.unexpected_errors``): that would be an exception no rule names.

Structure-aware: the first byte picks the topic, the second how the rest is shaped before sending:
raw bytes; nested ``depth`` levels deep (arrays/objects, inside or outside the payload); a huge
array; an envelope carrying the rest as its payload (signature naming the fleet key id); the rest
with invalid UTF-8 spliced in.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import structlog
from _harness import instrumented, run, unavailable, workdir

with instrumented():
    try:
        from agent.config import parse_config
        from agent.control.signing_keys import key_dict, keyid_of
        from agent.control.service import ControlService
        from agent.control.standalone import FileApplyTarget
        from agent.fleet.sim import FleetKeys
    except ModuleNotFoundError as exc:  # pragma: no cover - only while branches land
        unavailable(f"{exc.name} is not built on this branch")

NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
KEYS = FleetKeys.generate(seed=b"roomagent-fuzz-control-message")
KINDS = ("policy", "config", "command", "keys", "root")
_STATE = Path(tempfile.mkdtemp(prefix="state-", dir=workdir()))
(_STATE / "root.json").write_bytes(KEYS.root_envelope(now=NOW))
CONFIG = parse_config(
    {
        "device": {"id": "room-101", "groups": ["hq"]},
        "trust": {"root": str(_STATE / "root.json")},
        "state": {"dir": str(_STATE)},
    }
)
SERVICE = ControlService(CONFIG, FileApplyTarget(_STATE / "running"), clock=lambda: NOW)
LOOP = asyncio.new_event_loop()
FLEET_KEYID = keyid_of(key_dict(KEYS.fleet.public_key()))
# Quiet: every rejection would otherwise print a log line; failures are assertions, not logs.
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))


def shape(mode: int, rest: bytes) -> bytes:
    """Turn fuzz bytes into one of the structures attackers send."""
    n = rest[0] if rest else 0
    if mode == 1:  # deep nesting around the rest (often past the depth limit)
        depth = n * 8
        return b"[" * depth + rest + b"]" * depth
    if mode == 2:  # deep objects as the envelope's payload field
        depth = n * 4
        return (
            b'{"payload":' + b'{"a":' * depth + b"1" + b"}" * depth + b',"payloadType":"x","signatures":[]}'
        )
    if mode == 3:  # a huge array
        return b"[" + b",".join([rest[:8] or b"0"] * (n * 64 + 1)) + b"]"
    if mode == 4:  # an envelope with the rest as payload, signature naming the real fleet key id
        env = {
            "payload": base64.b64encode(rest).decode(),
            "payloadType": "application/vnd.roomagent.policy+json",
            "signatures": [{"keyid": FLEET_KEYID, "sig": base64.b64encode(rest[:64]).decode()}] * (n % 8),
        }
        return json.dumps(env).encode()
    if mode == 5:  # invalid UTF-8 spliced into a JSON string
        return b'{"payload":"' + rest + b'\xff\xfe","payloadType":"\xc3\x28","signatures":[]}'
    return rest


def TestOneInput(data: bytes) -> None:
    if len(data) < 2:
        return
    kind = KINDS[data[0] % len(KINDS)]
    raw = shape(data[1] % 6, data[2:])
    topic = f"roomagent/v1/devices/room-101/{'cmd' if kind == 'command' else kind}"
    acks, counted = len(SERVICE.acks), sum(c.count for c in SERVICE.rejections.counters.values())
    LOOP.run_until_complete(SERVICE.handle(kind, raw, topic))
    if SERVICE.unexpected_errors:
        raise AssertionError(f"an exception reached the message boundary on {kind}: see the log")
    answered = (
        len(SERVICE.acks) > acks or sum(c.count for c in SERVICE.rejections.counters.values()) > counted
    )
    if not answered:
        raise AssertionError(f"a {kind} message was neither acked nor counted")


SEEDS = [
    bytes([0, 1, 200]) + b"[]",
    bytes([0, 2, 250]),
    bytes([2, 3, 255]) + b"1",
    bytes([1, 4, 3]) + json.dumps({"kind": "policy", "version": 10**30}).encode(),
    bytes([3, 5]) + b"x",
    # A well-formed root rotation signed by a key the device does not trust (the target stays
    # stateless: no input can be accepted, so every run starts from the same device state).
    bytes([4, 0]) + FleetKeys.generate(seed=b"stranger").root_envelope(version=2, now=NOW),
]

if __name__ == "__main__":
    run(TestOneInput, seeds=SEEDS)
