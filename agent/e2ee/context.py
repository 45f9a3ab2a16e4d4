"""Stateful SFrame contexts for the media pipeline (RFC 9605 §4.4.1, §9.1, §9.3; Appendix A).

- :class:`SenderContext`: one encrypt-only key and KID, CTR strictly increasing from the persisted
  high-water mark, never the same (key, KID, CTR) twice, refusal to wrap (§7.4, §9.1).
- :class:`ReceiverContext`: decrypt-only keys by KID grouped in epochs (oldest retired beyond
  ``max_epochs``), a sliding anti-replay window per KID (§9.3, adapted from RFC 3711 §3.3.2 with CTR
  as the index), and drop counters by reason.

Keys are derived once per (base_key, KID) and the cipher objects kept, so a frame costs one header,
one nonce and one AEAD call. Contexts are thread-safe. Nothing here logs key or frame bytes.
"""

from __future__ import annotations

__all__ = [
    "CounterStore",
    "Decrypted",
    "KeyUsage",
    "ReceiverContext",
    "SenderContext",
]

import hmac
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import structlog

from agent.e2ee.counter import CounterStore, counter_key_id
from agent.e2ee.errors import (
    CounterExhaustedError,
    InvalidParameterError,
    KeyUsageError,
    MalformedCiphertextError,
    ReplayError,
    SFrameError,
    UnknownKidError,
)
from agent.e2ee.header import MAX_VALUE, decode_header, encode_header
from agent.e2ee.suites import FrameKey, KeyUsage, check_base_key, get_suite

_log = structlog.get_logger()

_DROP_REASONS = ("unknown_kid", "auth_failed", "replay", "malformed")


def _check_kid(kid: object) -> int:
    if type(kid) is not int or not 0 <= kid <= MAX_VALUE:
        raise InvalidParameterError("kid", f"must be an integer in 0..2^64-1, got {kid!r}")
    return kid


def _as_bytes(name: str, value: object) -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise InvalidParameterError(name, f"must be bytes, got {type(value).__name__}")


class SenderContext:
    """Encrypts frames with one sender key (KID) and a strictly increasing CTR.

    With a ``counter_store`` the CTR survives restarts and crashes: CTR values are reserved in blocks
    persisted before use (§9.1; ADR 0001). Without one the CTR starts at 0 and lives only in memory,
    which is safe only for a key that is fresh for this process (e.g. a key generated at start).

    Raises:
        InvalidParameterError / UnsupportedCipherSuiteError: bad suite, key or KID.
        CounterStoreError: the store cannot be read.
    """

    __slots__ = ("_key", "_key_id", "_limit", "_lock", "_next", "_store", "cipher_suite", "kid")

    def __init__(
        self,
        cipher_suite: int,
        base_key: bytes,
        kid: int,
        *,
        counter_store: CounterStore | None = None,
    ) -> None:
        suite = get_suite(cipher_suite)
        key = check_base_key(base_key)
        self.kid = _check_kid(kid)
        self.cipher_suite = suite.value
        # §4.4.1: a sender key is marked encrypt-only.
        self._key = FrameKey.derive(suite, kid, key, KeyUsage.ENCRYPT)
        self._store = counter_store
        self._lock = threading.Lock()
        if counter_store is None:
            self._key_id = ""
            self._next = 0
            self._limit = MAX_VALUE + 1
        else:
            self._key_id = counter_key_id(suite.value, key, kid)
            # Every CTR below the high-water mark may have been used before a restart or crash.
            self._next = counter_store.high_water(self._key_id)
            self._limit = self._next  # nothing reserved yet in this process
        _log.info("sframe_sender_ready", kid=kid, cipher_suite=suite.value, first_ctr=self._next)

    @property
    def next_ctr(self) -> int:
        """The CTR the next :meth:`encrypt` will use."""
        return self._next

    def encrypt(self, metadata: bytes, plaintext: bytes) -> bytes:
        """Encrypt one frame and return the whole SFrame ciphertext (header + ciphertext + tag).

        Raises:
            CounterExhaustedError: CTR 2^64-1 has been used; a new key (or KID) is needed (§7.4).
            CounterStoreError: the next CTR block could not be persisted; nothing was encrypted.
            InvalidParameterError: metadata or plaintext is not bytes.
        """
        if type(metadata) is not bytes:
            metadata = _as_bytes("metadata", metadata)
        if not isinstance(plaintext, bytes | bytearray | memoryview):
            raise InvalidParameterError("plaintext", f"must be bytes, got {type(plaintext).__name__}")
        with self._lock:
            ctr = self._next
            if ctr > MAX_VALUE:
                raise CounterExhaustedError(self.kid)
            if ctr >= self._limit:
                assert self._store is not None
                # §9.1: store the CTR high-water mark before using the CTR.
                self._limit = self._store.reserve(self._key_id, ctr)
            self._next = ctr + 1
        return self._key.seal(ctr, encode_header(self.kid, ctr), metadata, plaintext)


@dataclass(frozen=True, slots=True)
class Decrypted:
    """An authenticated frame: the KID and CTR of its header and the plaintext."""

    kid: int
    ctr: int
    plaintext: bytes


class _ReceiverKey:
    """A decrypt-only key with its epoch and anti-replay window (§9.3)."""

    __slots__ = ("bits", "epoch", "fingerprint", "frame_key", "top")

    def __init__(self, frame_key: FrameKey, epoch: int, fingerprint: bytes) -> None:
        self.frame_key = frame_key
        self.epoch = epoch
        self.fingerprint = fingerprint
        self.top = -1  # highest CTR accepted so far
        self.bits = 0  # bit i set: CTR top - i accepted


class ReceiverContext:
    """Decrypts frames from any sender whose key was added, by the KID in the header (§4.4.4).

    Args:
        replay_window: how many CTR values below the highest accepted one are still accepted (once
            each) to tolerate reordering; older ones are dropped as replays (§9.3). 0 accepts only
            strictly increasing CTR values.
        max_epochs: how many key epochs are kept; adding a key of a newer epoch beyond this retires
            the oldest epoch and all its keys.
    """

    def __init__(self, *, replay_window: int = 1024, max_epochs: int = 3) -> None:
        if type(replay_window) is not int or replay_window < 0:
            raise InvalidParameterError("replay_window", f"must be an integer >= 0, got {replay_window!r}")
        if type(max_epochs) is not int or max_epochs < 1:
            raise InvalidParameterError("max_epochs", f"must be an integer >= 1, got {max_epochs!r}")
        self.replay_window = replay_window
        self.max_epochs = max_epochs
        self._keys: dict[int, _ReceiverKey] = {}
        self._epochs: dict[int, set[int]] = {}
        self._drops: dict[str, int] = dict.fromkeys(_DROP_REASONS, 0)
        self.drops: Mapping[str, int] = MappingProxyType(self._drops)
        self._lock = threading.Lock()

    # --- key management -------------------------------------------------------------------------

    def add_key(
        self,
        kid: int,
        base_key: bytes,
        cipher_suite: int,
        *,
        epoch: int = 0,
        usage: KeyUsage = KeyUsage.DECRYPT,
    ) -> None:
        """Add (or replace) the decryption key of ``kid`` in ``epoch``.

        Re-adding the same key keeps its replay window; a different key for a known KID starts a
        fresh one. A key of a new epoch beyond ``max_epochs`` retires the oldest epoch.

        Raises:
            KeyUsageError: ``usage`` is not ``KeyUsage.DECRYPT`` (§4.4.1: never both).
            InvalidParameterError: bad KID, key or epoch, or ``epoch`` is older than every retained
                epoch while ``max_epochs`` are already held.
            UnsupportedCipherSuiteError: not an RFC 9605 suite.
        """
        kid = _check_kid(kid)
        if usage is not KeyUsage.DECRYPT:
            raise KeyUsageError(kid, usage.value if isinstance(usage, KeyUsage) else str(usage), "decrypt")
        if type(epoch) is not int or epoch < 0:
            raise InvalidParameterError("epoch", f"must be an integer >= 0, got {epoch!r}")
        suite = get_suite(cipher_suite)
        key = check_base_key(base_key)
        label = b"roomagent sframe receiver key" + suite.value.to_bytes(2, "big")
        fingerprint = hmac.digest(key, label, "sha256")  # one-way: tells keys apart, reveals nothing
        with self._lock:
            full = len(self._epochs) >= self.max_epochs
            if full and epoch not in self._epochs and epoch < min(self._epochs):
                raise InvalidParameterError(
                    "epoch", f"{epoch} is older than every retained epoch ({sorted(self._epochs)})"
                )
            old = self._keys.get(kid)
            entry = _ReceiverKey(FrameKey.derive(suite, kid, key, KeyUsage.DECRYPT), epoch, fingerprint)
            if old is not None:
                self._epochs[old.epoch].discard(kid)
                if hmac.compare_digest(old.fingerprint, fingerprint):
                    entry.top, entry.bits = old.top, old.bits
            self._keys[kid] = entry
            self._epochs.setdefault(epoch, set()).add(kid)
            retired = []
            while len(self._epochs) > self.max_epochs:
                oldest = min(self._epochs)
                self._retire_locked(oldest)
                retired.append(oldest)
        _log.info("sframe_key_added", kid=kid, epoch=epoch, cipher_suite=suite.value, retired_epochs=retired)

    def _retire_locked(self, epoch: int) -> int:
        kids = self._epochs.pop(epoch, set())
        for kid in kids:
            entry = self._keys.get(kid)
            if entry is not None and entry.epoch == epoch:
                del self._keys[kid]
        return len(kids)

    def retire_epoch(self, epoch: int) -> None:
        """Forget every key of ``epoch`` (no-op for an unknown epoch)."""
        with self._lock:
            count = self._retire_locked(epoch)
        _log.info("sframe_epoch_retired", epoch=epoch, keys=count)

    def remove_key(self, kid: int) -> None:
        """Forget the key of ``kid`` (no-op for an unknown KID)."""
        with self._lock:
            entry = self._keys.pop(kid, None)
            if entry is not None:
                kids = self._epochs.get(entry.epoch)
                if kids is not None:
                    kids.discard(kid)
                    if not kids:
                        del self._epochs[entry.epoch]
        _log.info("sframe_key_removed", kid=kid, known=entry is not None)

    @property
    def epochs(self) -> tuple[int, ...]:
        """Retained epochs, oldest first."""
        with self._lock:
            return tuple(sorted(self._epochs))

    def kids(self) -> frozenset[int]:
        """The KIDs that currently have a key."""
        with self._lock:
            return frozenset(self._keys)

    # --- decryption -----------------------------------------------------------------------------

    def decrypt(self, metadata: bytes, ciphertext: bytes) -> Decrypted:
        """Authenticate and decrypt one SFrame ciphertext (§4.4.4), then apply anti-replay (§9.3).

        Raises:
            SFrameError: :class:`SFrameHeaderError` or :class:`MalformedCiphertextError` (counted as
                ``malformed``), :class:`UnknownKidError` (``unknown_kid``),
                :class:`AuthenticationError` (``auth_failed``), :class:`ReplayError` (``replay``),
                :class:`InvalidParameterError` for non-bytes arguments (not counted).
        """
        if type(metadata) is not bytes:
            metadata = _as_bytes("metadata", metadata)
        if not isinstance(ciphertext, bytes | bytearray | memoryview):
            raise InvalidParameterError("ciphertext", f"must be bytes, got {type(ciphertext).__name__}")
        try:
            view = memoryview(ciphertext).cast("B")
            kid, ctr, hlen = decode_header(view)
            entry = self._keys.get(kid)
            if entry is None:
                raise UnknownKidError(kid)
            # Cheap pre-check on the (public) header before spending an AEAD call on a replay.
            self._check_replay(entry, kid, ctr)
            plaintext = entry.frame_key.open(ctr, bytes(view[:hlen]), metadata, view[hlen:])
            with self._lock:
                # Re-check under the lock: two threads may have raced with the same CTR.
                self._check_replay(entry, kid, ctr)
                self._accept(entry, ctr)
        except SFrameError as exc:
            reason = "malformed" if isinstance(exc, MalformedCiphertextError) else exc.reason
            if reason in self._drops:
                with self._lock:
                    self._drops[reason] += 1
            raise
        return Decrypted(kid, ctr, plaintext)

    def _check_replay(self, entry: _ReceiverKey, kid: int, ctr: int) -> None:
        # §9.3 / RFC 3711 §3.3.2: newer than the top is fresh; within the window only if unseen.
        if ctr > entry.top:
            return
        delta = entry.top - ctr
        if delta >= self.replay_window:
            raise ReplayError(kid, ctr, too_old=True)
        if (entry.bits >> delta) & 1:
            raise ReplayError(kid, ctr, too_old=False)

    def _accept(self, entry: _ReceiverKey, ctr: int) -> None:
        if ctr > entry.top:
            shift = ctr - entry.top
            if self.replay_window == 0 or shift >= self.replay_window:
                entry.bits = 1
            else:
                entry.bits = ((entry.bits << shift) | 1) & ((1 << self.replay_window) - 1)
            entry.top = ctr
        else:
            entry.bits |= 1 << (entry.top - ctr)
