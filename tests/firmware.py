"""Firmware test helpers: a transparency log in a directory and ``update`` bodies proved against it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.tlog.store import Entry, LogStore

ORIGIN = "roomagent.test/firmware"


class FirmwareLog:
    def __init__(self, directory: Path, key: ed25519.Ed25519PrivateKey, origin: str = ORIGIN) -> None:
        self.store = LogStore(directory)
        self.store.init(origin)
        self.key = key

    def add(self, version: int, data: bytes) -> None:
        entry = Entry(version, len(data), hashlib.sha256(data).hexdigest(), f"v{version}")
        self.store.append(entry, self.key)

    def body(self, version: int, data: bytes, urls: list[str] | None = None, **extra: Any) -> dict[str, Any]:
        """An ``update`` body for bundle ``data``, proved against the log's latest checkpoint."""
        sha = hashlib.sha256(data).hexdigest()
        proof = self.store.prove(self.store.find(sha)).to_json()
        return {
            "firmware_version": version,
            "length": len(data),
            "sha256": sha,
            "urls": urls or ["https://updates.example/bundle.raucb"],
            "transparency": proof,
            **extra,
        }
