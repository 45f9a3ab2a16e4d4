"""SFrame keys for the media path: the current sender, and lab key files for runs without a meeting.

A meeting's keys arrive as customer-signed key packages (``agent.privacy``); whoever opens them calls
:meth:`KeySource.set_sender` with a sealer and the epoch, and the pipeline sends a keyframe under the
new key at once. For lab runs, ``[e2ee] lab_key_file`` in the *local* config names a JSON file that
sender and receiver share (never accepted from a pushed document)::

    {"format": "roomagent-lab-key/1", "suite": 4, "kid": 7, "key_hex": "<32+ bytes, hex>"}

Nonce safety with a long-lived lab key (RFC 9605 §9.1: never the same key, KID and CTR twice):
every lab sender (:class:`LabSender`) takes a fresh random 32-bit KID suffix,
``KID = kid << 32 | random``, so a restart derives a fresh sframe_key (§4.4.2: the KID is in the
derivation label) and CTR may start from 0 again.
A :class:`LabReceiver` accepts any KID whose high part is the file's ``kid``.
"""

from __future__ import annotations

__all__ = [
    "LAB_KEY_FORMAT",
    "ContextOpener",
    "FrameOpener",
    "FrameSealer",
    "KeySource",
    "LabKey",
    "LabReceiver",
    "LabSender",
    "load_lab_key",
    "write_lab_key",
]

import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from agent.e2ee.context import Decrypted, ReceiverContext, SenderContext
from agent.e2ee.sframe import SFrameError, UnknownKidError
from agent.e2ee.suites import check_base_key, get_suite
from agent.errors import StateError
from agent.media.errors import KeyFileError
from agent.persist import atomic_write_json

LAB_KEY_FORMAT = "roomagent-lab-key/1"
_MAX_KEY_FILE = 4096
_log = structlog.get_logger()


class FrameSealer(Protocol):
    """Encrypts whole frames for one sender key (wraps an :class:`agent.e2ee.context.SenderContext`)."""

    @property
    def kid(self) -> int: ...

    def seal(self, metadata: bytes, plaintext: bytes) -> bytes:
        """The SFrame ciphertext (header included) of ``plaintext`` with AAD ``metadata``.

        Raises:
            agent.e2ee.sframe.SFrameError: e.g. the counter is exhausted; nothing was produced.
        """
        ...


class FrameOpener(Protocol):
    """Decrypts SFrame ciphertexts (wraps an :class:`agent.e2ee.context.ReceiverContext`)."""

    def open(self, metadata: bytes, ciphertext: bytes) -> bytes:
        """The plaintext. Raises agent.e2ee.sframe.SFrameError (unknown KID, bad tag, replay, ...)."""
        ...


@dataclass(frozen=True, slots=True)
class LabKey:
    suite: int
    kid: int
    key: bytes = field(repr=False)


def load_lab_key(path: Path) -> LabKey:
    """Read a lab key file.

    Raises:
        KeyFileError: unreadable, not our format, unknown suite, or a short key (never shows the key).
    """
    try:
        raw = Path(path).read_bytes()[: _MAX_KEY_FILE + 1]
    except OSError as exc:
        raise KeyFileError(str(path), exc.strerror or "unreadable") from exc
    if len(raw) > _MAX_KEY_FILE:
        raise KeyFileError(str(path), f"larger than {_MAX_KEY_FILE} bytes")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeyFileError(str(path), "not JSON") from exc
    if not isinstance(doc, dict) or doc.get("format") != LAB_KEY_FORMAT:
        raise KeyFileError(str(path), f"not a {LAB_KEY_FORMAT} file")
    if set(doc) != {"format", "suite", "kid", "key_hex"}:
        raise KeyFileError(str(path), "expected exactly the keys format, suite, kid, key_hex")
    suite, kid, key_hex = doc["suite"], doc["kid"], doc["key_hex"]
    if type(suite) is not int or type(kid) is not int or not isinstance(key_hex, str):
        raise KeyFileError(str(path), "suite and kid must be integers, key_hex a string")
    if not 0 <= kid < 1 << 31:
        raise KeyFileError(str(path), "kid must be 0..2^31-1")
    try:
        raw_key = bytes.fromhex(key_hex)
    except ValueError as exc:
        raise KeyFileError(str(path), "key_hex is not hex") from exc
    try:
        get_suite(suite)
        key = check_base_key(raw_key)
    except SFrameError as exc:  # unsupported suite, short key (the message never holds key bytes)
        raise KeyFileError(str(path), str(exc)) from exc
    return LabKey(suite=suite, kid=kid, key=key)


def write_lab_key(path: Path, *, suite: int = 4, kid: int | None = None) -> LabKey:
    """Create a fresh lab key file (mode 0600, written atomically); refuses to overwrite one.

    Raises:
        KeyFileError: the file exists or cannot be written.
    """
    path = Path(path)
    if path.exists():
        raise KeyFileError(str(path), "exists; refusing to overwrite a key")
    suite_info = get_suite(suite)
    key_bytes = secrets.token_bytes(max(32, suite_info.nk))
    key = LabKey(suite=suite, kid=secrets.randbelow(1 << 16) if kid is None else kid, key=key_bytes)
    try:
        atomic_write_json(
            path, {"format": LAB_KEY_FORMAT, "suite": key.suite, "kid": key.kid, "key_hex": key.key.hex()}
        )
    except StateError as exc:
        raise KeyFileError(str(path), exc.reason) from exc
    return key


class LabSender:
    """An SFrame sender for a lab key with a KID fresh for this process (see the module docstring).

    A fresh KID derives a fresh sframe_key (§4.4.2), so an in-memory CTR from 0 never repeats a
    (key, KID, CTR) triple (§9.1) and no counter store is needed.
    """

    __slots__ = ("context",)

    def __init__(self, lab: LabKey) -> None:
        self.context = SenderContext(lab.suite, lab.key, (lab.kid << 32) | secrets.randbits(32))

    @property
    def kid(self) -> int:
        return self.context.kid

    def seal(self, metadata: bytes, plaintext: bytes) -> bytes:
        return self.context.encrypt(metadata, plaintext)


class LabReceiver:
    """Opens frames from any :class:`LabSender` of the same lab key (§4.4.4), with anti-replay (§9.3).

    A KID in the lab namespace (``kid >> 32`` equal to the file's ``kid``) is added to the underlying
    :class:`ReceiverContext` when first seen, as a new epoch, so only the last few senders' keys are
    kept; any other KID is an unknown KID.
    """

    def __init__(self, lab: LabKey, *, max_senders: int = 4) -> None:
        self._lab = lab
        self.context = ReceiverContext(max_epochs=max_senders)
        self._epoch = 0
        self._lock = threading.Lock()

    def open(self, metadata: bytes, ciphertext: bytes) -> bytes:
        return self.decrypt(metadata, ciphertext).plaintext

    def decrypt(self, metadata: bytes, ciphertext: bytes) -> Decrypted:
        try:
            return self.context.decrypt(metadata, ciphertext)
        except UnknownKidError as exc:
            if exc.kid >> 32 != self._lab.kid:
                raise
            with self._lock:
                if exc.kid not in self.context.kids():
                    self._epoch += 1
                    self.context.add_key(exc.kid, self._lab.key, self._lab.suite, epoch=self._epoch)
        return self.context.decrypt(metadata, ciphertext)


class ContextOpener:
    """A :class:`ReceiverContext` (meeting keys by KID and epoch) as a :class:`FrameOpener`."""

    __slots__ = ("context",)

    def __init__(self, context: ReceiverContext) -> None:
        self.context = context

    def open(self, metadata: bytes, ciphertext: bytes) -> bytes:
        return self.context.decrypt(metadata, ciphertext).plaintext


class KeySource:
    """The current SFrame sender and its epoch; a rotation makes every listener send a keyframe.

    Thread-safe: the pipeline reads it from its encode thread; key managers set it from the loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sealer: FrameSealer | None = None
        self._epoch = 0
        self._origin = "none"
        self._generation = 0
        self._listeners: list[Callable[[], None]] = []

    def set_sender(self, sealer: FrameSealer | None, epoch: int, *, origin: str = "meeting") -> None:
        """Switch to ``sealer`` (None: no key, media stops); listeners are told to send a keyframe."""
        with self._lock:
            self._sealer = sealer
            self._epoch = epoch
            self._origin = origin if sealer is not None else "none"
            self._generation += 1
            listeners = list(self._listeners)
        _log.info(
            "media_key_rotated", epoch=epoch, origin=self._origin, kid=None if sealer is None else sealer.kid
        )
        for listener in listeners:
            listener()

    def use_lab_key(self, lab: LabKey, *, path: Path | None = None) -> LabSender:
        """Send with a lab key: logged loudly (no key bytes) and visible in :meth:`describe`."""
        sender = LabSender(lab)
        _log.warning(
            "media_lab_key_in_use",
            path=None if path is None else str(path),
            suite=lab.suite,
            kid=sender.kid,
            note="lab key from local config: not a meeting key; do not use in production",
        )
        self.set_sender(sender, 0, origin="lab")
        return sender

    def current(self) -> tuple[FrameSealer | None, int, int]:
        """(sealer, epoch, generation)."""
        with self._lock:
            return self._sealer, self._epoch, self._generation

    def add_listener(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` after every rotation; returns a function that removes it."""
        with self._lock:
            self._listeners.append(callback)

        def remove() -> None:
            with self._lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return remove

    def describe(self) -> dict[str, Any]:
        """For the state report: origin (none, lab, meeting), epoch, KID. Never key bytes."""
        with self._lock:
            return {
                "origin": self._origin,
                "epoch": self._epoch,
                "kid": None if self._sealer is None else self._sealer.kid,
                "lab_key": self._origin == "lab",
            }
