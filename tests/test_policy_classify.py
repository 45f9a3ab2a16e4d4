"""Every policy change is classified; weakening on any axis is a weakening."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from agent.schema.policy import DEFAULT_POLICY, Change, PolicyBody, classify_change


def _with(**changes: Any) -> PolicyBody:
    data = DEFAULT_POLICY.model_dump()
    for path, value in changes.items():
        section, _, key = path.partition("__")
        if key:
            data[section][key] = value
        else:
            data[section] = value
    return PolicyBody.model_validate(data)


def test_first_boot_default_is_private() -> None:
    assert DEFAULT_POLICY.e2ee.required
    assert DEFAULT_POLICY.camera.shutter_when_idle
    assert not DEFAULT_POLICY.camera.remote_snapshot
    assert DEFAULT_POLICY.telemetry.level == "minimal"


@pytest.mark.parametrize(
    "change",
    [
        {"e2ee__required": False},
        {"e2ee__suites": [4, 1]},
        {"e2ee__suites": [4]},  # strongest suite (5) taken away
        {"camera__shutter_when_idle": False},
        {"camera__remote_snapshot": True},
        {"telemetry__level": "standard"},
        {"telemetry__fields": ["cpu_load"]},
        {"jurisdiction": "US"},
    ],
)
def test_weakenings(change: dict[str, Any]) -> None:
    assert classify_change(DEFAULT_POLICY, _with(**change)) is Change.WEAKEN


@pytest.mark.parametrize(
    "change",
    [
        {"telemetry__level": "none"},
        {"e2ee__kem": "mlkem768-x25519"},
        {"camera__remote_ptz": False},
    ],
)
def test_tightenings(change: dict[str, Any]) -> None:
    assert classify_change(DEFAULT_POLICY, _with(**change)) is Change.TIGHTEN


def test_same_policy_keeps() -> None:
    assert classify_change(DEFAULT_POLICY, PolicyBody()) is Change.KEEP


def test_mixed_change_is_weakening() -> None:
    new = _with(telemetry__level="none", camera__remote_snapshot=True)
    assert classify_change(DEFAULT_POLICY, new) is Change.WEAKEN


@pytest.mark.parametrize("bad", [{"e2ee": {"suites": [9]}}, {"jurisdiction": "germany"}, {"extra": 1}])
def test_invalid_policy_bodies(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        PolicyBody.model_validate(bad)
