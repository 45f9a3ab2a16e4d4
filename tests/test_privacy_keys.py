"""Key packages: opened only by their recipients, only within policy, rotated by epoch, expired on time."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from agent.privacy.errors import KeyDeliveryError
from agent.privacy.hpke import HpkeIdentity
from agent.privacy.key_packages import KeyManager, KeySet, seal_meeting
from agent.schema.key_package import KeysBody
from agent.schema.policy import DEFAULT_POLICY, PolicyBody

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
ROOMS = ("room-a", "room-b")


class Recorder:
    """The key target: remembers every key set it was given."""

    def __init__(self) -> None:
        self.sets: list[KeySet] = []

    def apply_keys(self, keys: KeySet) -> None:
        self.sets.append(keys)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def identities() -> dict[str, HpkeIdentity]:
    return {room: HpkeIdentity.generate() for room in (*ROOMS, "room-c")}


def _packages(
    identities: dict[str, HpkeIdentity],
    *,
    epoch: int = 1,
    suite: int = 4,
    kem: str = "x25519",
    expires: datetime = T0 + timedelta(hours=1),
    meeting: str = "m-1",
    rooms: tuple[str, ...] = ROOMS,
) -> dict[str, KeysBody]:
    return seal_meeting(
        meeting=meeting,
        epoch=epoch,
        suite=suite,
        kem=kem,
        key_expires=expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        rooms={r: identities[r].public_keys() for r in rooms},
    )


def _manager(
    identities: dict[str, HpkeIdentity],
    device: str,
    policy: PolicyBody = DEFAULT_POLICY,
    clock: Clock | None = None,
) -> tuple[KeyManager, Recorder]:
    target = Recorder()
    mgr = KeyManager(
        device_id=device,
        identity=identities[device],
        policy=lambda: policy,
        target=target,
        clock=clock or Clock(),
        grace=timedelta(seconds=30),
    )
    return mgr, target


def _policy(**e2ee: Any) -> PolicyBody:
    data = DEFAULT_POLICY.model_dump()
    data["e2ee"].update(e2ee)
    return PolicyBody.model_validate(data)


def test_each_room_gets_its_own_sender_key_and_the_others_as_receive_keys(identities: dict) -> None:
    packages = _packages(identities)
    mgr_a, target_a = _manager(identities, "room-a")
    mgr_b, _ = _manager(identities, "room-b")
    keys_a, keys_b = mgr_a.install(packages["room-a"]), mgr_b.install(packages["room-b"])
    assert keys_a.own is not None
    assert keys_b.own is not None
    assert [p.sender for p in keys_a.peers] == ["room-b"]
    # A's sending key is exactly what B will decrypt with.
    assert keys_b.peers[0].base_key == keys_a.own.base_key
    assert keys_b.peers[0].kid == keys_a.own.kid
    assert target_a.sets[-1] is keys_a
    # Keys never show up in a repr (and so never in a log line or traceback).
    assert repr(keys_a.own.base_key) not in repr(keys_a)
    assert "base_key" not in repr(keys_a.own)


def test_package_for_another_room_opens_nothing(identities: dict) -> None:
    # The attack: the package sealed to room-b is replayed to room-c (not a participant).
    mgr_c, target_c = _manager(identities, "room-c")
    with pytest.raises(KeyDeliveryError) as err:
        mgr_c.install(_packages(identities)["room-b"])
    assert err.value.reason == "not_for_this_device"
    assert target_c.sets == []


def test_entry_relabelled_to_this_device_does_not_open(identities: dict) -> None:
    # The attack: take room-b's sealed entry and relabel it as addressed to room-c.
    body = _packages(identities)["room-b"].model_dump()
    for sender in body["senders"]:
        sender["recipients"] = {"room-c": sender["recipients"]["room-b"]}
    mgr_c, target_c = _manager(identities, "room-c")
    with pytest.raises(KeyDeliveryError) as err:
        mgr_c.install(KeysBody.model_validate(body))
    assert err.value.reason == "bad_seal"
    assert target_c.sets == []


def test_suite_forbidden_by_policy_is_rejected(identities: dict) -> None:
    mgr, target = _manager(identities, "room-a", policy=_policy(suites=[5]))
    with pytest.raises(KeyDeliveryError) as err:
        mgr.install(_packages(identities, suite=4)["room-a"])
    assert err.value.reason == "suite_forbidden"
    assert target.sets == []


def test_kem_weaker_than_policy_is_rejected_and_hybrid_is_accepted(identities: dict) -> None:
    policy = _policy(kem="mlkem768-x25519")
    mgr, target = _manager(identities, "room-a", policy=policy)
    with pytest.raises(KeyDeliveryError) as err:
        mgr.install(_packages(identities, kem="x25519")["room-a"])
    assert err.value.reason == "kem_too_weak"
    assert target.sets == []
    keys = mgr.install(_packages(identities, kem="mlkem768-x25519")["room-a"])
    assert keys.own is not None


def test_new_epoch_rotates_and_old_epoch_retires_after_grace(identities: dict) -> None:
    clock = Clock()
    mgr, _ = _manager(identities, "room-a", clock=clock)
    first = mgr.install(_packages(identities, epoch=1)["room-a"])
    second = mgr.install(_packages(identities, epoch=2)["room-a"])
    assert second.own is not None
    assert first.own is not None
    assert second.own.epoch == 2
    assert second.own.base_key != first.own.base_key
    # Previous epoch's receive key kept for frames in flight...
    assert sorted(p.epoch for p in second.peers) == [1, 2]
    clock.now += timedelta(seconds=31)
    # ...and retired after the grace.
    assert [p.epoch for p in mgr.expire().peers] == [2]


def test_old_epoch_replayed_is_rollback_and_redelivery_is_idempotent(identities: dict) -> None:
    mgr, target = _manager(identities, "room-a")
    old, new = _packages(identities, epoch=1)["room-a"], _packages(identities, epoch=2)["room-a"]
    mgr.install(new)
    with pytest.raises(KeyDeliveryError) as err:
        mgr.install(old)
    assert err.value.reason == "rollback"
    count = len(target.sets)
    assert mgr.install(new) is mgr.keys
    assert len(target.sets) == count


def test_expired_package_rejected_and_installed_keys_dropped_at_expiry(identities: dict) -> None:
    clock = Clock()
    mgr, target = _manager(identities, "room-a", clock=clock)
    with pytest.raises(KeyDeliveryError) as err:
        mgr.install(_packages(identities, expires=T0 - timedelta(seconds=1))["room-a"])
    assert err.value.reason == "expired"
    mgr.install(_packages(identities, expires=T0 + timedelta(minutes=5))["room-a"])
    clock.now += timedelta(minutes=5)
    assert mgr.expire().idle
    assert target.sets[-1].idle


async def test_timer_task_drops_keys_when_they_expire(identities: dict) -> None:
    mgr = KeyManager(
        device_id="room-a", identity=identities["room-a"], policy=lambda: DEFAULT_POLICY, target=Recorder()
    )
    expires = datetime.now(UTC) + timedelta(seconds=1.2)
    mgr.install(_packages(identities, expires=expires)["room-a"])
    assert not mgr.keys.idle
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(mgr.run(), name="keys.expiry")
        for _ in range(40):
            await asyncio.sleep(0.1)
            if mgr.keys.idle:
                break
        task.cancel()
    assert mgr.keys.idle


def test_policy_tightened_after_install_drops_keys_it_forbids(identities: dict) -> None:
    mgr, target = _manager(identities, "room-a")
    mgr.install(_packages(identities, suite=4)["room-a"])
    mgr.on_policy(_policy(suites=[5]))
    assert mgr.keys.idle
    assert target.sets[-1].idle


@pytest.mark.parametrize(
    "patch",
    [
        {"suite": 6},
        {"suite": "4"},
        {"epoch": -1},
        {"key_expires": "tomorrow"},
        {"key_expires": "2026-13-40T00:00:00Z"},
        {"extra": 1},
        {"senders": []},
    ],
)
def test_malformed_bodies_are_rejected_by_the_model(identities: dict, patch: dict) -> None:
    body = _packages(identities)["room-a"].model_dump()
    body.update(patch)
    with pytest.raises(ValidationError):
        KeysBody.model_validate(body)


def test_duplicate_kid_or_sender_is_rejected(identities: dict) -> None:
    body = _packages(identities)["room-a"].model_dump()
    body["senders"][1]["kid"] = body["senders"][0]["kid"]
    with pytest.raises(ValidationError):
        KeysBody.model_validate(body)
    body = _packages(identities)["room-a"].model_dump()
    body["senders"][1]["device"] = body["senders"][0]["device"]
    with pytest.raises(ValidationError):
        KeysBody.model_validate(body)
