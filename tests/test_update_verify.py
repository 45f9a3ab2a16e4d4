"""The ``update`` document through the pure verifier: signatures by policy mode, the transparency
log (rule 10), firmware rollback (rule 11), and the ``updates.mode`` policy path."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.control.documents import RootBody
from agent.control.errors import Rejected
from agent.control.verify import TrustedRoot, VerifyContext, verify_document, verify_initial_root
from agent.schema.policy import Change, PolicyBody, UpdatesPolicy, classify_change, weakenings
from tests.firmware import FirmwareLog
from tests.plane import Plane, now

BUNDLE = b"firmware v2 " * 1000


@pytest.fixture
def plane() -> Plane:
    return Plane(transparency=ed25519.Ed25519PrivateKey.generate())


@pytest.fixture
def root(plane: Plane) -> TrustedRoot:
    return verify_initial_root(plane.root())


@pytest.fixture
def flog(plane: Plane, tmp_path: Path) -> FirmwareLog:
    assert plane.transparency is not None
    log = FirmwareLog(tmp_path / "log", plane.transparency)
    log.add(1, b"firmware v1")
    log.add(2, BUNDLE)
    log.add(3, b"firmware v3")
    return log


def ctx(mode: str = "automatic", firmware: int = 1) -> VerifyContext:
    policy = PolicyBody(updates=UpdatesPolicy(mode=mode))  # type: ignore[arg-type]
    return VerifyContext("room-101", ("hq",), now(), {}, policy, 64 * 1024, 300, firmware)


def reason(raw: bytes, root: TrustedRoot, c: VerifyContext) -> str:
    with pytest.raises(Rejected) as info:
        verify_document(raw, "update", root, c)
    return info.value.reason


def test_fleet_signed_update_in_the_log_passes_under_automatic(plane, root, flog) -> None:
    doc = verify_document(plane.sign("update", flog.body(2, BUNDLE)), "update", root, ctx())
    assert doc.kind == "update"
    assert doc.body.firmware_version == 2  # type: ignore[attr-defined]


def test_customer_approval_needs_both_signatures(plane, root, flog) -> None:
    body = flog.body(2, BUNDLE)
    assert reason(plane.sign("update", body), root, ctx("customer_approval")) == "needs_customer"
    assert reason(plane.sign("update", body, [plane.customer]), root, ctx("customer_approval")) == (
        "bad_signature"
    )
    both = plane.sign("update", body, [plane.fleet, plane.customer])
    assert verify_document(both, "update", root, ctx("customer_approval")).roles >= {"fleet", "customer"}


def test_pinned_refuses_every_update(plane, root, flog) -> None:
    both = plane.sign("update", flog.body(2, BUNDLE), [plane.fleet, plane.customer])
    assert reason(both, root, ctx("pinned")) == "forbidden_by_policy"


def test_default_policy_asks_for_the_customer(plane, root, flog) -> None:
    c = VerifyContext("room-101", ("hq",), now(), firmware_version=1)
    assert reason(plane.sign("update", flog.body(2, BUNDLE)), root, c) == "needs_customer"


def test_bundle_not_in_the_log_is_refused(plane, root, flog) -> None:
    body = flog.body(2, BUNDLE)
    body["sha256"] = "0" * 64  # bytes the log never saw, with a valid proof for other bytes
    assert reason(plane.sign("update", body), root, ctx()) == "not_in_log"
    body = flog.body(2, BUNDLE)
    body["length"] += 1
    assert reason(plane.sign("update", body), root, ctx()) == "not_in_log"


def test_checkpoint_signed_by_another_key_is_refused(plane, root, tmp_path) -> None:
    rogue = FirmwareLog(tmp_path / "rogue", ed25519.Ed25519PrivateKey.generate())
    rogue.add(2, BUNDLE)
    assert reason(plane.sign("update", rogue.body(2, BUNDLE)), root, ctx()) == "not_in_log"


def test_tampered_proof_or_checkpoint_is_refused(plane, root, flog) -> None:
    body = flog.body(2, BUNDLE)
    body["transparency"]["index"] = 0
    assert reason(plane.sign("update", body), root, ctx()) == "not_in_log"
    body = flog.body(2, BUNDLE)
    body["transparency"]["checkpoint"] = body["transparency"]["checkpoint"].replace("\n3\n", "\n4\n")
    assert reason(plane.sign("update", body), root, ctx()) == "not_in_log"
    body = flog.body(2, BUNDLE)
    body["transparency"]["proof"] = body["transparency"]["proof"][:-1]
    assert reason(plane.sign("update", body), root, ctx()) == "not_in_log"


def test_root_without_transparency_role_refuses_updates(tmp_path) -> None:
    old = Plane()  # a root made before firmware updates existed: still valid
    root = verify_initial_root(old.root())
    assert "transparency" not in root.roles
    log = FirmwareLog(tmp_path / "log", ed25519.Ed25519PrivateKey.generate())
    log.add(2, BUNDLE)
    assert reason(old.sign("update", log.body(2, BUNDLE)), root, ctx()) == "not_in_log"


def test_older_or_same_firmware_is_a_rollback(plane, root, flog) -> None:
    assert reason(plane.sign("update", flog.body(2, BUNDLE)), root, ctx(firmware=2)) == "rollback"
    assert reason(plane.sign("update", flog.body(1, b"firmware v1")), root, ctx(firmware=2)) == "rollback"


def test_update_body_is_strict(plane, root, flog) -> None:
    for change in (
        {"urls": ["ftp://x/y"]},
        {"urls": []},
        {"install_window": {"start": "25:00", "end": "03:00"}},
        {"install_window": {"start": "02:00", "end": "02:00"}},
        {"extra": 1},
        {"length": 0},
    ):
        assert reason(plane.sign("update", {**flog.body(2, BUNDLE), **change}), root, ctx()) == "invalid_body"


def test_transparency_keys_must_be_ed25519(plane) -> None:
    body = plane.root_body()
    fleet = body["roles"]["fleet"]["keyids"][0]
    body["roles"]["transparency"] = {"keyids": [body["roles"]["root"]["keyids"][1]], "threshold": 1}  # ECDSA
    with pytest.raises(ValueError, match="Ed25519"):
        RootBody.model_validate(body)
    body["roles"]["transparency"] = {"keyids": [fleet], "threshold": 1}
    RootBody.model_validate(body)


@pytest.mark.parametrize(
    ("old", "new", "change"),
    [
        ("pinned", "customer_approval", Change.WEAKEN),
        ("pinned", "automatic", Change.WEAKEN),
        ("customer_approval", "automatic", Change.WEAKEN),
        ("automatic", "customer_approval", Change.TIGHTEN),
        ("customer_approval", "pinned", Change.TIGHTEN),
        ("automatic", "automatic", Change.KEEP),
    ],
)
def test_updates_mode_towards_automatic_weakens_privacy(old: str, new: str, change: Change) -> None:
    a = PolicyBody(updates=UpdatesPolicy(mode=old))  # type: ignore[arg-type]
    b = PolicyBody(updates=UpdatesPolicy(mode=new))  # type: ignore[arg-type]
    assert classify_change(a, b) is change
    assert ("updates.mode" in weakenings(a, b)) is (change is Change.WEAKEN)


def test_policy_towards_automatic_needs_the_customer(plane, root) -> None:
    current = PolicyBody(jurisdiction="DE", updates=UpdatesPolicy(mode="customer_approval"))
    c = VerifyContext("room-101", ("hq",), now(), {}, current)
    weaker = {**plane.policy(), "updates": {"mode": "automatic"}}
    with pytest.raises(Rejected) as info:
        verify_document(plane.sign("policy", weaker), "policy", root, c)
    assert info.value.reason == "needs_customer"
    doc = verify_document(plane.sign("policy", weaker, [plane.fleet, plane.customer]), "policy", root, c)
    assert doc.body.updates.mode == "automatic"  # type: ignore[attr-defined]
    stricter = {**plane.policy(), "updates": {"mode": "pinned"}}
    verify_document(plane.sign("policy", stricter), "policy", root, c)


def test_expired_update_is_refused(plane, root, flog) -> None:
    raw = plane.sign("update", flog.body(2, BUNDLE), expires=now() - dt.timedelta(seconds=1))
    assert reason(raw, root, ctx()) == "expired"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(min_size=1, max_size=300), st.integers(0, 5), st.integers(1, 6))
def test_any_checkpoint_text_in_a_signed_update_is_refused_never_crashes(
    plane, root, flog, checkpoint: str, index: int, size: int
) -> None:
    body = flog.body(2, BUNDLE)
    body["transparency"].update(checkpoint=checkpoint, index=index, tree_size=size)
    assert reason(plane.sign("update", body), root, ctx()) in ("not_in_log", "invalid_body")
