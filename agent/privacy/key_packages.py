"""Meeting key packages on the device: the key manager (the body model is :mod:`agent.schema.key_package`).

A ``keys`` document (docs/design.md; signed by ``customer`` only, which the control verifier enforces) carries
for one meeting epoch, per sender device, the sender's SFrame base key and KID sealed with HPKE to each
recipient device (:mod:`agent.privacy.hpke`). The vendor cannot add a ghost participant: it cannot sign
a key package, and without one no device will encrypt to or decrypt from anyone.

Body::

    {"meeting": "m-42", "epoch": 1, "suite": 4, "key_expires": "2026-11-29T20:00:00Z",
     "senders": [{"device": "room-a", "kid": 256,
                  "recipients": {"room-b": {"kem": "mlkem768-x25519", "sealed": "<base64>"}}}]}

On the device, :class:`KeyManager` opens the entries sealed to it, installs its own key as the sender
key and the others as receiver keys (through a :class:`KeyTarget`, e.g. the SFrame contexts), rotates
on a new epoch (the previous epoch's receive keys stay for a short grace, for frames in flight, then
retire), and drops every key at ``key_expires``. A package is installed whole or not at all.
"""

from __future__ import annotations

__all__ = [
    "GuestKeys",
    "KeyManager",
    "KeySet",
    "KeyTarget",
    "MeetingKey",
    "SealedMeeting",
    "seal_meeting",
    "seal_meeting_keys",
]

import asyncio
import base64
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import structlog

from agent.privacy.errors import KeyDeliveryError
from agent.privacy.hpke import HpkeIdentity, SealBinding, kem_at_least, seal_base_key
from agent.schema.key_package import KeysBody, SfuBody
from agent.schema.policy import PolicyBody


@dataclass(frozen=True, slots=True, kw_only=True)
class MeetingKey:
    """One opened SFrame base key. ``base_key`` is never printed."""

    meeting: str
    epoch: int
    suite: int
    sender: str
    kid: int
    base_key: bytes = field(repr=False)
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class KeySet:
    """What the SFrame contexts should hold now: this device's sender key and the receive keys."""

    meeting: str | None = None
    epoch: int | None = None
    own: MeetingKey | None = None
    peers: tuple[MeetingKey, ...] = ()
    sfu: SfuBody | None = None  # the customer-signed WebRTC meeting place, if the meeting has one

    @property
    def idle(self) -> bool:
        """No meeting keys at all: nothing can be sent or received (the camera may shut)."""
        return self.own is None and not self.peers


EMPTY = KeySet()


class KeyTarget(Protocol):
    """Receives every new :class:`KeySet` (the SFrame sender/receiver contexts, the media pipeline)."""

    def apply_keys(self, keys: KeySet) -> None: ...


class KeyManager:
    """Opens key packages sealed to this device and keeps the SFrame keys current.

    Args:
        device_id: this device.
        identity: its HPKE private keys.
        policy: returns the policy in force (suites and minimum KEM are checked against it).
        target: gets each new key set.
        clock: returns the current UTC time (tests move it).
        grace: how long the previous epoch's receive keys stay after a rotation.
    """

    def __init__(
        self,
        *,
        device_id: str,
        identity: HpkeIdentity,
        policy: Callable[[], PolicyBody],
        target: KeyTarget,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        grace: timedelta = timedelta(seconds=30),
    ) -> None:
        self._device = device_id
        self._identity = identity
        self._policy = policy
        self._target = target
        self._clock = clock
        self._grace = grace
        self._keys = EMPTY
        self._current: KeysBody | None = None
        # Previous epoch's receive keys and when they retire.
        self._previous: tuple[MeetingKey, ...] = ()
        self._previous_until: datetime | None = None
        self._wake = asyncio.Event()
        self._log = structlog.get_logger()

    @property
    def keys(self) -> KeySet:
        return self._keys

    def install(self, body: KeysBody) -> KeySet:
        """Verify and open a key package addressed to this device, then install it whole.

        Raises:
            KeyDeliveryError: with ``reason`` ``suite_forbidden``, ``kem_too_weak``, ``expired``,
                ``rollback``, ``not_for_this_device``, ``bad_seal`` or ``invalid_body``; the installed
                keys are unchanged.
        """
        policy = self._policy()
        now = self._clock()
        if body.suite not in policy.e2ee.suites:
            raise KeyDeliveryError("suite_forbidden", f"SFrame suite {body.suite} is not allowed by policy")
        if body.expires_at <= now:
            raise KeyDeliveryError("expired", f"keys of meeting {body.meeting} expired at {body.key_expires}")
        cur = self._current
        if cur is not None and cur.meeting == body.meeting:
            if body == cur:
                return self._keys  # redelivery of what is installed: idempotent
            if body.epoch <= cur.epoch:
                raise KeyDeliveryError("rollback", f"epoch {body.epoch} is not after {cur.epoch}")
        opened = self._open_all(body, policy)
        own = next((k for k in opened if k.sender == self._device), None)
        peers = tuple(k for k in opened if k.sender != self._device)

        if cur is not None and cur.meeting == body.meeting:
            previous = tuple(k for k in self._keys.peers if k.epoch == cur.epoch)
            clash = {k.kid for k in previous} & {k.kid for k in opened}
            if clash:
                raise KeyDeliveryError("invalid_body", f"KIDs {sorted(clash)} reused from epoch {cur.epoch}")
            self._previous, self._previous_until = previous, now + self._grace
        else:
            self._previous, self._previous_until = (), None
        self._current = body
        self._publish(KeySet(body.meeting, body.epoch, own, peers + self._previous, body.sfu))
        self._log.info(
            "meeting_keys_installed",
            meeting=body.meeting,
            epoch=body.epoch,
            suite=body.suite,
            senders=len(opened),
            sending=own is not None,
        )
        return self._keys

    def _open_all(self, body: KeysBody, policy: PolicyBody) -> list[MeetingKey]:
        opened: list[MeetingKey] = []
        for sender in body.senders:
            entry = sender.recipients.get(self._device)
            if entry is None:
                continue
            if not kem_at_least(entry.kem, policy.e2ee.kem):
                raise KeyDeliveryError(
                    "kem_too_weak",
                    f"key from {sender.device} uses {entry.kem}; policy needs {policy.e2ee.kem}",
                )
            binding = SealBinding(
                meeting=body.meeting,
                epoch=body.epoch,
                suite=body.suite,
                sender=sender.device,
                kid=sender.kid,
                recipient=self._device,
            )
            base_key = self._identity.open_base_key(entry.kem, entry.sealed_bytes(), binding)
            if not 16 <= len(base_key) <= 64:
                raise KeyDeliveryError(
                    "invalid_body", f"base key from {sender.device} has {len(base_key)} bytes"
                )
            opened.append(
                MeetingKey(
                    meeting=body.meeting,
                    epoch=body.epoch,
                    suite=body.suite,
                    sender=sender.device,
                    kid=sender.kid,
                    base_key=base_key,
                    expires_at=body.expires_at,
                )
            )
        if not opened:
            raise KeyDeliveryError("not_for_this_device", f"no key of meeting {body.meeting} is sealed to us")
        return opened

    def expire(self) -> KeySet:
        """Drop expired keys and retire the previous epoch after its grace; returns the key set."""
        now = self._clock()
        keys = self._keys
        if self._previous_until is not None and now >= self._previous_until:
            retired = {id(k) for k in self._previous}
            keys = KeySet(
                keys.meeting,
                keys.epoch,
                keys.own,
                tuple(k for k in keys.peers if id(k) not in retired),
                keys.sfu,
            )
            self._previous, self._previous_until = (), None
        live_own = keys.own if keys.own is not None and keys.own.expires_at > now else None
        live_peers = tuple(k for k in keys.peers if k.expires_at > now)
        if live_own is None and not live_peers:
            if not keys.idle:
                self._log.info("meeting_keys_expired", meeting=keys.meeting, epoch=keys.epoch)
            keys, self._current = EMPTY, None
        else:
            keys = KeySet(keys.meeting, keys.epoch, live_own, live_peers, keys.sfu)
        if keys != self._keys:
            self._publish(keys)
        return self._keys

    def clear(self, reason: str) -> None:
        """Forget every meeting key (room locked or deprovisioned, policy no longer allows them)."""
        if not self._keys.idle:
            self._log.info("meeting_keys_cleared", reason=reason, meeting=self._keys.meeting)
        self._current, self._previous, self._previous_until = None, (), None
        self._publish(EMPTY)

    def on_policy(self, policy: PolicyBody) -> None:
        """Re-check the installed keys against a newly applied policy; drop them if now forbidden."""
        cur = self._current
        if cur is None:
            return
        if cur.suite not in policy.e2ee.suites:
            self.clear("suite_forbidden")
        elif any(
            not kem_at_least(s.recipients[self._device].kem, policy.e2ee.kem)
            for s in cur.senders
            if self._device in s.recipients
        ):
            self.clear("kem_too_weak")

    def next_deadline(self) -> datetime | None:
        times = [k.expires_at for k in self._keys.peers]
        if self._keys.own is not None:
            times.append(self._keys.own.expires_at)
        if self._previous_until is not None:
            times.append(self._previous_until)
        return min(times) if times else None

    def _publish(self, keys: KeySet) -> None:
        self._keys = keys
        self._wake.set()
        self._target.apply_keys(keys)

    async def run(self) -> None:
        """Timer task: expire keys and retire old epochs on time. Runs until cancelled."""
        while True:
            self._wake.clear()
            deadline = self.next_deadline()
            timeout = None if deadline is None else max(0.0, (deadline - self._clock()).total_seconds())
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                self.expire()


@dataclass(frozen=True, slots=True)
class GuestKeys:
    """What one browser guest needs (it has no HPKE identity: its keys travel in its join link).

    ``send`` is the guest's own (KID, base key); ``recv`` every other sender's (name, KID, base key).
    Never logged or printed except inside the join link the customer asked for.
    """

    name: str
    send: tuple[int, bytes] = field(repr=False)
    recv: tuple[tuple[str, int, bytes], ...] = field(repr=False)


@dataclass(frozen=True, slots=True)
class SealedMeeting:
    packages: dict[str, KeysBody]  # one key package per room
    guests: dict[str, GuestKeys]  # one key set per browser guest


def seal_meeting(
    *,
    meeting: str,
    epoch: int,
    suite: int,
    key_expires: str,
    rooms: dict[str, dict[str, str]],
    kem: str,
    key_len: int = 32,
) -> dict[str, KeysBody]:
    """:func:`seal_meeting_keys` without guests: the rooms' key packages."""
    return seal_meeting_keys(
        meeting=meeting,
        epoch=epoch,
        suite=suite,
        key_expires=key_expires,
        rooms=rooms,
        kem=kem,
        key_len=key_len,
    ).packages


def seal_meeting_keys(
    *,
    meeting: str,
    epoch: int,
    suite: int,
    key_expires: str,
    rooms: dict[str, dict[str, str]],
    kem: str,
    key_len: int = 32,
    guests: tuple[str, ...] = (),
    sfu: SfuBody | None = None,
) -> SealedMeeting:
    """Build one key package per recipient room (the management side of ``roomctl meeting start``).

    Every room is a sender: it gets a fresh random base key and the KID ``(epoch << 8) | index`` (so
    consecutive epochs never share a KID), sealed to every room, itself included (it needs its own key
    to send). ``rooms`` maps device id to its published HPKE public keys (``identity.hpke``).
    Each guest (a browser, no HPKE identity) is a sender too, indexed after the rooms: its key is
    sealed to every room, and it gets every key in the clear for its join link (:class:`GuestKeys`).

    Raises:
        KeyDeliveryError: a room does not publish a ``kem`` public key, or it is malformed.
    """
    if len(rooms) + len(guests) > 255:
        raise KeyDeliveryError("invalid_body", "at most 255 participants per meeting")
    if len(set(guests)) != len(guests) or set(guests) & set(rooms):
        raise KeyDeliveryError("invalid_body", "guest names must be distinct and differ from room ids")
    for device, public in rooms.items():
        if kem not in public:
            raise KeyDeliveryError("invalid_body", f"{device} publishes no {kem} public key")
    senders_all = [*sorted(rooms), *guests]
    base_keys = {device: os.urandom(key_len) for device in senders_all}
    kids = {device: (epoch << 8) | index for index, device in enumerate(senders_all)}
    out: dict[str, KeysBody] = {}
    for recipient, public in rooms.items():
        senders = []
        for sender in senders_all:
            binding = SealBinding(
                meeting=meeting,
                epoch=epoch,
                suite=suite,
                sender=sender,
                kid=kids[sender],
                recipient=recipient,
            )
            sealed = seal_base_key(kem, public[kem], base_keys[sender], binding)
            senders.append(
                {
                    "device": sender,
                    "kid": kids[sender],
                    "recipients": {recipient: {"kem": kem, "sealed": base64.b64encode(sealed).decode()}},
                }
            )
        body: dict[str, object] = {
            "meeting": meeting,
            "epoch": epoch,
            "suite": suite,
            "key_expires": key_expires,
            "senders": senders,
        }
        if sfu is not None:
            body["sfu"] = sfu.model_dump()
        out[recipient] = KeysBody.model_validate(body)
    guest_keys = {
        g: GuestKeys(
            g,
            (kids[g], base_keys[g]),
            tuple((d, kids[d], base_keys[d]) for d in senders_all if d != g),
        )
        for g in guests
    }
    return SealedMeeting(out, guest_keys)
