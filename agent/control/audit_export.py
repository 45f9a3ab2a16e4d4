"""``audit_fetch``: the device publishes its audit entries from a sequence number on.

Chunks go to ``{prefix}/devices/{id}/audit_export`` (QoS 1, not retained), each a JSON object
``{"request", "chunk", "last", "entries", "head"}`` of at most 64 KiB: ``request`` is the payload
digest of the command (so the requester matches chunks to its request), ``head`` the device-signed
audit head, against which the requester checks the hash chain of the entries (``roomctl audit verify``).
The command is then acked ``applied`` with ``"<n> entries"``.
"""

from __future__ import annotations

__all__ = ["CHUNK_MAX_BYTES", "AuditExport", "chunks"]

import json
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from agent.control.audit import AuditLog
from agent.control.verify import VerifiedDocument

CHUNK_MAX_BYTES = 64 * 1024
TOPIC_NAME = "audit_export"


class _Publisher(Protocol):
    audit: AuditLog

    def publish_device(self, name: str, payload: bytes) -> None: ...


def _entries(audit: AuditLog, from_seq: int) -> list[dict[str, Any]]:
    if not audit.path.exists():
        return []
    out = []
    for raw in audit.path.read_bytes().split(b"\n")[:-1]:  # only complete lines
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("seq"), int) and entry["seq"] >= from_seq:
            out.append(entry)
    return out


def chunks(
    request: str, entries: list[dict[str, Any]], head: dict[str, Any], max_bytes: int = CHUNK_MAX_BYTES
) -> Iterator[bytes]:
    """The export messages, each at most ``max_bytes`` (at least one, possibly with no entries)."""

    def encode(n: int, batch: list[dict[str, Any]], last: bool) -> bytes:
        message = {"request": request, "chunk": n, "last": last, "entries": batch, "head": head}
        return json.dumps(message, sort_keys=True, separators=(",", ":")).encode()

    n, batch = 0, list[dict[str, Any]]()
    for entry in entries:
        if batch and len(encode(n, [*batch, entry], False)) > max_bytes:
            yield encode(n, batch, False)
            n, batch = n + 1, []
        batch.append(entry)
    yield encode(n, batch, True)


class AuditExport:
    """The ``audit_fetch`` command handler of one control service."""

    def __init__(self, control: _Publisher) -> None:
        self._control = control

    async def handle(self, name: str, args: Mapping[str, Any], doc: VerifiedDocument) -> str:
        from_seq = int(args.get("from_seq", 0))
        entries = _entries(self._control.audit, from_seq)
        head = self._control.audit.head().to_dict()
        for message in chunks(doc.payload_sha256, entries, head):
            self._control.publish_device(TOPIC_NAME, message)
        return f"{len(entries)} entries"
