"""SFrame keys for the media path: the current sender, and lab key files for runs without a meeting.

A meeting's keys arrive as customer-signed key packages (``agent.privacy``); whoever opens them calls
:meth:`KeySource.set_sender` with a sealer and the epoch, and the pipeline sends a keyframe under the
new key at once. For lab runs, ``[e2ee] lab_key_file`` in the *local* config names a JSON file that
sender and receiver share (never accepted from a pushed document)::

    {"format": "roomagent-lab-key/1", "suite": 4, "kid": 7, "key_hex": "<32+ bytes, hex>"}

Nonce safety with a long-lived lab key (RFC 9605 §9.1: never the same key, KID and CTR twice): every
:class:`LabSender` takes a fresh random 32-bit KID suffix, ``KID = kid << 32 | random``, so a restart
derives a fresh sframe_key (§4.4.2: the KID is in the derivation label) and CTR may start from 0 again.
A :class:`LabReceiver` accepts any KID whose high part is the file's ``kid``.
"""

from __future__ import annotations

__all__ = [
    "LAB_KEY_FORMAT",
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
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from agent.e2ee.header import decode_header, encode_header
from agent.e2ee.sframe import CounterExhaustedError, MalformedCiphertextError, SFrameError, UnknownKidError
from agent.e2ee.suites import FrameKey, KeyUsage, check_base_key, get_suite
from agent.errors import StateError
from agent.media.errors import KeyFileError
from agent.persist import atomic_write_json

LAB_KEY_FORMAT = "roomagent-lab-key/1"
_MAX_KEY_FILE = 4096
_MAX_CTR = (1 << 64) - 1
_log = structlog.get_logger()


class FrameSealer(Protocol):
    """Encrypts whole frames for one sender key (an SFrame sender context)."""

    @property
    def kid(self) -> int: ...

    def seal(self, metadata: bytes, plaintext: bytes) -> bytes:
        """The SFrame ciphertext (header included) of ``plaintext`` with AAD ``metadata``.

        Raises:
            agent.e2ee.sframe.SFrameError: e.g. the counter is exhausted; nothing was produced.
        """
        ...


class FrameOpener(Protocol):
    """Decrypts SFrame ciphertexts (an SFrame receiver context)."""

    def open(self, metadata: bytes, ciphertext: bytes) -> bytes:
        """The plaintext. Raises agent.e2ee.sframe.SFrameError (unknown KID, bad tag, ...)."""
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
        get_suite(suite)
        key = check_base_key(bytes.fromhex(key_hex))
    except ValueError as exc:
        raise KeyFileError(str(path), "key_hex is not hex") from exc
    except SFrameError as exc:  # unsupported suite, short key
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
    """An SFrame sender for a lab key: fresh KID per instance, CTR from 0, never wraps (§9.1)."""

    def __init__(self, lab: LabKey) -> None:
        self._kid = (lab.kid << 32) | secrets.randbits(32)
        self._key = FrameKey.derive(get_suite(lab.suite), self._kid, lab.key, KeyUsage.ENCRYPT)
        self._ctr = 0
        self._lock = threading.Lock()
        self.suite = lab.suite

    @property
    def kid(self) -> int:
        return self._kid

    def seal(self, metadata: bytes, plaintext: bytes) -> bytes:
        with self._lock:  # CTR is taken exactly once, even if two threads seal
            ctr = self._ctr
            if ctr > _MAX_CTR:
                raise CounterExhaustedError(self._kid)
            self._ctr = ctr + 1
        header = encode_header(self._kid, ctr)  # §4.3
        return self._key.seal(ctr, header, metadata, plaintext)  # §4.4.3


class LabReceiver:
    """Opens frames sealed by any :class:`LabSender` of the same lab key (§4.4.4).

    Derived keys are cached per KID (a bounded LRU); a KID outside the lab namespace is an unknown KID.
    """

    def __init__(self, lab: LabKey, *, max_kids: int = 16) -> None:
        self._lab = lab
        self._suite = get_suite(lab.suite)
        self._keys: OrderedDict[int, FrameKey] = OrderedDict()
        self._max = max_kids

    def open(self, metadata: bytes, ciphertext: bytes) -> bytes:
        view = memoryview(ciphertext)
        kid, ctr, hlen = decode_header(view)  # §4.3; raises SFrameHeaderError
        if kid >> 32 != self._lab.kid:
            raise UnknownKidError(kid)  # §4.4.4: no key for this KID
        if len(view) - hlen < self._suite.nt:
            raise MalformedCiphertextError("shorter than the tag", length=len(view))
        key = self._keys.get(kid)
        if key is None:
            key = FrameKey.derive(self._suite, kid, self._lab.key, KeyUsage.DECRYPT)
            self._keys[kid] = key
            if len(self._keys) > self._max:
                self._keys.popitem(last=False)
        self._keys.move_to_end(kid)
        return key.open(ctr, bytes(view[:hlen]), metadata, view[hlen:])


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
