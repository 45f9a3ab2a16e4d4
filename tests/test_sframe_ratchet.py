"""RFC 9605 §5.1 sender keys: ratchet derivation, KID layout, and a receiver that follows safely."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent.e2ee import sframe
from agent.e2ee.header import decode_header
from agent.e2ee.ratchet import SenderKeyRatchet, SenderKeyReceiver, make_kid, next_base_key, split_kid
from agent.e2ee.sframe import InvalidParameterError, ReplayError, UnknownKidError

KEY = bytes(range(16))


@pytest.mark.parametrize(
    ("suite", "algorithm"), [(1, hashes.SHA256()), (4, hashes.SHA256()), (5, hashes.SHA512())]
)
def test_ratchet_step_matches_hkdf_with_the_rfc_label(suite: int, algorithm: hashes.HashAlgorithm) -> None:
    """base_key[i+1] = HKDF-Expand(HKDF-Extract("", base_key[i]), "SFrame 1.0 Ratchet", Nh)."""
    hkdf = HKDF(algorithm=algorithm, length=algorithm.digest_size, salt=b"", info=b"SFrame 1.0 Ratchet")
    expected = hkdf.derive(KEY)
    assert next_base_key(suite, KEY) == expected
    assert len(next_base_key(suite, expected)) == algorithm.digest_size


def test_kid_layout() -> None:
    """§5.1 Figure 7: KID = (key_generation << R) + (ratchet_step % 2^R)."""
    assert make_kid(0, 0, 8) == 0
    assert make_kid(3, 5, 8) == 0x305
    assert make_kid(3, 256 + 5, 8) == 0x305  # only the low R bits of the step are sent
    assert split_kid(0x305, 8) == (3, 5)
    assert make_kid((1 << 60) - 1, 15, 4) == (1 << 64) - 1
    with pytest.raises(InvalidParameterError):
        make_kid(1 << 60, 0, 4)  # generation does not fit in 64 - R bits
    with pytest.raises(InvalidParameterError):
        make_kid(0, 0, 0)
    with pytest.raises(InvalidParameterError):
        make_kid(0, -1, 8)


def test_receiver_follows_the_senders_ratchet() -> None:
    sender = SenderKeyRatchet(4, KEY, generation=2, ratchet_bits=4)
    receiver = SenderKeyReceiver(4, ratchet_bits=4)
    receiver.set_key(2, KEY)
    assert receiver.decrypt(b"", sender.encrypt(b"", b"step 0")).plaintext == b"step 0"
    assert sender.ratchet() == make_kid(2, 1, 4)
    frame = sender.encrypt(b"", b"step 1")
    assert decode_header(frame)[:2] == (0x21, 0)  # new KID, CTR restarts with the new key
    assert receiver.decrypt(b"", frame).plaintext == b"step 1"
    # Any RFC 9605 receiver with the ratcheted key decrypts it too.
    assert sframe.decrypt(4, next_base_key(4, KEY), b"", frame)[2] == b"step 1"


def test_receiver_skips_ahead_and_keeps_recent_steps_for_reordering() -> None:
    sender = SenderKeyRatchet(4, KEY, ratchet_bits=4)
    receiver = SenderKeyReceiver(4, ratchet_bits=4, keep_steps=2)
    receiver.set_key(0, KEY)
    late_step0 = sender.encrypt(b"", b"late")
    sender.ratchet()
    sender.ratchet()
    sender.ratchet()
    assert receiver.decrypt(b"", sender.encrypt(b"", b"step 3")).plaintext == b"step 3"  # 3 steps at once
    with pytest.raises(UnknownKidError):  # step 0 is beyond keep_steps: its key was deleted (§5.1)
        receiver.decrypt(b"", late_step0)


def test_previous_step_still_decrypts_out_of_order_frames() -> None:
    sender = SenderKeyRatchet(4, KEY, ratchet_bits=4)
    receiver = SenderKeyReceiver(4, ratchet_bits=4, keep_steps=2)
    receiver.set_key(0, KEY)
    delayed = sender.encrypt(b"", b"sent before the ratchet")
    sender.ratchet()
    assert receiver.decrypt(b"", sender.encrypt(b"", b"after")).plaintext == b"after"
    assert receiver.decrypt(b"", delayed).plaintext == b"sent before the ratchet"
    with pytest.raises(ReplayError):
        receiver.decrypt(b"", delayed)


def test_forged_kid_does_not_move_the_ratchet() -> None:
    """An attacker sends garbage under the next step's KID: the receiver must not ratchet (and so
    lose the current key)."""
    sender = SenderKeyRatchet(4, KEY, ratchet_bits=4)
    receiver = SenderKeyReceiver(4, ratchet_bits=4, keep_steps=1)
    receiver.set_key(0, KEY)
    forged = bytes([0x20]) + os.urandom(40)  # KID 2 (step 2), CTR 0
    with pytest.raises(UnknownKidError):
        receiver.decrypt(b"", forged)
    assert receiver.decrypt(b"", sender.encrypt(b"", b"still step 0")).plaintext == b"still step 0"


def test_step_too_far_ahead_is_unknown() -> None:
    sender = SenderKeyRatchet(4, KEY, ratchet_bits=4)
    receiver = SenderKeyReceiver(4, ratchet_bits=4, max_ahead=2)
    receiver.set_key(0, KEY)
    for _ in range(3):
        sender.ratchet()
    with pytest.raises(UnknownKidError):
        receiver.decrypt(b"", sender.encrypt(b"", b"x"))


def test_new_generation_replaces_the_key() -> None:
    """Evicting a participant: the sender distributes a fresh key (a new generation)."""
    receiver = SenderKeyReceiver(4, ratchet_bits=4, max_generations=1)
    receiver.set_key(0, KEY)
    old = SenderKeyRatchet(4, KEY, generation=0, ratchet_bits=4)
    new_key = os.urandom(16)
    new = SenderKeyRatchet(4, new_key, generation=1, ratchet_bits=4)
    receiver.set_key(1, new_key)
    assert receiver.decrypt(b"", new.encrypt(b"", b"gen 1")).plaintext == b"gen 1"
    with pytest.raises(UnknownKidError):
        receiver.decrypt(b"", old.encrypt(b"", b"gen 0"))
    assert receiver.drops["unknown_kid"] == 1


def test_receiver_parameters_bounded_by_ratchet_bits() -> None:
    with pytest.raises(InvalidParameterError):
        SenderKeyReceiver(4, ratchet_bits=2, keep_steps=4)
    with pytest.raises(InvalidParameterError):
        SenderKeyReceiver(4, ratchet_bits=2, keep_steps=2, max_ahead=3)
