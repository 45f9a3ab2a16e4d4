"""DSSE envelopes (secure-systems-lab/dsse, protocol.md and envelope.md).

PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body, with LEN the ASCII decimal byte
length. The envelope is ``{"payload": b64, "payloadType": str, "signatures": [{"keyid", "sig": b64}]}``;
base64 is standard or URL-safe (envelope.md: "either standard or URL-safe encoding"), padded.
Parsing here is strict and pure: bytes in, :class:`Envelope` or ``ValueError`` out. JSON nesting is
bounded (:data:`MAX_JSON_DEPTH`) *before* the parser runs, so no input can exhaust the recursion of
``json.loads`` (a ``RecursionError`` is not a ``ValueError`` and would escape every caller).
"""

from __future__ import annotations

__all__ = ["MAX_JSON_DEPTH", "Envelope", "Signature", "b64decode", "check_depth", "pae", "strict_json"]

import base64
import binascii
import json
import re
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


MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays/objects accepted anywhere (envelope or payload). Real documents nest at
most 6 levels; RFC 8259 section 9 lets a parser "set limits on the maximum depth of nesting"."""

# A complete JSON string (escapes included) and any bracket. Strings are skipped so that brackets
# inside them do not count; an unterminated string leaves its brackets counted, which can only turn
# an input that is invalid anyway into the same rejection.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def check_depth(data: bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse JSON nested deeper than ``limit`` without parsing it (a linear scan, stops early).

    Raises:
        ValueError: nesting deeper than ``limit``.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return  # cannot be deeper than the number of openers (the common, small case)
    depth = 0
    for match in _TOKEN.finditer(data):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                raise ValueError(f"JSON nested deeper than {limit} levels")
        elif token in (b"]", b"}"):
            depth -= 1


def strict_json(data: bytes) -> Any:
    """RFC 8259 JSON with no duplicate keys, no NaN/Infinity, no trailing data, at most
    :data:`MAX_JSON_DEPTH` levels of nesting.

    Raises:
        ValueError: any of those, or invalid UTF-8.
    """
    check_depth(data)
    text = data.decode("utf-8")  # UnicodeDecodeError is a ValueError
    # json.loads already rejects trailing data ("Extra data"). RecursionError cannot happen after
    # check_depth, but stays translated here so the contract "ValueError or a value" holds whatever
    # the interpreter's recursion limit.
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


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
    def parse(cls, data: bytes, *, max_signatures: int | None = None) -> Envelope:
        """Parse envelope bytes strictly.

        ``max_signatures``: refuse more signatures than that before decoding any of them (DSSE
        protocol.md leaves the number of signatures to the verifier's policy).

        Raises:
            ValueError: not JSON, wrong shape, unknown fields, bad base64, too many signatures.
        """
        if max_signatures is not None and data.count(b'"sig"') > max_signatures:
            # Before parsing: a 60 KB envelope of 350 signatures costs a memchr, not a JSON parse.
            # (A key spelt with \u escapes escapes this count; the check after parsing catches it.)
            raise ValueError(
                f"more than {max_signatures} signatures; at most {max_signatures} can count here"
            )
        obj = strict_json(data)
        if not isinstance(obj, dict):
            raise ValueError("an envelope is a JSON object")
        if set(obj) != {"payload", "payloadType", "signatures"}:
            raise ValueError("an envelope has exactly payload, payloadType and signatures")
        payload, payload_type, sigs = obj["payload"], obj["payloadType"], obj["signatures"]
        if not isinstance(payload, str) or not isinstance(payload_type, str) or not isinstance(sigs, list):
            raise ValueError("payload and payloadType are strings, signatures a list")
        if max_signatures is not None and len(sigs) > max_signatures:
            raise ValueError(f"{len(sigs)} signatures; at most {max_signatures} can count here")
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
