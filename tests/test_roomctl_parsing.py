"""roomctl's reading of what the broker relays: any bytes give a value, a ``ValueError`` or an
untrusted verdict, never another exception (structure-aware and byte-level generators)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.control.dsse import Envelope
from agent.control.identity import DeviceIdentity
from agent.control.roster import Roster, RosterBody, RosterRoom
from agent.fleet.common import MAX_JSON_DEPTH, parse_json_message
from agent.fleet.push import verify_state
from agent.fleet.send import verify_ack

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=40,
)


@pytest.fixture(scope="module")
def room(tmp_path_factory: pytest.TempPathFactory) -> tuple[Roster, DeviceIdentity]:
    device = DeviceIdentity.load_or_create(tmp_path_factory.mktemp("room"))
    hpke = {"x25519": "AAAA"}
    entry = RosterRoom(
        ed25519=device.public_dict,
        hpke=hpke,
        hpke_attestation=device.sign_envelope("hpke-identity", {"device": "room-a", "hpke": hpke}).to_dict(),
        groups=["hq"],
    )
    now = dt.datetime.now(dt.UTC)
    roster = Roster(
        1, now, now + dt.timedelta(days=1), RosterBody(customer="acme", rooms={"room-a": entry}), ()
    )
    return roster, device


@given(st.binary(max_size=2000))
@settings(max_examples=300, deadline=None)
def test_any_bytes_parse_or_raise_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        parse_json_message(data)


@given(_json)
@settings(max_examples=200, deadline=None)
def test_any_json_value_round_trips(value: object) -> None:
    assert parse_json_message(json.dumps(value).encode()) == value


def test_nesting_is_bounded_before_parsing_and_strings_do_not_count() -> None:
    deep = b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1)
    with pytest.raises(ValueError, match="nested deeper"):
        parse_json_message(deep)
    for n in (100_000, 1_000_000):
        with pytest.raises(ValueError, match="nested deeper"):
            parse_json_message(b"[" * n + b"]" * n)
    ok = json.dumps({"s": "[" * 1000 + '\\"{' * 100}).encode()
    assert parse_json_message(ok)["s"].startswith("[[[")
    at_limit = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert parse_json_message(at_limit) is not None


@given(st.binary(max_size=3000) | _json.map(lambda v: json.dumps(v).encode()))
@settings(max_examples=300, deadline=None)
def test_any_ack_bytes_are_garbage_or_an_untrusted_verdict(
    room: tuple[Roster, DeviceIdentity], data: bytes
) -> None:
    roster, _ = room
    try:
        _, untrusted = verify_ack("room-a", data, roster)
    except (ValueError, TypeError):
        return
    assert untrusted is not None  # nothing random is ever signed by the rostered key


@given(_json)
@settings(max_examples=300, deadline=None)
def test_any_state_value_is_never_verified(room: tuple[Roster, DeviceIdentity], state: object) -> None:
    trust, _ = verify_state("room-a", state, room[0])
    assert trust in ("forged", "unverified")


def test_a_signed_ack_from_the_rostered_key_verifies_and_another_rooms_name_does_not(
    room: tuple[Roster, DeviceIdentity], tmp_path: Path
) -> None:
    roster, device = room
    ack = {"kind": "ack", "device": "room-a", "status": "applied", "payload_sha256": "00"}
    assert verify_ack("room-a", device.sign_envelope("ack", ack).to_json(), roster)[1] is None
    other = device.sign_envelope("ack", {**ack, "device": "room-b"}).to_json()
    assert verify_ack("room-a", other, roster)[1] is not None
    planted = DeviceIdentity.load_or_create(tmp_path / "planted").sign_envelope("ack", ack).to_json()
    assert "rostered" in str(verify_ack("room-a", planted, roster)[1])
    unsigned = Envelope("application/vnd.roomagent.ack+json", json.dumps(ack).encode(), ()).to_json()
    assert verify_ack("room-a", unsigned, roster)[1] is not None


@given(st.text(alphabet='[]{}"\\ab\n', max_size=30))
@settings(max_examples=200, deadline=None)
def test_brackets_and_escapes_inside_strings_never_count_as_nesting(text: str) -> None:
    value: object = text
    for _ in range(MAX_JSON_DEPTH - 1):
        value = [text, value]
    assert parse_json_message(json.dumps({"k": value}).encode()) == {"k": value}
