"""Fuzz target: the document verifier ``agent.control.verify.verify_document`` (pure: bytes in, verdict out).

Any byte string on any topic kind must give a :class:`~agent.control.verify.VerifiedDocument` or
:class:`~agent.control.errors.Rejected` with a reason code; anything else escaping (a KeyError deep in
the body rules, a TypeError on an odd JSON type, a RecursionError) is a bug. The clock is fixed (the
verifier never reads time itself), so a crash reproduces exactly.

The first input byte picks the topic kind and the mode:

- raw mode: the rest is the whole envelope, as an attacker on the broker would send it (exercises the
  size cap, the strict envelope/JSON parsers and the signature gate);
- signed mode: the rest is the *payload*, which the target wraps in an envelope signed by the fleet
  key (and the customer key when bit 6 is set). A legitimate signature on hostile content is the
  malicious-insider / stolen-key case and drives the fuzzer past the signature gate into the version,
  freeze, target, body and who-may-sign-what rules.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import guarded, instrumented, run, unavailable

with instrumented():
    try:
        from agent.control.errors import Rejected
        from agent.control.verify import VerifyContext, verify_document, verify_initial_root
        from agent.fleet.sim import FleetKeys
        from agent.schema.policy import PolicyBody
    except ModuleNotFoundError as exc:  # pragma: no cover - only while branches land
        unavailable(f"{exc.name} is not built on this branch")

KINDS = ("policy", "config", "command", "keys", "root", "ack", "")
NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
KEYS = FleetKeys.generate(seed=b"roomagent-fuzz-verify")
ROOT = verify_initial_root(KEYS.root_envelope(now=NOW))
CTX = VerifyContext(
    device_id="room-101",
    groups=("hq", "floor-3"),
    now=NOW,
    last_versions={"root": 1, "policy": 3, "config": 2, "command": 10},
    policy=PolicyBody(jurisdiction="DE"),
)
_SIGNED = 0x80
_WITH_CUSTOMER = 0x40


def _mode(kind: str, *, signed: bool, customer: bool = False) -> bytes:
    return bytes([KINDS.index(kind) | (_SIGNED if signed else 0) | (_WITH_CUSTOMER if customer else 0)])


def _payload(kind: str, version: int, body: object) -> dict[str, object]:
    return FleetKeys.payload(kind, version, body, now=NOW, groups=("hq",), devices=("room-101",))


def _seeds() -> list[bytes]:
    policy = PolicyBody(jurisdiction="DE").model_dump(mode="json")
    weaker = dict(policy, camera=dict(policy["camera"], remote_snapshot=True))
    docs = [
        ("policy", _payload("policy", 4, policy), False),
        ("policy", _payload("policy", 5, weaker), True),
        (
            "config",
            _payload("config", 3, {"encoder": {"bitrate_kbps": 1800}, "log": {"level": "debug"}}),
            False,
        ),
        ("command", _payload("command", 11, {"name": "ptz", "args": {"pan": 10.5, "zoom": 2}}), False),
        (
            "command",
            _payload(
                "command",
                12,
                {
                    "name": "lock",
                    "args": {"lawful_order": {"issuer": "court", "id": "1", "jurisdiction": "DE"}},
                },
            ),
            True,
        ),
        ("keys", _payload("keys", 1, {"meeting": "m", "epoch": 1}), True),
    ]
    seeds: list[bytes] = []
    for kind, payload, customer in docs:
        body = json.dumps(payload, separators=(",", ":")).encode()
        seeds.append(_mode(kind, signed=True, customer=customer) + body)
        signers = (KEYS.fleet, KEYS.customer) if customer else (KEYS.fleet,)
        seeds.append(_mode(kind, signed=False) + KEYS.sign(kind, payload, *signers))
    seeds.append(_mode("root", signed=False) + KEYS.root_envelope(version=2, now=NOW))
    seeds.append(_mode("policy", signed=False) + b'{"payload":"e30=","payloadType":"x","signatures":[]}')
    return seeds


SEEDS = _seeds()


@guarded(Rejected)
def TestOneInput(data: bytes) -> None:
    if not data:
        return
    selector, rest = data[0], data[1:]
    kind = KINDS[(selector & 0x3F) % len(KINDS)]
    if selector & _SIGNED:
        signers = (KEYS.fleet, KEYS.customer) if selector & _WITH_CUSTOMER else (KEYS.fleet,)
        try:
            payload = json.loads(rest)
        except (ValueError, RecursionError):
            payload = None
        if isinstance(payload, dict):
            raw = KEYS.sign(kind or "policy", payload, *signers)
        else:  # sign the bytes as they are: not JSON, so the verifier must reject them as malformed
            raw = _sign_raw(kind or "policy", rest, signers)
    else:
        raw = rest
    verify_document(raw, kind, ROOT, CTX)


def _sign_raw(kind: str, body: bytes, signers: tuple[object, ...]) -> bytes:
    from agent.control.documents import payload_type
    from agent.control.dsse import Envelope

    env = Envelope(payload_type(kind), body, ())
    for key in signers:
        env = env.signed_by(key)  # type: ignore[arg-type]
    return env.to_json()


if __name__ == "__main__":
    run(TestOneInput, seeds=SEEDS)
