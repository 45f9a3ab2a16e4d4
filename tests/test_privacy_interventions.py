"""Interventions: who may lock a room, what a lock does, and that it survives a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.privacy.errors import InterventionError
from agent.privacy.interventions import (
    InterventionRecord,
    InterventionState,
    RoomState,
    authorize_intervention,
    check_snapshot,
)
from agent.schema.policy import DEFAULT_POLICY, PolicyBody

DE = PolicyBody.model_validate({**DEFAULT_POLICY.model_dump(), "jurisdiction": "DE"})
ORDER_DE = {"lawful_order": {"issuer": "AG Berlin", "id": "123 Js 45/26", "jurisdiction": "DE"}}
ORDER_US = {"lawful_order": {"issuer": "SDNY", "id": "26-cv-1", "jurisdiction": "US"}}


class Room:
    """What an intervention touches in the room: announcements and the media service."""

    def __init__(self) -> None:
        self.announcements: list[str] = []
        self.media_events: list[RoomState] = []
        self.audit: list[tuple[str, dict[str, Any]]] = []

    async def announce(self, message: str) -> None:
        self.announcements.append(message)

    async def on_change(self, record: InterventionRecord) -> None:
        self.media_events.append(record.state)


def _state(tmp_path: Path, room: Room) -> InterventionState:
    state = InterventionState(
        tmp_path / "intervention.json", audit=lambda e, f: room.audit.append((e, f)), announcers=[room]
    )
    state.add_listener(room.on_change)
    return state


@pytest.mark.parametrize(
    ("roles", "args", "policy", "expected"),
    [
        ({"customer"}, {}, DEFAULT_POLICY, None),
        ({"fleet"}, {}, DE, "needs_customer"),
        ({"fleet"}, ORDER_DE, DE, "needs_customer"),
        ({"legal"}, ORDER_DE, DE, None),
        ({"legal"}, ORDER_US, DE, "lawful_order_mismatch"),
        ({"legal"}, {}, DE, "needs_customer"),
        ({"legal"}, {"lawful_order": {"issuer": "x", "id": "y"}}, DE, "lawful_order_mismatch"),
        ({"legal"}, ORDER_DE, DEFAULT_POLICY, "lawful_order_mismatch"),  # room with no jurisdiction
    ],
)
def test_who_may_intervene(roles: set[str], args: dict, policy: PolicyBody, expected: str | None) -> None:
    assert authorize_intervention(roles, args, policy) == expected


async def test_legal_lock_with_the_rooms_jurisdiction_locks_audits_announces_and_stops_media(
    tmp_path: Path,
) -> None:
    room = Room()
    state = _state(tmp_path, room)
    record = await state.apply("lock", ORDER_DE, roles_met={"legal"}, policy=DE, doc_version=5)
    assert record.state is RoomState.LOCKED
    assert record.order_jurisdiction == "DE"
    assert room.media_events == [RoomState.LOCKED]
    assert "locked" in room.announcements[0]
    assert room.audit[0][0] == "intervention"
    assert room.audit[0][1]["lawful_order"]["id"] == "123 Js 45/26"
    assert state.state_fragment()["locked"] is True
    assert state.refusal("keys") == "locked"
    assert state.refusal("command", "keyframe") == "locked"
    assert state.refusal("command", "unlock") is None
    # A restart finds the room still locked.
    assert InterventionState(tmp_path / "intervention.json").state is RoomState.LOCKED


async def test_legal_lock_from_another_jurisdiction_changes_nothing(tmp_path: Path) -> None:
    room = Room()
    state = _state(tmp_path, room)
    with pytest.raises(InterventionError) as err:
        await state.apply("lock", ORDER_US, roles_met={"legal"}, policy=DE)
    assert err.value.reason == "lawful_order_mismatch"
    assert state.state is RoomState.ACTIVE
    assert not (tmp_path / "intervention.json").exists()
    assert room.announcements == room.media_events == room.audit == []


async def test_customer_unlocks_and_deprovision_is_terminal(tmp_path: Path) -> None:
    room = Room()
    state = _state(tmp_path, room)
    await state.apply("lock", {}, roles_met={"customer"}, policy=DEFAULT_POLICY)
    await state.apply("lock", {}, roles_met={"customer"}, policy=DEFAULT_POLICY)  # redelivered: no-op
    assert room.media_events == [RoomState.LOCKED]
    await state.apply("unlock", {}, roles_met={"customer"}, policy=DEFAULT_POLICY)
    assert state.media_allowed
    await state.apply("deprovision", {}, roles_met={"customer"}, policy=DEFAULT_POLICY)
    with pytest.raises(InterventionError) as err:
        await state.apply("unlock", {}, roles_met={"customer"}, policy=DEFAULT_POLICY)
    assert err.value.reason == "deprovisioned"
    assert room.media_events == [RoomState.LOCKED, RoomState.ACTIVE, RoomState.DEPROVISIONED]


async def test_a_failing_hook_does_not_keep_media_running(tmp_path: Path) -> None:
    room = Room()
    state = InterventionState(tmp_path / "i.json", announcers=[room])

    async def broken(record: InterventionRecord) -> None:
        raise RuntimeError("pipeline wedged")

    state.add_listener(broken)
    state.add_listener(room.on_change)
    await state.apply("lock", {}, roles_met={"customer"}, policy=DEFAULT_POLICY)
    assert room.media_events == [RoomState.LOCKED]
    assert room.announcements


def test_corrupt_state_file_is_a_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "intervention.json"
    path.write_text('{"format": 1, "state": "melted", "since": "x"}')
    with pytest.raises(InterventionError):
        InterventionState(path)


def test_snapshot_needs_customer_an_active_room_and_policy_permission() -> None:
    allowed = PolicyBody.model_validate({**DEFAULT_POLICY.model_dump(), "camera": {"remote_snapshot": True}})
    assert check_snapshot({"fleet"}, allowed, RoomState.ACTIVE) == "needs_customer"
    assert check_snapshot({"customer"}, DEFAULT_POLICY, RoomState.ACTIVE) == "forbidden_by_policy"
    assert check_snapshot({"customer"}, allowed, RoomState.LOCKED) == "locked"
    assert check_snapshot({"customer"}, allowed, RoomState.ACTIVE) is None
