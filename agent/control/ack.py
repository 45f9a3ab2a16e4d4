"""Acks: one signed DSSE envelope per received document (docs/design.md "Ack payload")."""

from __future__ import annotations

__all__ = ["Ack", "Status", "make_ack", "rfc3339"]

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from agent.control.dsse import Envelope
from agent.control.identity import DeviceIdentity

Status = Literal["applied", "rejected", "rolled_back", "superseded"]


def rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class Ack:
    doc_kind: str
    doc_version: int | None
    payload_sha256: str | None
    status: Status
    reason: str | None
    message: str


def make_ack(identity: DeviceIdentity, device: str, ack: Ack, now: dt.datetime) -> Envelope:
    payload = {
        "kind": "ack",
        "device": device,
        "doc_kind": ack.doc_kind,
        "doc_version": ack.doc_version,
        "payload_sha256": ack.payload_sha256,
        "status": ack.status,
        "reason": ack.reason,
        "message": ack.message[:500],
        "time": rfc3339(now),
    }
    return identity.sign_envelope("ack", payload)
