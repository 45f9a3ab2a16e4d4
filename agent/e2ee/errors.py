"""Typed SFrame errors, grouped by origin (RFC 9605 §4.4.4: every failure is a discard, with a reason).

``SFrameError`` is the root of the package and a subclass of :class:`agent.errors.AgentError`. The
receiver counts its drops by the ``reason`` class attribute of these errors.

- bad input from the network: :class:`MalformedCiphertextError` (with :class:`SFrameHeaderError`),
  :class:`UnknownKidError`, :class:`AuthenticationError`, :class:`ReplayError`;
- misuse by the local caller: :class:`InvalidParameterError`, :class:`UnsupportedCipherSuiteError`,
  :class:`KeyUsageError`;
- sender safety: :class:`CounterExhaustedError`, :class:`CounterStoreError`.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "CounterExhaustedError",
    "CounterStoreError",
    "InvalidParameterError",
    "KeyUsageError",
    "MalformedCiphertextError",
    "ReplayError",
    "SFrameError",
    "SFrameHeaderError",
    "UnknownKidError",
    "UnsupportedCipherSuiteError",
]

from agent.errors import AgentError


class SFrameError(AgentError):
    """Root of every SFrame failure; ``reason`` is a short snake_case code (used as a drop counter)."""

    reason: str = "error"


# --- bad input from the network -------------------------------------------------------------------


class MalformedCiphertextError(SFrameError):
    """The SFrame ciphertext is structurally invalid (too short to hold a header and a tag)."""

    reason = "malformed"

    def __init__(self, detail: str, *, length: int) -> None:
        self.detail = detail
        self.length = length
        super().__init__(f"malformed SFrame ciphertext ({length} bytes): {detail}")


class SFrameHeaderError(MalformedCiphertextError):
    """The SFrame header (RFC 9605 §4.3) cannot be parsed: truncated or not minimally encoded."""


class UnknownKidError(SFrameError):
    """No decryption key is known for the KID in the header (RFC 9605 §4.4.4: MAY buffer and retry)."""

    reason = "unknown_kid"

    def __init__(self, kid: int) -> None:
        self.kid = kid
        super().__init__(f"no key for KID {kid}")


class AuthenticationError(SFrameError):
    """The AEAD tag did not verify (RFC 9605 §4.4.4: the ciphertext MUST be discarded)."""

    reason = "auth_failed"

    def __init__(self, kid: int, ctr: int) -> None:
        self.kid = kid
        self.ctr = ctr
        super().__init__(f"authentication failed for KID {kid} CTR {ctr}")


class ReplayError(SFrameError):
    """The CTR was already accepted for this KID, or is older than the replay window (§9.3)."""

    reason = "replay"

    def __init__(self, kid: int, ctr: int, *, too_old: bool) -> None:
        self.kid = kid
        self.ctr = ctr
        self.too_old = too_old
        why = "older than the replay window" if too_old else "already received"
        super().__init__(f"replayed frame: KID {kid} CTR {ctr} {why}")


# --- misuse by the local caller -------------------------------------------------------------------


class InvalidParameterError(SFrameError, ValueError):
    """An argument is out of range or of the wrong type (KID/CTR beyond 64 bits, short key, ...)."""

    reason = "invalid_parameter"

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        self.problem = problem
        super().__init__(f"{name}: {problem}")


class UnsupportedCipherSuiteError(InvalidParameterError):
    """The cipher suite is not one of RFC 9605 §4.5 / §8.1 (0x0001-0x0005)."""

    reason = "unsupported_cipher_suite"

    def __init__(self, cipher_suite: object) -> None:
        self.cipher_suite = cipher_suite
        super().__init__("cipher_suite", f"{cipher_suite!r} is not an RFC 9605 cipher suite (1-5)")


class KeyUsageError(SFrameError):
    """A key marked for one direction was used for the other (RFC 9605 §4.4.1: never both)."""

    reason = "key_usage"

    def __init__(self, kid: int, usage: str, attempted: str) -> None:
        self.kid = kid
        self.usage = usage
        self.attempted = attempted
        super().__init__(f"key for KID {kid} is {usage}-only; refusing to {attempted}")


# --- sender safety --------------------------------------------------------------------------------


class CounterExhaustedError(SFrameError):
    """The sender's CTR reached 2^64-1: encrypting again would wrap and reuse a nonce (§7.4, §9.1)."""

    reason = "counter_exhausted"

    def __init__(self, kid: int) -> None:
        self.kid = kid
        super().__init__(f"CTR space of KID {kid} is exhausted; a new key is required")


class CounterStoreError(SFrameError):
    """The CTR high-water mark could not be read or persisted, so encrypting is refused (§9.1)."""

    reason = "counter_store"

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"counter store {path}: {problem}")
