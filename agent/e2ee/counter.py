"""Crash-safe CTR high-water marks for SFrame senders (RFC 9605 §9.1, ADR 0001).

§9.1: "write the next CTR value back to storage before using the CTR value for encryption". Writing
once per frame would cost an fsync per frame, so a sender reserves a block of CTR values: it persists
``high_water = ctr + block`` (atomically, via :mod:`agent.persist`) before using ``ctr``, and uses
the values below ``high_water`` without touching the disk. After a restart or a crash it starts at
the persisted high-water mark, so a CTR is never used twice with one key; at most one block of
never-used values is skipped per restart.

Keys are not stored: each entry is named by a one-way key id (HMAC-SHA-256 of the KID and suite
under the base key, truncated to 128 bits), which reveals nothing about the key.
"""

from __future__ import annotations

__all__ = ["DEFAULT_BLOCK", "CounterStore", "counter_key_id"]

import hmac
import threading
from pathlib import Path

import structlog

from agent.e2ee.errors import CounterStoreError, InvalidParameterError
from agent.errors import StateError
from agent.persist import atomic_write_json, read_json

DEFAULT_BLOCK = 1 << 16
"""CTR values reserved per disk write: ~36 minutes of 30 fps video, ~22 minutes of 50 fps audio."""

_CTR_SPACE = 1 << 64  # CTR values are 0..2^64-1 (§4.3); the high-water mark may equal 2^64.
_FORMAT = 1

_log = structlog.get_logger()


def counter_key_id(cipher_suite: int, base_key: bytes, kid: int) -> str:
    """One-way name of a (base_key, KID, suite) for the store; the base key cannot be recovered."""
    msg = b"roomagent sframe counter id " + kid.to_bytes(8, "big") + cipher_suite.to_bytes(2, "big")
    return hmac.digest(base_key, msg, "sha256")[:16].hex()


class CounterStore:
    """Per-key CTR high-water marks in one JSON file, written atomically ahead of use.

    One store file belongs to one process (the agent); it is safe to share between threads and
    between several :class:`~agent.e2ee.context.SenderContext` objects of that process.

    Raises:
        CounterStoreError: (constructor) the file exists but is not a valid store: encryption with
            a key that might have been used before cannot be made safe, so it is refused.
    """

    def __init__(self, path: Path, *, block: int = DEFAULT_BLOCK) -> None:
        if type(block) is not int or block < 1:
            raise InvalidParameterError("block", f"must be a positive integer, got {block!r}")
        self.path = Path(path)
        self.block = block
        self._lock = threading.Lock()
        self._marks: dict[str, int] = self._load()

    def _load(self) -> dict[str, int]:
        try:
            raw = read_json(self.path)
        except StateError as exc:
            raise CounterStoreError(str(self.path), exc.reason) from exc
        if raw is None:
            return {}
        marks = raw.get("high_water") if isinstance(raw, dict) and raw.get("format") == _FORMAT else None
        if not isinstance(marks, dict) or not all(
            isinstance(k, str) and type(v) is int and 0 <= v <= _CTR_SPACE for k, v in marks.items()
        ):
            raise CounterStoreError(str(self.path), "not a counter store (format 1) file")
        return dict(marks)

    def high_water(self, key_id: str) -> int:
        """The first CTR never reserved for ``key_id`` (0 for a key never used)."""
        with self._lock:
            return self._marks.get(key_id, 0)

    def reserve(self, key_id: str, ctr: int) -> int:
        """Persist ``min(ctr + block, 2^64)`` as the high-water mark of ``key_id`` and return it.

        The write is durable (temp file, fsync, rename, fsync of the directory) before this
        returns, so the caller may then use every CTR in ``ctr .. returned - 1``.

        Raises:
            InvalidParameterError: ``ctr`` is beyond 2^64-1.
            CounterStoreError: the write failed; nothing was reserved and the file is unchanged.
        """
        if ctr >= _CTR_SPACE:
            raise InvalidParameterError("ctr", f"{ctr} is beyond the 64-bit CTR space")
        with self._lock:
            mark = max(min(ctr + self.block, _CTR_SPACE), self._marks.get(key_id, 0))
            marks = dict(self._marks)
            marks[key_id] = mark
            try:
                atomic_write_json(self.path, {"format": _FORMAT, "high_water": marks})
            except StateError as exc:
                raise CounterStoreError(str(self.path), exc.reason) from exc
            self._marks = marks
        _log.debug("sframe_counter_reserved", high_water=mark, block=self.block)
        return mark
