"""The body of a ``keys`` document (meeting key package), shared by control (verification) and privacy.

Body::

    {"meeting": "m-42", "epoch": 1, "suite": 4, "key_expires": "2026-11-29T20:00:00Z",
     "senders": [{"device": "room-a", "kid": 256,
                  "recipients": {"room-b": {"kem": "mlkem768-x25519", "sealed": "<base64>"}}}],
     "sfu": {"url": "https://sfu.example/janus", "room": 4242, "token": "..."}}   # optional

``sfu`` (optional) is where the meeting meets over WebRTC (:class:`SfuBody`).
"""

from __future__ import annotations

__all__ = ["MAX_KID", "KeysBody", "SealedKey", "SenderEntry", "SfuBody", "parse_time"]

import base64
import binascii
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_RFC3339_Z = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$"
# A sealed 64-byte key with the hybrid KEM is 1120 + 64 + 16 bytes; leave room, but cap.
_MAX_SEALED_B64 = 2048
MAX_KID = (1 << 64) - 1  # RFC 9605 §4.3: KID is up to 64 bits


def parse_time(value: str) -> datetime:
    """Parse an RFC 3339 UTC timestamp ending in ``Z``."""
    return datetime.fromisoformat(value.removesuffix("Z") + "+00:00")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SealedKey(_Strict):
    """One sender's base key sealed to one recipient device."""

    kem: Literal["x25519", "mlkem768-x25519"]
    sealed: Annotated[str, Field(min_length=4, max_length=_MAX_SEALED_B64)]

    @field_validator("sealed")
    @classmethod
    def _base64(cls, value: str) -> str:
        try:
            base64.b64decode(value.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise ValueError("sealed must be base64") from exc
        return value

    def sealed_bytes(self) -> bytes:
        return base64.b64decode(self.sealed, validate=True)


class SenderEntry(_Strict):
    device: Annotated[str, Field(pattern=_ID)]
    kid: Annotated[int, Field(ge=0, le=MAX_KID)]
    recipients: Annotated[
        dict[Annotated[str, Field(pattern=_ID)], SealedKey], Field(min_length=1, max_length=256)
    ]


class SfuBody(_Strict):
    """Where the meeting meets over WebRTC: a Janus HTTP API URL, VideoRoom id and join token.

    It is part of the customer-signed ``keys`` document, so the management plane cannot send a room to
    another SFU (SFrame keeps the media sealed either way, but where a room connects is the customer's
    choice, not the vendor's).
    """

    url: Annotated[str, Field(min_length=8, max_length=512, pattern=r"^https?://[^\s#]+$")]
    room: Annotated[int, Field(ge=0, le=(1 << 53) - 1)]
    token: Annotated[str, Field(max_length=128)] = ""


class KeysBody(_Strict):
    """The body of a ``keys`` document (strict: unknown fields and wrong types are rejected)."""

    meeting: Annotated[str, Field(pattern=_ID)]
    epoch: Annotated[int, Field(ge=0, le=(1 << 32) - 1)]
    suite: Annotated[int, Field(ge=1, le=5)]
    key_expires: Annotated[str, Field(pattern=_RFC3339_Z)]
    senders: Annotated[list[SenderEntry], Field(min_length=1, max_length=256)]
    sfu: SfuBody | None = None

    @field_validator("key_expires")
    @classmethod
    def _valid_time(cls, value: str) -> str:
        parse_time(value)  # ValueError for 2026-13-40 and the like
        return value

    @model_validator(mode="after")
    def _unique(self) -> KeysBody:
        devices = [s.device for s in self.senders]
        kids = [s.kid for s in self.senders]
        if len(set(devices)) != len(devices):
            raise ValueError("each sender device appears once")
        if len(set(kids)) != len(kids):
            # RFC 9605 §4.3: the KID selects the key; two senders with one KID would be ambiguous.
            raise ValueError("each sender has its own KID")
        return self

    @property
    def expires_at(self) -> datetime:
        return parse_time(self.key_expires)
