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
import io
import itertools
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import structlog
from cryptography.exceptions import InvalidTag

from agent.e2ee.counter import CounterStore, counter_key_id
from agent.e2ee.errors import (
    AuthenticationError,
    CounterExhaustedError,
    InvalidParameterError,
    KeyUsageError,
    MalformedCiphertextError,
    ReplayError,
    SFrameError,
    UnknownKidError,
)
from agent.e2ee.header import MAX_HEADER_LENGTH, MAX_VALUE, KidHeaders, decode_header
from agent.e2ee.suites import MAX_FRAME_BYTES, FrameKey, KeyUsage, check_base_key, get_suite

_log = structlog.get_logger()

_DROP_REASONS = ("unknown_kid", "auth_failed", "replay", "malformed")
_IN_PLACE_MIN = 64 * 1024  # SenderContext.encrypt seals frames from this size on in place
_SLICE_MAX = 4096  # frames up to this size are sliced (copied) for the AEAD, larger ones viewed


def _check_kid(kid: object) -> int:
    if type(kid) is not int or not 0 <= kid <= MAX_VALUE:
        raise InvalidParameterError("kid", f"must be an integer in 0..2^64-1, got {kid!r}")
    return kid


def _seal_in_place(
    gcm_encrypt_into: Callable[[bytes, bytes, bytes, memoryview], int],
    header: bytes,
    nonce: bytes,
    aad: bytes,
    plaintext: bytes,
) -> bytes:
    # A large frame is encrypted straight into the bytes object that is returned, after the header,
    # instead of copying the AEAD output behind the header (a second pass over the frame). BytesIO
    # owns the zeroed bytes object alone (the argument is a temporary), so getbuffer() gives a
    # writable view of it and getvalue() hands back that same object. Should an interpreter copy in
    # either step, the result is the same, only slower.
    hlen = len(header)
    out = io.BytesIO(bytes(hlen + len(plaintext) + 16))
    with out.getbuffer() as view:
        view[:hlen] = header
        gcm_encrypt_into(nonce, plaintext, aad, view[hlen:])
    return out.getvalue()


class SenderContext:
    """Encrypts frames with one sender key (KID) and a strictly increasing CTR.

    With a ``counter_store`` the CTR survives restarts and crashes: CTR values are reserved in blocks
    persisted before use (§9.1; ADR 0001). Without one the CTR starts at 0 and lives only in memory,
    which is safe only when (base_key, KID) is fresh for this process: a key generated at start, or
    a KID never used with this key before (KID is part of the key derivation, §4.4.2).

    Raises:
        InvalidParameterError / UnsupportedCipherSuiteError: bad suite, key or KID.
        CounterStoreError: the store cannot be read.
    """

    __slots__ = (
        "_counter",
        "_gcm_encrypt",
        "_gcm_encrypt_into",
        "_headers",
        "_key",
        "_key_id",
        "_limit",
        "_lock",
        "_salt",
        "_span",
        "_store",
        "cipher_suite",
        "kid",
        "max_overhead",
    )

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
        gcm = self._key.gcm
        self._gcm_encrypt = None if gcm is None else gcm.encrypt  # bound once: per-frame hot path
        self._gcm_encrypt_into = None if gcm is None else gcm.encrypt_into
        self.max_overhead = MAX_HEADER_LENGTH + suite.nt
        self._salt = self._key.salt
        self._headers = KidHeaders(kid)
        self._store = counter_store
        self._lock = threading.Lock()
        if counter_store is None:
            self._key_id = ""
            first = 0
            self._limit = MAX_VALUE + 1
        else:
            self._key_id = counter_key_id(suite.value, key, kid)
            # Every CTR below the high-water mark may have been used before a restart or crash.
            first = counter_store.high_water(self._key_id)
            self._limit = first  # nothing reserved yet in this process
        self._counter = itertools.count(first)
        # (lo, hi, high, length): every CTR in lo..hi-1 is reserved and has a header of ``length``
        # bytes, (high | CTR).to_bytes(length); empty until the first frame.
        self._span = (0, 0, 0, 0)
        _log.debug("sframe_sender_ready", kid=kid, cipher_suite=suite.value, first_ctr=first)

    @property
    def next_ctr(self) -> int:
        """The CTR the next :meth:`encrypt` will use (``2^64`` or more once exhausted)."""
        # repr(itertools.count(n)) is "count(n)"; peeking any other way would consume a CTR.
        return int(repr(self._counter)[6:-1])

    def encrypt(self, metadata: bytes, plaintext: bytes) -> bytes:
        """Encrypt one frame and return the whole SFrame ciphertext (header + ciphertext + tag).

        Raises:
            CounterExhaustedError: CTR 2^64-1 has been used; a new key (or KID) is needed (§7.4).
            CounterStoreError: the next CTR block could not be persisted; nothing was encrypted.
            InvalidParameterError: metadata or plaintext is not bytes.
        """
        # This is the per-frame hot path (4K30 in Python): int ops and one AEAD call, no copies
        # beyond the one that puts the header in front of the ciphertext.
        # next() on itertools.count is atomic: each call gets its own CTR without a lock.
        ctr = next(self._counter)
        lo, hi, high, length = self._span
        header = (high | ctr).to_bytes(length, "big") if lo <= ctr < hi else self._header(ctr)
        try:
            size = len(plaintext)
            gcm_encrypt = self._gcm_encrypt
            if gcm_encrypt is not None:
                # §4.4.3: nonce = salt XOR CTR; AAD = header + metadata.
                nonce = (self._salt ^ ctr).to_bytes(12, "big")
                if size < _IN_PLACE_MIN:  # also far below MAX_FRAME_BYTES: one compare per packet
                    return header + gcm_encrypt(nonce, plaintext, header + metadata)
            if size > MAX_FRAME_BYTES:
                raise InvalidParameterError("plaintext", f"{size} bytes, cap {MAX_FRAME_BYTES}")
            gcm_encrypt_into = self._gcm_encrypt_into
            if gcm_encrypt_into is not None:
                if type(plaintext) is bytes:  # len() is the byte count (not so for every buffer)
                    return _seal_in_place(gcm_encrypt_into, header, nonce, header + metadata, plaintext)
                return header + gcm_encrypt(nonce, plaintext, header + metadata)  # type: ignore[misc]
            return self._key.seal(ctr, header, metadata, plaintext)
        except TypeError as exc:
            raise InvalidParameterError("metadata/plaintext", f"must be bytes: {exc}") from exc

    def encrypt_into(self, metadata: bytes, plaintext: bytes, out: bytearray | memoryview) -> int:
        """Like :meth:`encrypt`, but write the SFrame ciphertext into ``out`` and return its length.

        Zero-copy for the GCM suites (the ciphertext is written in place after the header): for
        large video frames this saves the copy that :meth:`encrypt` makes to put the header in front.
        ``out`` must be writable and hold ``len(plaintext) + max_overhead`` bytes.

        Raises:
            InvalidParameterError: ``out`` is too small or read-only (checked before a CTR is used),
                or the arguments are not bytes.
            CounterExhaustedError, CounterStoreError: as :meth:`encrypt`.
        """
        try:
            view = memoryview(out).cast("B")
            size = len(plaintext)
        except TypeError as exc:
            raise InvalidParameterError("out/plaintext", f"must be buffers: {exc}") from exc
        if view.readonly or len(view) < size + self.max_overhead:
            raise InvalidParameterError(
                "out", f"needs a writable buffer of at least {size + self.max_overhead} bytes"
            )
        if size > MAX_FRAME_BYTES:
            raise InvalidParameterError("plaintext", f"{size} bytes, cap {MAX_FRAME_BYTES}")
        ctr = next(self._counter)
        lo, hi, high, length = self._span
        header = (high | ctr).to_bytes(length, "big") if lo <= ctr < hi else self._header(ctr)
        hlen = len(header)
        try:
            gcm_encrypt_into = self._gcm_encrypt_into
            if gcm_encrypt_into is not None:
                view[:hlen] = header
                end = hlen + size + 16
                # §4.4.3, written in place: nonce = salt XOR CTR; AAD = header + metadata.
                nonce = (self._salt ^ ctr).to_bytes(12, "big")
                gcm_encrypt_into(nonce, plaintext, header + metadata, view[hlen:end])
                return end
            sealed = self._key.seal(ctr, header, metadata, plaintext)
            view[: len(sealed)] = sealed
            return len(sealed)
        except TypeError as exc:
            raise InvalidParameterError("metadata/plaintext", f"must be bytes: {exc}") from exc

    def _header(self, ctr: int) -> bytes:
        # Slow path of the header: reserve ``ctr`` if needed, then record the span of CTRs that
        # share its header length and are reserved. Threads may store spans in any order: each is
        # correct for every CTR inside it (lo bounds it below, so a late CTR never gets a longer,
        # non-minimal header), and its hi never exceeds a persisted high-water mark.
        if ctr >= self._limit:
            self._reserve(ctr)
        if ctr < 8:
            return self._headers.short[ctr]
        clen = (ctr.bit_length() + 7) >> 3
        headers = self._headers
        high, length = headers.high[clen], headers.length[clen]
        lo = 8 if clen == 1 else 1 << ((clen - 1) << 3)  # CTR 0-7 sits in the config byte (§4.3)
        self._span = (lo, min(self._limit, 1 << (clen << 3)), high, length)
        return (high | ctr).to_bytes(length, "big")

    def _reserve(self, ctr: int) -> None:
        # Slow path, before ``ctr`` is used. Invariant: every CTR handed out is below a persisted
        # high-water mark. Threads that race here reserve in any order; the mark only grows, and
        # each reserve(ctr) persists a mark above its own ctr before that ctr is used.
        if ctr > MAX_VALUE or self._store is None:  # without a store the limit is 2^64
            raise CounterExhaustedError(self.kid)
        with self._lock:
            if ctr >= self._limit:
                # §9.1: store the CTR high-water mark before using the CTR.
                self._limit = self._store.reserve(self._key_id, ctr)


@dataclass(frozen=True, slots=True)
class Decrypted:
    """An authenticated frame: the KID and CTR of its header and the plaintext."""

    kid: int
    ctr: int
    plaintext: bytes


_new_decrypted = object.__new__
_set_kid = Decrypted.kid.__set__  # type: ignore[attr-defined,misc]
_set_ctr = Decrypted.ctr.__set__  # type: ignore[attr-defined,misc]
_set_plaintext = Decrypted.plaintext.__set__  # type: ignore[attr-defined,misc]


def _decrypted(kid: int, ctr: int, plaintext: bytes) -> Decrypted:
    # Same object as Decrypted(kid, ctr, plaintext), built through the slot descriptors: the frozen
    # dataclass __init__ (object.__setattr__ per field) costs about as much as a 1 KB AES-GCM call.
    d: Decrypted = _new_decrypted(Decrypted)
    _set_kid(d, kid)
    _set_ctr(d, ctr)
    _set_plaintext(d, plaintext)
    return d


class _ReceiverKey:
    """A decrypt-only key with its epoch and anti-replay window (§9.3)."""

    __slots__ = ("bits", "epoch", "fingerprint", "frame_key", "gcm", "salt", "top")

    def __init__(self, frame_key: FrameKey, epoch: int, fingerprint: bytes) -> None:
        self.frame_key = frame_key
        self.gcm = frame_key.gcm
        self.salt = frame_key.salt
        self.epoch = epoch
        self.fingerprint = fingerprint
        self.top = -1  # highest CTR accepted so far
        self.bits = 0  # bit i set: CTR top - i accepted


_AeadDecrypt = Callable[[bytes, bytes | memoryview, bytes], bytes]
_FastConfig = tuple[_ReceiverKey, _AeadDecrypt, int, int, int, int, int, int, int]


def _fast_config(entry: _ReceiverKey, gcm_decrypt: _AeadDecrypt, config: int) -> _FastConfig:
    # (entry, its AES-GCM decrypt, salt, KID, header length, header base, smallest CTR, shortest
    # and longest frame) for a config byte with X=0. The header read as one big-endian int is
    # base + CTR (§4.3); a CTR below the smallest one is not minimally encoded, and lengths outside
    # the range are malformed: the fast path leaves both to the general path, which raises the
    # typed error.
    kid = config >> 4
    if config & 0x08:  # Y=1: CTR in the clen bytes after the config byte
        clen = (config & 0x07) + 1
        hlen = 1 + clen
        base = config << (clen << 3)
        smallest = 8 if clen == 1 else 1 << ((clen - 1) << 3)
    else:  # Y=0: CTR 0-7 in the config byte
        hlen, base, smallest = 1, config & 0xF8, 0
    return entry, gcm_decrypt, entry.salt, kid, hlen, base, smallest, hlen + 16, hlen + 16 + MAX_FRAME_BYTES


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
        self._mask = (1 << replay_window) - 1
        self.max_epochs = max_epochs
        self._keys: dict[int, _ReceiverKey] = {}
        self._epochs: dict[int, set[int]] = {}
        self._drops: dict[str, int] = dict.fromkeys(_DROP_REASONS, 0)
        self.drops: Mapping[str, int] = MappingProxyType(self._drops)
        self._lock = threading.Lock()
        self._fast: tuple[_FastConfig | None, ...] = (None,) * 256

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
            self._rebuild_fast_locked()
        _log.info("sframe_key_added", kid=kid, epoch=epoch, cipher_suite=suite.value, retired_epochs=retired)

    def _rebuild_fast_locked(self) -> None:
        # The fast-path table of decrypt: for each config byte of a GCM key with KID 0-7 (§4.3: X=0),
        # the key and everything the config byte fixes. Replaced whole (one atomic store), so a
        # concurrent decrypt sees either the old table or the new one.
        fast: list[_FastConfig | None] = [None] * 256
        for kid in range(8):
            entry = self._keys.get(kid)
            if entry is None or entry.gcm is None:
                continue
            for config in range(kid << 4, (kid << 4) + 16):
                fast[config] = _fast_config(entry, entry.gcm.decrypt, config)
        self._fast = tuple(fast)

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
            self._rebuild_fast_locked()
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
            self._rebuild_fast_locked()
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
        # Fast path, the common case of a media stream: bytes in, a GCM key with KID 0-7, a
        # minimally encoded header, a CTR above every CTR accepted so far. One table lookup by the
        # config byte gives the key and the header layout; anything else (and every error) takes
        # the general path below, which raises the same typed errors and counts the same drops.
        if type(ciphertext) is bytes and type(metadata) is bytes and ciphertext:
            fast = self._fast[ciphertext[0]]
            if fast is not None:
                entry, gcm_decrypt, salt, kid, hlen, base, smallest, shortest, longest = fast
                header = ciphertext[:hlen]
                ctr = int.from_bytes(header, "big") - base
                n = len(ciphertext)
                if shortest <= n <= longest and ctr >= smallest and ctr > entry.top:
                    try:
                        # §4.4.4: nonce = salt XOR CTR, AAD = header + metadata. Small frames are
                        # sliced (a copy is cheaper than a memoryview), large ones are not copied.
                        plaintext = gcm_decrypt(
                            (salt ^ ctr).to_bytes(12, "big"),
                            ciphertext[hlen:] if n <= _SLICE_MAX else memoryview(ciphertext)[hlen:],
                            header + metadata,
                        )
                    except InvalidTag:
                        self._count_drop("auth_failed")
                        raise AuthenticationError(kid, ctr) from None
                    # §9.3 window, decided under the lock: another thread may have accepted this
                    # CTR or a higher one since the check above. (acquire/release in try/finally is
                    # the `with` statement without its two extra method lookups and calls.)
                    lock = self._lock
                    lock.acquire()
                    try:
                        top = entry.top
                        if ctr > top:
                            shift = ctr - top
                            window = self.replay_window
                            entry.bits = ((entry.bits << shift) | 1) & self._mask if shift < window else 1
                            entry.top = ctr
                            replay = None
                        else:
                            replay = self._accept_old(entry, top - ctr)
                    finally:
                        lock.release()
                    if replay is not None:
                        self._count_drop("replay")
                        raise ReplayError(kid, ctr, too_old=replay)
                    d: Decrypted = _new_decrypted(Decrypted)
                    _set_kid(d, kid)
                    _set_ctr(d, ctr)
                    _set_plaintext(d, plaintext)
                    return d
        return self._decrypt_general(metadata, ciphertext)

    def _count_drop(self, reason: str) -> None:
        with self._lock:
            self._drops[reason] += 1

    def _decrypt_general(self, metadata: bytes, ciphertext: bytes) -> Decrypted:
        # One header parse, one dict lookup, one AEAD call, int ops for the window; the ciphertext
        # is passed to the AEAD as a memoryview (no copy).
        if type(ciphertext) is bytes:
            view = memoryview(ciphertext)
            head = ciphertext[:MAX_HEADER_LENGTH]
        else:
            try:
                view = memoryview(ciphertext).cast("B")
            except TypeError as exc:
                raise InvalidParameterError("ciphertext", f"must be bytes: {exc}") from exc
            head = bytes(view[:MAX_HEADER_LENGTH])
        if type(metadata) is bytes:
            aad_tail = metadata
        else:
            try:
                aad_tail = bytes(memoryview(metadata))
            except TypeError as exc:
                raise InvalidParameterError("metadata", f"must be bytes: {exc}") from exc
        try:
            kid, ctr, hlen = decode_header(head)
            entry = self._keys.get(kid)
            if entry is None:
                raise UnknownKidError(kid)
            if ctr <= entry.top:
                # Cheap pre-check on the (public) header before spending an AEAD call on a replay.
                self._check_replay(entry, kid, ctr)
            header = head[:hlen]
            gcm = entry.gcm
            if gcm is not None:
                if not 16 <= len(view) - hlen <= MAX_FRAME_BYTES + 16:
                    raise MalformedCiphertextError(
                        f"{len(view) - hlen} bytes after the header: not in 16 (the tag) .. "
                        f"{MAX_FRAME_BYTES + 16}",
                        length=len(view),
                    )
                try:
                    # §4.4.4: nonce = salt XOR CTR, AAD = header + metadata.
                    nonce = (entry.salt ^ ctr).to_bytes(12, "big")
                    plaintext = gcm.decrypt(nonce, view[hlen:], header + aad_tail)
                except InvalidTag:
                    raise AuthenticationError(kid, ctr) from None
            else:
                plaintext = entry.frame_key.open(ctr, header, aad_tail, view[hlen:])
            with self._lock:
                # Decided under the lock: two threads may race with the same CTR. (§9.3 window,
                # inlined: this runs once per frame.)
                top = entry.top
                if ctr > top:
                    shift = ctr - top
                    entry.bits = ((entry.bits << shift) | 1) & self._mask if shift < self.replay_window else 1
                    entry.top = ctr
                    replay = None
                else:
                    replay = self._accept_old(entry, top - ctr)
            if replay is not None:
                raise ReplayError(kid, ctr, too_old=replay)
        except SFrameError as exc:
            reason = "malformed" if isinstance(exc, MalformedCiphertextError) else exc.reason
            if reason in self._drops:
                with self._lock:
                    self._drops[reason] += 1
            raise
        return _decrypted(kid, ctr, plaintext)

    def _check_replay(self, entry: _ReceiverKey, kid: int, ctr: int) -> None:
        # §9.3 / RFC 3711 §3.3.2: newer than the top is fresh; within the window only if unseen.
        delta = entry.top - ctr
        if delta < 0:
            return
        if delta >= self.replay_window:
            raise ReplayError(kid, ctr, too_old=True)
        if (entry.bits >> delta) & 1:
            raise ReplayError(kid, ctr, too_old=False)

    def _accept_old(self, entry: _ReceiverKey, delta: int) -> bool | None:
        """Record the CTR ``delta`` below the top; ``None`` if fresh, else whether it is too old."""
        if delta >= self.replay_window:
            return True
        if (entry.bits >> delta) & 1:
            return False
        entry.bits |= 1 << delta
        return None
