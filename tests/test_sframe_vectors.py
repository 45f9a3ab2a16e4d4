"""RFC 9605 Appendix C: all 297 published vectors (289 header, 3 AES-CTR-HMAC, 5 full SFrame)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from agent.e2ee import sframe
from agent.e2ee.header import decode_header, encode_header
from agent.e2ee.suites import FrameKey, KeyUsage, derive_key_salt, get_suite
from tests.conftest import VECTORS

# The published file, byte for byte (tests/vectors/README.md names the source commit and its sha256).
VECTOR_FILE = VECTORS / "sframe-rfc9605-vectors.json"
VECTOR_SHA256 = "b8d35efd41749567427cb9ae52d9a7362904154978ff6a5fb20c0258a8ffdec1"

_DATA: dict[str, list[dict[str, Any]]] = json.loads(VECTOR_FILE.read_text())


def _h(value: str) -> bytes:
    return bytes.fromhex(value)


def test_vector_file_is_the_published_one() -> None:
    assert hashlib.sha256(VECTOR_FILE.read_bytes()).hexdigest() == VECTOR_SHA256


def test_vector_file_is_complete() -> None:
    assert (len(_DATA["header"]), len(_DATA["aes_ctr_hmac"]), len(_DATA["sframe"])) == (289, 3, 5)


@pytest.mark.parametrize("v", _DATA["header"], ids=lambda v: f"kid{v['kid']:x}-ctr{v['ctr']:x}")
def test_header_vector(v: dict[str, Any]) -> None:
    """Appendix C.1: encoding is exact and decoding returns the same KID, CTR and length."""
    encoded = _h(v["encoded"])
    assert encode_header(v["kid"], v["ctr"]) == encoded
    assert decode_header(encoded) == (v["kid"], v["ctr"], len(encoded))
    # The header is a prefix: trailing ciphertext does not change what is parsed.
    assert decode_header(encoded + b"\xff" * 20) == (v["kid"], v["ctr"], len(encoded))


@pytest.mark.parametrize("v", _DATA["aes_ctr_hmac"], ids=lambda v: f"suite{v['cipher_suite']}")
def test_aes_ctr_hmac_vector(v: dict[str, Any]) -> None:
    """Appendix C.2: the §4.5.1 compound AEAD, with the subkey split and the truncated tag."""
    suite = get_suite(v["cipher_suite"])
    key = _h(v["key"])
    assert key[: suite.nka] == _h(v["enc_key"])
    assert key[suite.nka :] == _h(v["auth_key"])
    # With CTR 0 the nonce is the salt itself (§4.4.3), so the vector's nonce is used as the salt.
    sealer = FrameKey(suite, 0, key, _h(v["nonce"]), KeyUsage.ENCRYPT)
    assert sealer.seal(0, b"", _h(v["aad"]), _h(v["pt"])) == _h(v["ct"])
    opener = FrameKey(suite, 0, key, _h(v["nonce"]), KeyUsage.DECRYPT)
    assert opener.open(0, b"", _h(v["aad"]), memoryview(_h(v["ct"]))) == _h(v["pt"])


@pytest.mark.parametrize("v", _DATA["sframe"], ids=lambda v: f"suite{v['cipher_suite']}")
def test_sframe_vector(v: dict[str, Any]) -> None:
    """Appendix C.3: derivation labels, key, salt, nonce, and the whole ciphertext both ways."""
    suite = get_suite(v["cipher_suite"])
    base_key = _h(v["base_key"])
    sframe_key, sframe_salt = derive_key_salt(suite, v["kid"], base_key)
    assert (sframe_key, sframe_salt) == (_h(v["sframe_key"]), _h(v["sframe_salt"]))
    suffix = v["kid"].to_bytes(8, "big") + v["cipher_suite"].to_bytes(2, "big")
    assert _h(v["sframe_key_label"]) == b"SFrame 1.0 Secret key " + suffix
    assert _h(v["sframe_salt_label"]) == b"SFrame 1.0 Secret salt " + suffix
    frame_key = FrameKey(suite, v["kid"], sframe_key, sframe_salt, KeyUsage.ENCRYPT)
    assert frame_key.nonce(v["ctr"]) == _h(v["nonce"])
    header = encode_header(v["kid"], v["ctr"])
    assert header + _h(v["metadata"]) == _h(v["aad"])

    ct = sframe.encrypt(v["cipher_suite"], base_key, v["kid"], v["ctr"], _h(v["metadata"]), _h(v["pt"]))
    assert ct == _h(v["ct"])
    assert sframe.decrypt(v["cipher_suite"], base_key, _h(v["metadata"]), _h(v["ct"])) == (
        v["kid"],
        v["ctr"],
        _h(v["pt"]),
    )
