"""Pure verification: each rule of docs/design.md on its own, and DSSE interop with securesystemslib."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from securesystemslib.dsse import Envelope as SslEnvelope
from securesystemslib.signer import CryptoSigner, SSlibKey

from agent.control.documents import payload_type
from agent.control.dsse import Envelope
from agent.control.errors import Rejected
from agent.control.signing_keys import key_dict, keyid_of
from agent.control.verify import TrustedRoot, VerifyContext, verify_document, verify_initial_root
from agent.schema.policy import PolicyBody
from tests.plane import Plane, now


@pytest.fixture
def plane() -> Plane:
    return Plane()


@pytest.fixture
def root(plane: Plane) -> TrustedRoot:
    return verify_initial_root(plane.root())


def ctx(**kw: object) -> VerifyContext:
    base: dict[str, object] = {
        "device_id": "room-101",
        "groups": ("hq",),
        "now": now(),
        "policy": PolicyBody(jurisdiction="DE"),
    }
    base.update(kw)
    return VerifyContext(**base)  # type: ignore[arg-type]


def reason(raw: bytes, kind: str, root: TrustedRoot, c: VerifyContext | None = None) -> str:
    with pytest.raises(Rejected) as info:
        verify_document(raw, kind, root, c or ctx())
    return info.value.reason


def test_valid_config_passes(plane: Plane, root: TrustedRoot) -> None:
    doc = verify_document(plane.sign("config", {"encoder": {"bitrate_kbps": 1800}}), "config", root, ctx())
    assert (doc.kind, doc.version, doc.roles >= {"fleet"}) == ("config", 1, True)


def test_size_cap_checked_before_parsing(plane: Plane, root: TrustedRoot) -> None:
    assert reason(b"{" * 70_000, "config", root) == "too_large"


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b'{"payload":"e30=","payloadType":"x","signatures":[]} trailing',
        b'{"payload":NaN,"payloadType":"x","signatures":[]}',
    ],
)
def test_unreadable_envelopes_are_malformed(raw: bytes, root: TrustedRoot) -> None:
    assert reason(raw, "config", root) == "malformed"


def test_duplicate_key_in_payload_is_malformed(plane: Plane, root: TrustedRoot) -> None:
    payload = json.dumps(plane.payload("config", {})).encode()
    payload = payload[:-1] + b', "version": 99}'
    assert reason(plane.envelope("config", payload, [plane.fleet]).to_json(), "config", root) == "malformed"


def test_lawful_order_must_match_jurisdiction(plane: Plane, root: TrustedRoot) -> None:
    order = {"issuer": "Court", "id": "42", "jurisdiction": "FR"}
    raw = plane.sign("command", {"name": "lock", "args": {"lawful_order": order}}, [plane.legal])
    assert reason(raw, "command", root) == "lawful_order_mismatch"
    order["jurisdiction"] = "DE"
    raw = plane.sign("command", {"name": "lock", "args": {"lawful_order": order}}, [plane.legal])
    assert verify_document(raw, "command", root, ctx()).roles == frozenset({"legal"})
    raw = plane.sign("command", {"name": "lock", "args": {}}, [plane.legal])
    assert reason(raw, "command", root) == "needs_customer"


def test_who_may_sign_what(plane: Plane, root: TrustedRoot) -> None:
    snapshot = {"name": "snapshot", "args": {"recipient": {"kem": "x25519", "public_key": "A" * 43 + "="}}}
    assert reason(plane.sign("command", snapshot), "command", root) == "needs_customer"
    assert reason(plane.sign("keys", {}, [plane.fleet]), "keys", root) in {"needs_customer", "invalid_body"}
    weaker = plane.policy(e2ee__required=False)
    assert reason(plane.sign("policy", weaker), "policy", root) == "needs_customer"
    doc = verify_document(plane.sign("policy", weaker, [plane.fleet, plane.customer]), "policy", root, ctx())
    assert doc.roles >= {"fleet", "customer"}
    tighter = plane.policy(telemetry__level="none")
    assert verify_document(plane.sign("policy", tighter), "policy", root, ctx()).version == 3
    assert reason(plane.sign("config", {}, [plane.customer]), "config", root) == "bad_signature"


def test_securesystemslib_envelope_verifies_on_device(plane: Plane, root: TrustedRoot) -> None:
    payload = json.dumps(plane.payload("config", {"encoder": {"bitrate_kbps": 900}})).encode()
    env = SslEnvelope(payload, payload_type("config"), {})
    env.sign(CryptoSigner(plane.fleet))  # type: ignore[arg-type]
    raw = json.dumps(env.to_dict()).encode()
    assert verify_document(raw, "config", root, ctx()).version == 1


def test_device_envelope_verifies_with_securesystemslib(plane: Plane) -> None:
    ecdsa = ec.generate_private_key(ec.SECP256R1())
    for key in (plane.fleet, ecdsa):
        ours = plane.envelope("config", plane.payload("config", {}), [key])
        theirs = SslEnvelope.from_dict(json.loads(ours.to_json()))
        ssl_key = SSlibKey.from_dict(keyid_of(key_dict(key.public_key())), key_dict(key.public_key()))
        assert ssl_key.keyid == CryptoSigner(key).public_key.keyid  # type: ignore[arg-type]
        assert theirs.verify([ssl_key], 1)
        assert theirs.pae() == ours.pae()


def test_url_safe_base64_accepted(plane: Plane, root: TrustedRoot) -> None:
    env = json.loads(plane.sign("config", {}))
    env["payload"] = base64.urlsafe_b64encode(base64.b64decode(env["payload"])).decode()
    assert verify_document(json.dumps(env).encode(), "config", root, ctx()).kind == "config"


def test_initial_root_needs_its_own_threshold(plane: Plane) -> None:
    with pytest.raises(Rejected) as info:
        verify_initial_root(plane.root(signers=plane.root_keys[:1]))
    assert info.value.reason == "bad_signature"


def test_root_version_gap_and_expiry(plane: Plane, root: TrustedRoot) -> None:
    plane.root_version += 1
    assert reason(plane.root(), "root", root) == "version_gap"
    old = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    assert reason(plane.sign("config", {}, expires=old), "config", root) == "expired"
    key = ed25519.Ed25519PrivateKey.generate()
    assert reason(plane.sign("config", {}, [key]), "config", root) == "bad_signature"
    assert Envelope.parse(plane.sign("config", {})).payload_type == payload_type("config")


def test_date_only_timestamp_is_malformed_not_a_crash(plane: Plane, root: TrustedRoot) -> None:
    payload = plane.payload("config", {})
    payload["expires"] = "2099-01-01Z"  # fromisoformat would give a naive datetime
    raw = plane.envelope("config", payload, [plane.fleet]).to_json()
    assert reason(raw, "config", root) == "malformed"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.binary(max_size=512)
    | st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
        ),
        max_leaves=20,
    ).map(lambda v: json.dumps(v).encode())
)
def test_arbitrary_bytes_only_ever_reject(data: bytes, root: TrustedRoot) -> None:
    for kind in ("config", "root", "command"):
        with pytest.raises(Rejected):
            verify_document(data, kind, root, ctx())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    header=st.fixed_dictionaries(
        {},
        optional={
            "kind": st.sampled_from(["config", "policy", 1, None]),
            "version": st.one_of(st.integers(-2, 3), st.booleans(), st.text(max_size=3)),
            "issued_at": st.one_of(st.text(max_size=25), st.just("2020-01-01T00:00:00Z")),
            "expires": st.one_of(st.text(max_size=25), st.just("2099-01-01T00:00:00Z")),
            "targets": st.one_of(
                st.none(),
                st.just({"devices": ["room-101"]}),
                st.dictionaries(st.text(max_size=5), st.integers()),
            ),
            "body": st.one_of(st.none(), st.just({}), st.dictionaries(st.text(max_size=5), st.integers())),
        },
    )
)
def test_fleet_signed_hostile_payloads_never_crash(
    header: dict[str, object], plane: Plane, root: TrustedRoot
) -> None:
    raw = plane.envelope("config", json.dumps(header).encode(), [plane.fleet]).to_json()
    with contextlib.suppress(Rejected):  # any typed rejection is fine; anything else fails the test
        verify_document(raw, "config", root, ctx())


# -- cheap rejection before any signature check ---------------------------------------------------


def _count_verifies(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    from agent.control.signing_keys import PublicKey

    calls = {"n": 0}
    real = PublicKey.verify

    def counting(self: PublicKey, signature: bytes, data: bytes) -> bool:
        calls["n"] += 1
        return real(self, signature, data)

    monkeypatch.setattr(PublicKey, "verify", counting)
    return calls


def test_350_signatures_naming_the_fleet_key_cost_no_verification(
    plane: Plane, root: TrustedRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.control.dsse import Signature

    env = Envelope.parse(plane.sign("config", {}))
    flood = Envelope(
        env.payload_type,
        env.payload,
        tuple(Signature(kid, b"\x01" * 64) for kid in [env.signatures[0].keyid] * 350),
    )
    calls = _count_verifies(monkeypatch)
    assert reason(flood.to_json(), "config", root) == "malformed"
    assert calls["n"] == 0


def test_one_key_id_in_any_case_is_verified_once(
    plane: Plane, root: TrustedRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.control.dsse import Signature

    plane.extra_fleet = [ed25519.Ed25519PrivateKey.generate()]
    plane.fleet_threshold = 2
    rotated = verify_document(plane.root(), "root", root, ctx())
    assert rotated.version == 2
    from agent.control.documents import RootBody
    from agent.control.verify import trusted_root_from_body

    assert isinstance(rotated.body, RootBody)
    new_root = trusted_root_from_body(rotated.body, rotated.version, rotated.expires)
    env = Envelope.parse(plane.sign("config", {}, [plane.fleet]))
    sig = env.signatures[0]
    # The same signature under its key id in lower and upper case: one key, counted once, verified once.
    doubled = Envelope(env.payload_type, env.payload, (sig, Signature(sig.keyid.upper(), sig.sig)))
    calls = _count_verifies(monkeypatch)
    assert reason(doubled.to_json(), "config", new_root) == "bad_signature"
    assert calls["n"] == 1


def test_a_root_listing_one_key_twice_is_refused(plane: Plane, root: TrustedRoot) -> None:
    body = plane.root_body()
    lower = key_dict(plane.fleet.public_key())
    upper = {**lower, "keyval": {"public": lower["keyval"]["public"].upper()}}
    body["keys"][keyid_of(upper)] = upper
    body["roles"]["fleet"] = {"keyids": [keyid_of(lower), keyid_of(upper)], "threshold": 2}
    payload = plane.payload("root", body, version=2)
    raw = plane.envelope("root", payload, list(plane.root_keys)).to_json()
    with pytest.raises(Rejected) as info:
        verify_document(raw, "root", root, ctx())
    assert info.value.reason == "invalid_body"
    assert "same key" in info.value.message


@pytest.mark.parametrize("version", [0, 2**53, 10**3999, -1, True])
def test_versions_are_integers_in_1_to_2_pow_53_minus_1(
    plane: Plane, root: TrustedRoot, version: int
) -> None:
    text = json.dumps(plane.payload("config", {}, version=1)).replace(
        '"version": 1,', f'"version": {json.dumps(version)},'
    )
    raw = plane.envelope("config", text.encode(), [plane.fleet]).to_json()
    with pytest.raises(Rejected) as info:
        verify_document(raw, "config", root, ctx())
    assert info.value.reason == "malformed"


def test_nesting_beyond_32_is_malformed_without_recursion(root: TrustedRoot) -> None:
    import sys

    deep = b'{"payload":' + b"[" * (sys.getrecursionlimit() * 4) + b"]" * (sys.getrecursionlimit() * 4) + b"}"
    assert reason(deep, "policy", root) == "malformed"
    at_limit = b"[" * 31 + b"]" * 31
    from agent.control.dsse import strict_json

    assert strict_json(b'{"a":' + at_limit + b"}") == {"a": json.loads(at_limit)}


def test_a_rotation_to_new_root_keys_signed_by_old_and_new_keys_loads_after_a_restart(
    plane: Plane, root: TrustedRoot, tmp_path: object
) -> None:
    """The signature cap must not refuse a legitimate rotation (old + new root keys) when the
    persisted root is read back at the next start."""
    from pathlib import Path

    from agent.control.trust import TrustStore

    old_keys = list(plane.root_keys)
    plane.root_keys = [ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()]
    raw = plane.root(signers=[*old_keys, *plane.root_keys])
    assert len(Envelope.parse(raw).signatures) == 4
    doc = verify_document(raw, "root", root, ctx())
    state = Path(str(tmp_path))
    store = TrustStore(state, None)
    store.rotate(doc, raw)
    again = TrustStore(state, None)
    assert again.version == 2
