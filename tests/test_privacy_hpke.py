"""Device HPKE identity: created once, private keys 0600, seals open only in their exact context."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from agent.privacy.errors import IdentityError, KeyDeliveryError
from agent.privacy.hpke import KEM_NAMES, HpkeIdentity, SealBinding, kem_at_least, seal_base_key

BINDING = SealBinding(meeting="m-1", epoch=3, suite=4, sender="room-a", kid=7, recipient="room-b")


def test_first_start_creates_identity_mode_0600_and_second_start_reloads_it(tmp_path: Path) -> None:
    path = tmp_path / "state" / "hpke.json"
    first = HpkeIdentity.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = HpkeIdentity.load_or_create(path)
    assert again.public_keys() == first.public_keys()
    assert set(first.public_keys()) == set(KEM_NAMES)
    assert len(base64.b64decode(first.public_keys()["mlkem768-x25519"])) == 1216
    # The public export never carries private material.
    private_blob = path.read_text()
    for value in first.public_keys().values():
        assert value not in private_blob
    assert "private" in repr(first)
    assert "x25519" not in repr(first)


def test_loosened_identity_file_is_tightened_on_load(tmp_path: Path) -> None:
    path = tmp_path / "hpke.json"
    HpkeIdentity.load_or_create(path)
    os.chmod(path, 0o644)
    HpkeIdentity.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_corrupt_identity_file_is_a_typed_error_and_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "hpke.json"
    path.write_text(json.dumps({"format": 1, "x25519": "!!", "mlkem768-x25519": {}}))
    before = path.read_bytes()
    with pytest.raises(IdentityError) as err:
        HpkeIdentity.load_or_create(path)
    assert err.value.reason == "identity_malformed"
    assert path.read_bytes() == before


@pytest.mark.parametrize("kem", KEM_NAMES)
def test_sealed_base_key_opens_at_the_recipient(kem: str) -> None:
    recipient = HpkeIdentity.generate()
    base_key = os.urandom(32)
    sealed = seal_base_key(kem, recipient.public_keys()[kem], base_key, BINDING)
    assert base_key not in sealed
    assert recipient.open_base_key(kem, sealed, BINDING) == base_key


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("meeting", "m-2"),
        ("epoch", 4),
        ("suite", 1),
        ("sender", "room-x"),
        ("kid", 8),
        ("recipient", "room-c"),
    ],
)
def test_sealed_key_moved_to_another_context_does_not_open(field: str, value: object) -> None:
    # The attack: a key sealed for one (meeting, epoch, suite, sender, kid, recipient) is replayed
    # in another slot of a key package. The HPKE info binding makes the open fail.
    recipient = HpkeIdentity.generate()
    sealed = seal_base_key("x25519", recipient.public_keys()["x25519"], os.urandom(32), BINDING)
    moved = SealBinding(**{**{f: getattr(BINDING, f) for f in BINDING.__slots__}, field: value})
    with pytest.raises(KeyDeliveryError) as err:
        recipient.open_base_key("x25519", sealed, moved)
    assert err.value.reason == "bad_seal"


def test_key_sealed_to_another_device_or_tampered_does_not_open() -> None:
    recipient, other = HpkeIdentity.generate(), HpkeIdentity.generate()
    sealed = seal_base_key("mlkem768-x25519", other.public_keys()["mlkem768-x25519"], b"k" * 32, BINDING)
    with pytest.raises(KeyDeliveryError):
        recipient.open_base_key("mlkem768-x25519", sealed, BINDING)
    tampered = bytearray(seal_base_key("x25519", recipient.public_keys()["x25519"], b"k" * 32, BINDING))
    tampered[-1] ^= 1
    with pytest.raises(KeyDeliveryError):
        recipient.open_base_key("x25519", bytes(tampered), BINDING)
    for junk in (b"", b"\x00" * 5):
        with pytest.raises(KeyDeliveryError):
            recipient.open_base_key("x25519", junk, BINDING)


def test_bad_public_keys_are_typed_errors() -> None:
    for kem, value in (
        ("x25519", "not base64!"),
        ("x25519", base64.b64encode(b"x" * 31).decode()),
        ("mlkem768-x25519", base64.b64encode(b"x" * 32).decode()),
        ("p256", "AAAA"),
    ):
        with pytest.raises(KeyDeliveryError):
            seal_base_key(kem, value, b"k" * 32, BINDING)


def test_kem_strength_order() -> None:
    assert kem_at_least("mlkem768-x25519", "x25519")
    assert not kem_at_least("x25519", "mlkem768-x25519")
    assert not kem_at_least("p256", "x25519")
