"""Key packages through the real control verifier: only the customer can hand out meeting keys."""

from __future__ import annotations

import datetime as dt

import pytest

from agent.control.errors import Rejected
from agent.control.verify import VerifyContext, verify_document, verify_initial_root
from agent.privacy.hpke import HpkeIdentity
from agent.privacy.key_packages import seal_meeting
from agent.schema.key_package import KeysBody
from tests.plane import Plane, now, ts


def _keys_body(device: str = "room-101") -> dict:
    rooms = {device: HpkeIdentity.generate().public_keys(), "room-202": HpkeIdentity.generate().public_keys()}
    packages = seal_meeting(
        meeting="m-1",
        epoch=1,
        suite=4,
        kem="x25519",
        key_expires=ts(now() + dt.timedelta(hours=2)),
        rooms=rooms,
    )
    return packages[device].model_dump()


@pytest.fixture
def plane() -> Plane:
    return Plane()


def _verify(plane: Plane, raw: bytes):  # type: ignore[no-untyped-def]
    root = verify_initial_root(plane.root())
    ctx = VerifyContext(device_id="room-101", groups=(), now=now())
    return verify_document(raw, "keys", root, ctx)


def test_fleet_signed_key_package_is_rejected_needs_customer(plane: Plane) -> None:
    # The attack: the vendor (fleet key) tries to add a ghost participant to a meeting.
    raw = plane.sign("keys", _keys_body(), [plane.fleet])
    with pytest.raises(Rejected) as err:
        _verify(plane, raw)
    assert err.value.reason == "needs_customer"


def test_legal_signed_key_package_is_rejected_too(plane: Plane) -> None:
    raw = plane.sign("keys", _keys_body(), [plane.legal])
    with pytest.raises(Rejected) as err:
        _verify(plane, raw)
    assert err.value.reason == "needs_customer"


def test_customer_signed_key_package_verifies_into_a_keys_body(plane: Plane) -> None:
    doc = _verify(plane, plane.sign("keys", _keys_body(), [plane.customer]))
    assert isinstance(doc.body, KeysBody)
    assert doc.body.senders[0].recipients["room-101"].kem == "x25519"


def test_malformed_key_package_is_invalid_body(plane: Plane) -> None:
    body = _keys_body()
    body["suite"] = 9
    with pytest.raises(Rejected) as err:
        _verify(plane, plane.sign("keys", body, [plane.customer]))
    assert err.value.reason == "invalid_body"
