"""Sender keys with a forward ratchet (RFC 9605 §5.1).

Each sender distributes a fresh base_key per *key generation*; between distributions it may ratchet
its key forward for forward secrecy::

    base_key[i+1] = HKDF-Expand(HKDF-Extract("", base_key[i]), "SFrame 1.0 Ratchet", CipherSuite.Nh)

and the KID carries the generation and the low R bits of the ratchet step::

    KID = (key_generation << R) + (ratchet_step % (1 << R))

:class:`SenderKeyRatchet` is the sending side (an encrypt-only key per step, §4.4.1);
:class:`SenderKeyReceiver` follows one sender: on a KID whose step is ahead of the newest known one
it ratchets a *candidate* key forward, and adopts it only once a frame authenticates with it, so a
forged header cannot move the ratchet (or burn CPU beyond ``max_ahead`` derivations). Old steps are
kept briefly for reordering (``keep_steps``) and then deleted, as §5.1 asks.
"""

from __future__ import annotations

__all__ = [
    "RATCHET_LABEL",
    "SenderKeyRatchet",
    "SenderKeyReceiver",
    "make_kid",
    "next_base_key",
    "split_kid",
]

from collections.abc import Mapping

import structlog

from agent.e2ee.context import CounterStore, Decrypted, ReceiverContext, SenderContext
from agent.e2ee.errors import AuthenticationError, InvalidParameterError, UnknownKidError
from agent.e2ee.header import decode_header
from agent.e2ee.suites import FrameKey, KeyUsage, check_base_key, get_suite, hkdf_expand, hkdf_extract

RATCHET_LABEL = b"SFrame 1.0 Ratchet"

_log = structlog.get_logger()


def next_base_key(cipher_suite: int, base_key: bytes) -> bytes:
    """One ratchet step of §5.1: ``HKDF-Expand(HKDF-Extract("", base_key), "SFrame 1.0 Ratchet", Nh)``."""
    suite = get_suite(cipher_suite)
    prk = hkdf_extract(suite.hash_name, b"", check_base_key(base_key))
    return hkdf_expand(suite.hash_name, prk, RATCHET_LABEL, suite.nh)


def _check_bits(ratchet_bits: object) -> int:
    if type(ratchet_bits) is not int or not 1 <= ratchet_bits <= 63:
        raise InvalidParameterError("ratchet_bits", f"must be an integer in 1..63, got {ratchet_bits!r}")
    return ratchet_bits


def make_kid(generation: int, ratchet_step: int, ratchet_bits: int) -> int:
    """§5.1 Figure 7: ``(generation << R) + (ratchet_step % 2^R)``; generation fills 64 - R bits."""
    r = _check_bits(ratchet_bits)
    if type(generation) is not int or not 0 <= generation < 1 << (64 - r):
        raise InvalidParameterError(
            "generation", f"must be an integer in 0..2^{64 - r}-1, got {generation!r}"
        )
    if type(ratchet_step) is not int or ratchet_step < 0:
        raise InvalidParameterError("ratchet_step", f"must be an integer >= 0, got {ratchet_step!r}")
    return (generation << r) + (ratchet_step % (1 << r))


def split_kid(kid: int, ratchet_bits: int) -> tuple[int, int]:
    """Inverse of :func:`make_kid`: ``(generation, ratchet_step % 2^R)``."""
    r = _check_bits(ratchet_bits)
    return kid >> r, kid & ((1 << r) - 1)


class SenderKeyRatchet:
    """The sending side of §5.1 for one key generation.

    ``encrypt`` uses the current step's key; ``ratchet()`` derives the next base key, switches to
    its KID with a fresh CTR, and forgets the previous key.
    """

    def __init__(
        self,
        cipher_suite: int,
        base_key: bytes,
        *,
        generation: int = 0,
        ratchet_bits: int = 8,
        counter_store: CounterStore | None = None,
    ) -> None:
        self.cipher_suite = get_suite(cipher_suite).value
        self.ratchet_bits = _check_bits(ratchet_bits)
        self.generation = generation
        self.step = 0
        self._store = counter_store
        self._base_key = check_base_key(base_key)
        self._context = self._make_context()

    def _make_context(self) -> SenderContext:
        kid = make_kid(self.generation, self.step, self.ratchet_bits)
        return SenderContext(self.cipher_suite, self._base_key, kid, counter_store=self._store)

    @property
    def kid(self) -> int:
        """KID of the current step."""
        return self._context.kid

    @property
    def context(self) -> SenderContext:
        """The :class:`SenderContext` of the current step."""
        return self._context

    def encrypt(self, metadata: bytes, plaintext: bytes) -> bytes:
        """Encrypt with the current step's key (see :meth:`SenderContext.encrypt`)."""
        return self._context.encrypt(metadata, plaintext)

    def ratchet(self) -> int:
        """Advance one ratchet step (§5.1) and return the new KID."""
        self._base_key = next_base_key(self.cipher_suite, self._base_key)
        self.step += 1
        self._context = self._make_context()
        _log.info("sframe_sender_ratcheted", generation=self.generation, step=self.step, kid=self.kid)
        return self.kid


class SenderKeyReceiver:
    """The receiving side of §5.1 for one sender (identified outside SFrame, e.g. by RTP SSRC).

    Args:
        cipher_suite: the sender's suite.
        ratchet_bits: the sender's R.
        keep_steps: how many most recent ratchet steps of a generation stay decryptable
            (reordering across a ratchet): keys of steps <= newest - keep_steps are deleted.
        max_ahead: the most ratchet steps a single frame may move the ratchet forward (default
            ``min(16, 2^R - keep_steps)``); bounds the work a forged header can cause.
        max_generations: generations kept (the previous one survives a key change briefly).
        replay_window: the §9.3 window per KID.
    """

    def __init__(
        self,
        cipher_suite: int,
        *,
        ratchet_bits: int = 8,
        keep_steps: int = 2,
        max_ahead: int | None = None,
        max_generations: int = 2,
        replay_window: int = 1024,
    ) -> None:
        self.suite = get_suite(cipher_suite)
        self.ratchet_bits = _check_bits(ratchet_bits)
        window = 1 << self.ratchet_bits
        if type(keep_steps) is not int or not 1 <= keep_steps < window:
            raise InvalidParameterError("keep_steps", f"must be an integer in 1..{window - 1}")
        if max_ahead is None:
            max_ahead = min(16, window - keep_steps)
        if type(max_ahead) is not int or not 1 <= max_ahead <= window - keep_steps:
            raise InvalidParameterError("max_ahead", f"must be an integer in 1..{window - keep_steps}")
        self.keep_steps = keep_steps
        self.max_ahead = max_ahead
        self._context = ReceiverContext(replay_window=replay_window, max_epochs=max_generations)
        # generation -> (newest step, its base key, (step, KID) of retained steps oldest first)
        self._state: dict[int, tuple[int, bytes, list[tuple[int, int]]]] = {}

    @property
    def drops(self) -> Mapping[str, int]:
        return self._context.drops

    def set_key(self, generation: int, base_key: bytes) -> None:
        """Install a newly distributed sender key: step 0 of ``generation``."""
        kid = make_kid(generation, 0, self.ratchet_bits)
        self._context.add_key(kid, base_key, self.suite.value, epoch=generation)
        self._state[generation] = (0, check_base_key(base_key), [(0, kid)])
        for gen in [g for g in self._state if g not in self._context.epochs]:
            del self._state[gen]

    def decrypt(self, metadata: bytes, ciphertext: bytes) -> Decrypted:
        """Decrypt a frame of this sender, following its ratchet when the KID is a newer step.

        Raises:
            SFrameError: as :meth:`ReceiverContext.decrypt`; :class:`UnknownKidError` also for a
                step too far ahead or behind, or a generation never installed.
        """
        try:
            return self._context.decrypt(metadata, ciphertext)
        except UnknownKidError as exc:
            kid = exc.kid
            generation, low = split_kid(kid, self.ratchet_bits)
            state = self._state.get(generation)
            if state is None:
                raise
            step, key, kids = state
            ahead = (low - step) % (1 << self.ratchet_bits)
            if not 0 < ahead <= self.max_ahead:
                raise
            candidate = key
            for _ in range(ahead):
                candidate = next_base_key(self.suite.value, candidate)
            self._trial_open(kid, candidate, metadata, ciphertext)
            # Authentic: adopt the new step, delete step keys beyond keep_steps (§5.1 "promptly").
            self._context.add_key(kid, candidate, self.suite.value, epoch=generation)
            newest = step + ahead
            kids = [*kids, (newest, kid)]
            while kids[0][0] <= newest - self.keep_steps:
                self._context.remove_key(kids.pop(0)[1])
            self._state[generation] = (newest, candidate, kids)
            _log.info("sframe_receiver_ratcheted", generation=generation, step=step + ahead, kid=kid)
            return self._context.decrypt(metadata, ciphertext)

    def _trial_open(self, kid: int, candidate: bytes, metadata: bytes, ciphertext: bytes) -> None:
        view = memoryview(ciphertext).cast("B")
        _, ctr, hlen = decode_header(view)
        trial = FrameKey.derive(self.suite, kid, candidate, KeyUsage.DECRYPT)
        try:
            trial.open(ctr, bytes(view[:hlen]), bytes(metadata), view[hlen:])
        except AuthenticationError:
            raise UnknownKidError(kid) from None
