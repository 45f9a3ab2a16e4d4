"""Puts the meeting keys of :class:`~agent.privacy.key_packages.KeyManager` into the SFrame contexts.

- This device's own key becomes an encrypt-only :class:`~agent.e2ee.context.SenderContext` (RFC 9605
  §4.4.1) handed to the media pipeline's :class:`~agent.media.key_source.KeySource` (which makes the pipeline
  send a keyframe under the new key at once). With a ``CounterStore`` the CTR high-water mark is
  persisted ahead of use (§9.1), so even a key package delivered again after a crash never reuses a
  (key, KID, CTR).
- Every other sender's key becomes a decrypt-only key of one :class:`~agent.e2ee.context.ReceiverContext`
  in its epoch; keys the manager no longer lists (retired epoch, expired) are removed.
- No sender key (idle, locked, expired) means ``KeySource.set_sender(None)``: media stops, nothing
  leaves unencrypted.
"""

from __future__ import annotations

__all__ = ["MeetingOpener", "MeetingSealer", "SFrameKeyTarget"]

from collections.abc import Callable

import structlog

from agent.e2ee.context import ReceiverContext, SenderContext
from agent.e2ee.counter import CounterStore
from agent.media.key_source import KeySource
from agent.privacy.key_packages import KeySet, MeetingKey


class MeetingSealer:
    """A meeting sender key as the media pipeline's ``FrameSealer``."""

    __slots__ = ("_context",)

    def __init__(self, context: SenderContext) -> None:
        self._context = context

    @property
    def kid(self) -> int:
        return self._context.kid

    def seal(self, metadata: bytes, plaintext: bytes) -> bytes:
        return self._context.encrypt(metadata, plaintext)


class MeetingOpener:
    """The meeting receive keys as the media receiver's ``FrameOpener``."""

    __slots__ = ("context",)

    def __init__(self, context: ReceiverContext) -> None:
        self.context = context

    def open(self, metadata: bytes, ciphertext: bytes) -> bytes:
        return self.context.decrypt(metadata, ciphertext).plaintext


class SFrameKeyTarget:
    """A :class:`~agent.privacy.key_packages.KeyTarget` driving the SFrame sender and receiver contexts.

    Args:
        key_source: the media pipeline's current-sender holder.
        receiver: the receiver context frames from other rooms are decrypted with.
        counter_store: persists sender CTR high-water marks (recommended on a device).
        on_change: called with each key set after it is installed (e.g. shutter and state updates).
    """

    def __init__(
        self,
        key_source: KeySource,
        receiver: ReceiverContext | None = None,
        *,
        counter_store: CounterStore | None = None,
        on_change: Callable[[KeySet], None] | None = None,
    ) -> None:
        self.key_source = key_source
        self.receiver = receiver if receiver is not None else ReceiverContext()
        self.opener = MeetingOpener(self.receiver)
        self._store = counter_store
        self._on_change = on_change
        self._own: MeetingKey | None = None
        self._sealer: MeetingSealer | None = None
        self._peers: dict[int, MeetingKey] = {}
        self._log = structlog.get_logger()

    def apply_keys(self, keys: KeySet) -> None:
        if keys.own != self._own:
            if keys.own is None:
                self._sealer = None
                self.key_source.set_sender(None, 0)
            else:
                own = keys.own
                context = SenderContext(own.suite, own.base_key, own.kid, counter_store=self._store)
                self._sealer = MeetingSealer(context)
                self.key_source.set_sender(self._sealer, own.epoch, origin="meeting")
            self._own = keys.own
        wanted = {k.kid: k for k in keys.peers}
        for kid, key in self._peers.items():
            if wanted.get(kid) != key:
                self.receiver.remove_key(kid)
        for kid, key in wanted.items():
            if self._peers.get(kid) != key:
                self.receiver.add_key(kid, key.base_key, key.suite, epoch=key.epoch)
        self._peers = wanted
        if self._on_change is not None:
            self._on_change(keys)

    def bind_key_source(self, key_source: KeySource) -> None:
        """Drive another ``KeySource`` (the media path's, once it exists) with the current sender key."""
        if key_source is self.key_source:
            return
        self.key_source = key_source
        if self._sealer is not None and self._own is not None:
            key_source.set_sender(self._sealer, self._own.epoch, origin="meeting")
