"""The privacy guard on a device: shutter follows meetings and policy, a lock stops media and keys."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.privacy.errors import KeyDeliveryError
from agent.privacy.guard import PrivacyGuard
from agent.privacy.hpke import HpkeIdentity
from agent.privacy.key_packages import seal_meeting
from agent.schema.policy import DEFAULT_POLICY, PolicyBody

DE = PolicyBody.model_validate({**DEFAULT_POLICY.model_dump(), "jurisdiction": "DE"})


class Camera:
    """The camera's privacy surface: a shutter and an announcer (what the HAL camera offers)."""

    def __init__(self) -> None:
        self.shutter: list[bool] = []
        self.announcements: list[str] = []

    async def set_shutter(self, closed: bool) -> None:
        self.shutter.append(closed)

    async def announce(self, message: str) -> None:
        self.announcements.append(message)


def _package(guard: PrivacyGuard, other: HpkeIdentity, epoch: int = 1):  # type: ignore[no-untyped-def]
    expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return seal_meeting(
        meeting="m-1",
        epoch=epoch,
        suite=4,
        kem="x25519",
        key_expires=expires,
        rooms={"room-a": guard.identity.public_keys(), "room-b": other.public_keys()},
    )["room-a"]


@pytest.fixture
def guard(tmp_path: Path) -> tuple[PrivacyGuard, Camera]:
    camera = Camera()
    return PrivacyGuard(state_dir=tmp_path, device_id="room-a", policy=DE, cameras=[camera]), camera


async def test_shutter_closed_while_idle_and_open_during_a_meeting(
    guard: tuple[PrivacyGuard, Camera],
) -> None:
    g, camera = guard
    await g.enforce_camera()
    assert camera.shutter[-1] is True
    g.install_keys(_package(g, HpkeIdentity.generate()))
    await g.enforce_camera()
    assert camera.shutter[-1] is False
    assert g.key_source.current()[0] is not None
    assert g.state_fragment()["e2ee"]["active"] is True


async def test_legal_lock_clears_keys_closes_shutter_announces_and_refuses_new_keys(
    guard: tuple[PrivacyGuard, Camera],
) -> None:
    g, camera = guard
    other = HpkeIdentity.generate()
    g.install_keys(_package(g, other))
    order = {"lawful_order": {"issuer": "AG Berlin", "id": "1", "jurisdiction": "DE"}}
    await g.intervene("lock", order, roles_met={"legal"}, doc_version=3)
    assert g.key_source.current()[0] is None  # media stops: no sender key
    assert camera.shutter[-1] is True
    assert camera.announcements
    assert g.state_fragment()["privacy"]["locked"] is True
    with pytest.raises(KeyDeliveryError) as err:
        g.install_keys(_package(g, other, epoch=2))
    assert err.value.reason == "locked"
    assert g.refusal("command", "keyframe") == "locked"


async def test_policy_without_shutter_when_idle_opens_it(guard: tuple[PrivacyGuard, Camera]) -> None:
    g, camera = guard
    data = DE.model_dump()
    data["camera"]["shutter_when_idle"] = False
    g.apply_policy(PolicyBody.model_validate(data))
    await g.enforce_camera()
    assert camera.shutter[-1] is False


async def test_identity_survives_restart_and_is_published(tmp_path: Path) -> None:
    first = PrivacyGuard(state_dir=tmp_path, device_id="room-a")
    second = PrivacyGuard(state_dir=tmp_path, device_id="room-a")
    assert first.identity_fragment() == second.identity_fragment()
    assert set(first.identity_fragment()["hpke"]) == {"x25519", "mlkem768-x25519"}


async def test_service_enforces_the_shutter_when_keys_arrive(guard: tuple[PrivacyGuard, Camera]) -> None:
    g, camera = guard

    class Progress:
        beats = 0

        def beat(self) -> None:
            self.beats += 1

    task = asyncio.create_task(g.run(Progress()), name="privacy")
    try:
        for _ in range(50):
            await asyncio.sleep(0.01)
            if camera.shutter:
                break
        assert camera.shutter == [True]
        g.install_keys(_package(g, HpkeIdentity.generate()))
        for _ in range(50):
            await asyncio.sleep(0.01)
            if camera.shutter[-1] is False:
                break
        assert camera.shutter[-1] is False
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_intervention_lands_in_the_hash_chained_audit_log(tmp_path: Path) -> None:
    from agent.control.audit import AuditLog, verify_chain
    from agent.control.identity import DeviceIdentity
    from agent.control.signing_keys import parse_public_key
    from agent.privacy.guard import audit_to

    identity = DeviceIdentity.load_or_create(tmp_path)
    log = AuditLog(tmp_path / "audit", identity, "room-a")
    g = PrivacyGuard(state_dir=tmp_path, device_id="room-a", policy=DE, audit=audit_to(log))
    order = {"lawful_order": {"issuer": "AG Berlin", "id": "7 Js 1/26", "jurisdiction": "DE"}}
    await g.intervene("lock", order, roles_met={"legal"}, doc_version=9)
    entries = [json.loads(line) for line in log.path.read_text().splitlines()]
    assert entries[-1]["event"] == "intervention"
    assert entries[-1]["outcome"] == "locked"
    assert "7 Js 1/26" in entries[-1]["message"]
    report = verify_chain(
        log.path.read_bytes(), log.head_path.read_bytes(), parse_public_key(identity.public_dict)
    )
    assert report.entries == len(entries)


async def test_lock_stops_a_lab_key_too_and_a_restart_keeps_the_room_dark(tmp_path: Path) -> None:
    from agent.media.key_source import KeySource, write_lab_key

    lab = write_lab_key(tmp_path / "lab.json")
    source = KeySource()
    source.use_lab_key(lab)
    g = PrivacyGuard(state_dir=tmp_path, device_id="room-a", key_source=source)
    await g.intervene("lock", {}, roles_met={"customer"})
    assert source.current()[0] is None
    # After a restart the media path loads the lab key again; the guard, bound to it, stops it.
    restarted = KeySource()
    restarted.use_lab_key(lab)
    g2 = PrivacyGuard(state_dir=tmp_path, device_id="room-a", key_source=restarted)
    g2.enforce_lock()
    assert restarted.current()[0] is None
