"""DSSE envelopes (secure-systems-lab/dsse, protocol.md and envelope.md).

PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body, with LEN the ASCII decimal byte
length. The envelope is ``{"payload": b64, "payloadType": str, "signatures": [{"keyid", "sig": b64}]}``;
base64 is standard or URL-safe (envelope.md: "either standard or URL-safe encoding"), padded.
Parsing here is strict and pure: bytes in, :class:`Envelope` or ``ValueError`` out.
"""

from __future__ import annotations

__all__ = ["Envelope", "Signature", "b64decode", "pae", "strict_json"]

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from agent.control.signing_keys import PrivateKey, key_dict, keyid_of, sign


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE protocol.md "Signature definition": the Pre-Authentication Encoding."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(t), t, len(payload), payload)


def b64decode(text: str) -> bytes:
    """Strict base64, standard or URL-safe alphabet (DSSE envelope.md)."""
    data = text.encode("ascii", errors="strict")
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error:
        return base64.b64decode(data, altchars=b"-_", validate=True)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(data: bytes) -> Any:
    """RFC 8259 JSON with no duplicate keys, no NaN/Infinity and no trailing data.

    Raises:
        ValueError: any of those, or invalid UTF-8.
    """
    text = data.decode("utf-8")  # UnicodeDecodeError is a ValueError
    # json.loads already rejects trailing data ("Extra data").
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


@dataclass(frozen=True, slots=True)
class Signature:
    keyid: str
    sig: bytes


@dataclass(frozen=True, slots=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...]

    def pae(self) -> bytes:
        return pae(self.payload_type, self.payload)

    @classmethod
    def parse(cls, data: bytes) -> Envelope:
        """Parse envelope bytes strictly.

        Raises:
            ValueError: not JSON, wrong shape, unknown fields, or bad base64.
        """
        obj = strict_json(data)
        if not isinstance(obj, dict):
            raise ValueError("an envelope is a JSON object")
        if set(obj) != {"payload", "payloadType", "signatures"}:
            raise ValueError("an envelope has exactly payload, payloadType and signatures")
        payload, payload_type, sigs = obj["payload"], obj["payloadType"], obj["signatures"]
        if not isinstance(payload, str) or not isinstance(payload_type, str) or not isinstance(sigs, list):
            raise ValueError("payload and payloadType are strings, signatures a list")
        parsed: list[Signature] = []
        for s in sigs:
            if (
                not isinstance(s, dict)
                or not isinstance(s.get("sig"), str)
                or not isinstance(s.get("keyid"), str)
            ):
                raise ValueError("each signature is an object with string keyid and sig")
            if set(s) - {"keyid", "sig"}:
                raise ValueError("a signature has only keyid and sig")
            try:
                parsed.append(Signature(s["keyid"], b64decode(s["sig"])))
            except (binascii.Error, UnicodeEncodeError) as exc:
                raise ValueError("signature is not valid base64") from exc
        try:
            body = b64decode(payload)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise ValueError("payload is not valid base64") from exc
        return cls(payload_type, body, tuple(parsed))

    def to_dict(self) -> dict[str, Any]:
        return {
            "payload": base64.standard_b64encode(self.payload).decode(),
            "payloadType": self.payload_type,
            "signatures": [
                {"keyid": s.keyid, "sig": base64.standard_b64encode(s.sig).decode()} for s in self.signatures
            ],
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=None, separators=(",", ":")).encode()

    def signed_by(self, private: PrivateKey) -> Envelope:
        """A copy with one more signature (replacing an earlier one by the same key)."""
        keyid = keyid_of(key_dict(private.public_key()))
        sig = Signature(keyid, sign(private, self.pae()))
        others = tuple(s for s in self.signatures if s.keyid != keyid)
        return Envelope(self.payload_type, self.payload, (*others, sig))
