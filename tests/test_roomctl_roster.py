"""Enrollment and the customer-signed roster, through the real ``roomagent identity`` and ``roomctl``
processes: what a room prints, what the roster accepts, and what it refuses (fleet-only signatures,
a key counted twice, an attestation that does not chain to the rostered key)."""

from __future__ import annotations

import datetime as dt
import json
import stat
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.control.documents import RoleSpec, RootBody, payload_type
from agent.control.dsse import Envelope, Signature
from agent.control.identity import DeviceIdentity
from agent.control.roster import RosterBody, RosterError, RosterRoom, roster_envelope, verify_roster
from agent.control.signing_keys import key_dict, keyid_of, private_key_pem
from agent.control.verify import trusted_root_from_body, verify_initial_root
from agent.privacy.hpke import HpkeIdentity
from tests.fleet_trust import Fleet, run


@pytest.fixture
def fleet(tmp_path: Path, agent_env: dict[str, str]) -> Fleet:
    return Fleet(tmp_path, agent_env)


def test_identity_prints_public_keys_only_and_is_stable(fleet: Fleet) -> None:
    fleet.room_config("room-1", None)
    first = fleet.identity("room-1").read_text()
    doc = json.loads(first)  # stdout is JSON only: log lines go to stderr
    assert doc["device"] == "room-1"
    assert doc["groups"] == ["hq"]
    assert doc["keyid"] == keyid_of(doc["ed25519"])
    assert set(doc["hpke"]) == {"x25519", "mlkem768-x25519"}
    # Same files as the daemon, created on first use with private modes; printed twice the same.
    ident = fleet.tmp / "room-1" / "identity"
    for name in ("ed25519.pem", "hpke.json"):
        assert stat.S_IMODE((ident / name).stat().st_mode) == 0o600
    assert fleet.identity("room-1").read_text() == first
    assert DeviceIdentity.load_or_create(fleet.tmp / "room-1").keyid == doc["keyid"]
    # No private key material anywhere in the output.
    private = json.loads((ident / "hpke.json").read_text())
    for secret in (private["x25519"], private["mlkem768-x25519"]["mlkem768_seed"]):
        assert secret not in first
    assert b"PRIVATE" not in first.encode()
    # The attestation is the device's signature over exactly these HPKE keys.
    env = Envelope.parse(json.dumps(doc["hpke_attestation"]).encode())
    assert json.loads(env.payload) == {"device": "room-1", "hpke": doc["hpke"]}
    plain = run(fleet.env, sys.executable, "-m", "agent", "identity", "--config", str(fleet.rooms["room-1"]))
    assert plain.returncode == 0
    assert doc["keyid"] in plain.stdout
    assert "roomctl roster add room-1" in plain.stdout


def test_roster_add_show_remove_bumps_version_and_resigns(fleet: Fleet) -> None:
    a = fleet.enroll("room-a", None, ("hq", "lab"))
    fleet.enroll("room-b", None)
    shown = fleet.roomctl("roster", "show", *fleet.trust, "--json")
    assert shown.returncode == 0, shown.stderr
    roster = json.loads(shown.stdout)
    assert roster["version"] == 2
    assert roster["customer"] == "acme"
    assert roster["rooms"]["room-a"]["keyid"] == a["keyid"]
    assert roster["rooms"]["room-a"]["groups"] == ["hq", "lab"]
    table = fleet.roomctl("roster", "show", *fleet.trust)
    assert table.returncode == 0
    assert "room-b" in table.stdout
    gone = fleet.roomctl(
        "roster", "remove", "room-b", "--customer-key", str(fleet.keys["customer"]), *fleet.trust
    )
    assert gone.returncode == 0, gone.stderr
    roster = json.loads(fleet.roomctl("roster", "show", *fleet.trust, "--json").stdout)
    assert roster["version"] == 3
    assert set(roster["rooms"]) == {"room-a"}
    # Re-enrolling keeps the groups unless new ones are given.
    again = fleet.roomctl(
        "roster",
        "add",
        "room-a",
        "--identity",
        str(fleet.tmp / "room-a.identity.json"),
        "--customer-key",
        str(fleet.keys["customer"]),
        *fleet.trust,
    )
    assert again.returncode == 0
    assert "replaced" in again.stdout
    roster = json.loads(fleet.roomctl("roster", "show", *fleet.trust, "--json").stdout)
    assert roster["rooms"]["room-a"]["groups"] == ["hq", "lab"]


def test_a_roster_signed_by_fleet_alone_is_refused(fleet: Fleet) -> None:
    fleet.room_config("room-a", None)
    identity = fleet.identity("room-a")
    # roomctl will not write one ...
    by_fleet = fleet.roomctl(
        "roster",
        "add",
        "room-a",
        "--identity",
        str(identity),
        "--customer",
        "acme",
        "--customer-key",
        str(fleet.keys["fleet"]),
        *fleet.trust,
    )
    assert by_fleet.returncode == 2
    assert "customer threshold" in by_fleet.stderr
    assert not fleet.roster.exists()
    # ... and will not read one the vendor made by hand.
    doc = json.loads(identity.read_text())
    body = RosterBody(
        customer="acme",
        rooms={
            "room-a": RosterRoom.model_validate(
                {**{k: doc[k] for k in ("ed25519", "hpke", "hpke_attestation")}}
            )
        },
    )
    now = dt.datetime.now(dt.UTC)
    env = roster_envelope(
        body, version=7, issued_at=now, expires=now + dt.timedelta(days=1), signers=[fleet.plane.fleet]
    )
    fleet.roster.write_bytes(env.to_json())
    for argv in (
        ("roster", "show", *fleet.trust),
        ("status", "--broker", "mqtt://127.0.0.1:9", *fleet.trust),
        (
            "meeting",
            "start",
            "--rooms",
            "room-a",
            "--broker",
            "mqtt://127.0.0.1:9",
            "--customer-key",
            str(fleet.keys["customer"]),
            *fleet.trust,
        ),
        (
            "lock",
            "room-a",
            "--broker",
            "mqtt://127.0.0.1:9",
            "--customer-key",
            str(fleet.keys["customer"]),
            *fleet.trust,
        ),
    ):
        result = fleet.roomctl(*argv)
        assert result.returncode == 2, (argv, result.stdout, result.stderr)
        assert "customer threshold" in result.stderr, argv
        assert "Traceback" not in result.stderr


def test_one_customer_key_under_two_key_ids_counts_once() -> None:
    customer = ed25519.Ed25519PrivateKey.generate()
    other = ed25519.Ed25519PrivateKey.generate()
    lower = key_dict(customer.public_key())
    upper = {**lower, "keyval": {"public": lower["keyval"]["public"].upper()}}
    keys = {keyid_of(k): k for k in (lower, upper, key_dict(other.public_key()))}
    ids = list(keys)
    role = {"keyids": ids[:2], "threshold": 2}
    roles = {
        "root": {"keyids": [ids[2]], "threshold": 1},
        "fleet": {"keyids": [ids[2]], "threshold": 1},
        "customer": role,
        "legal": {"keyids": [ids[2]], "threshold": 1},
    }
    # A trust root never lists one key twice (the device refuses such a root) ...
    with pytest.raises(ValueError, match="are the same key"):
        RootBody.model_validate({"keys": keys, "roles": roles})
    # ... and should one reach roomctl anyway, the key still counts once toward the threshold.
    body = RootBody.model_construct(
        keys=keys, roles={name: RoleSpec.model_construct(**spec) for name, spec in roles.items()}
    )
    now = dt.datetime.now(dt.UTC)
    root = trusted_root_from_body(body, 1, now + dt.timedelta(days=1))
    env = roster_envelope(
        RosterBody(customer="acme", rooms={}),
        version=1,
        issued_at=now,
        expires=now + dt.timedelta(days=1),
        signers=[customer],
    )
    sig = env.signatures[0].sig
    doubled = Envelope(env.payload_type, env.payload, (Signature(ids[0], sig), Signature(ids[1], sig)))
    with pytest.raises(RosterError, match="1 of 2"):
        verify_roster(doubled.to_json(), root, now=now)


def test_enrollment_refuses_an_identity_whose_attestation_does_not_chain(fleet: Fleet) -> None:
    fleet.room_config("room-a", None)
    doc = json.loads(fleet.identity("room-a").read_text())
    # The HPKE keys swapped for someone else's, the attestation left as it was.
    swapped = {**doc, "hpke": HpkeIdentity.generate().public_keys()}
    (fleet.tmp / "swapped.json").write_text(json.dumps(swapped))
    # A fresh attestation by another Ed25519 key.
    imposter = DeviceIdentity.load_or_create(fleet.tmp / "imposter")
    resigned = {
        **doc,
        "hpke_attestation": imposter.sign_envelope(
            "hpke-identity", {"device": "room-a", "hpke": doc["hpke"]}
        ).to_dict(),
    }
    (fleet.tmp / "resigned.json").write_text(json.dumps(resigned))
    for name, why in (("swapped.json", "differ"), ("resigned.json", "not signed by the room's rostered")):
        result = fleet.roomctl(
            "roster",
            "add",
            "room-a",
            "--identity",
            str(fleet.tmp / name),
            "--customer",
            "acme",
            "--customer-key",
            str(fleet.keys["customer"]),
            *fleet.trust,
        )
        assert result.returncode == 2
        assert "room-a" in result.stderr, result.stderr
        assert why in result.stderr, result.stderr
    wrong_room = fleet.roomctl(
        "roster",
        "add",
        "room-b",
        "--identity",
        str(fleet.tmp / "room-a.identity.json"),
        "--customer",
        "acme",
        "--customer-key",
        str(fleet.keys["customer"]),
        *fleet.trust,
    )
    assert wrong_room.returncode == 2
    assert "not 'room-b'" in wrong_room.stderr


def test_meeting_refuses_a_rostered_room_whose_attestation_does_not_chain(fleet: Fleet) -> None:
    """A roster the customer signed by mistake (another key's attestation) still stops the meeting."""
    fleet.enroll("room-a", None)
    fleet.room_config("room-b", None)
    doc = json.loads(fleet.identity("room-b").read_text())
    imposter = DeviceIdentity.load_or_create(fleet.tmp / "imposter")
    good = json.loads(fleet.roomctl("roster", "show", *fleet.trust, "--json").stdout)
    assert "room-a" in good["rooms"]
    root = verify_initial_root(fleet.root.read_bytes())
    now = dt.datetime.now(dt.UTC)
    current = verify_roster(fleet.roster.read_bytes(), root, now=now)
    rooms = dict(current.rooms)
    rooms["room-b"] = RosterRoom.model_validate(
        {
            "ed25519": doc["ed25519"],
            "hpke": doc["hpke"],
            "hpke_attestation": imposter.sign_envelope(
                "hpke-identity", {"device": "room-b", "hpke": doc["hpke"]}
            ).to_dict(),
            "groups": ["hq"],
        }
    )
    env = roster_envelope(
        RosterBody(customer="acme", rooms=rooms),
        version=current.version + 1,
        issued_at=now,
        expires=now + dt.timedelta(days=1),
        signers=[fleet.plane.customer],
    )
    fleet.roster.write_bytes(env.to_json())
    result = fleet.roomctl(
        "meeting",
        "start",
        "--rooms",
        "room-a,room-b",
        "--broker",
        "mqtt://127.0.0.1:9",
        "--customer-key",
        str(fleet.keys["customer"]),
        *fleet.trust,
    )
    assert result.returncode == 3
    assert "room-b" in result.stderr
    assert "not signed by the room's rostered identity key" in result.stderr
    assert "room-a:" not in result.stderr


def test_errors_name_the_next_step(fleet: Fleet, tmp_path: Path) -> None:
    fleet.enroll("room-a", None)
    # Wrong passphrase / missing passphrase on an encrypted customer key.
    enc = tmp_path / "enc.pem"
    enc.write_bytes(private_key_pem(fleet.plane.customer, b"right"))
    fleet.env["PASS"] = "wrong"
    common = ("roster", "remove", "room-a", "--customer-key", str(enc), *fleet.trust)
    wrong = fleet.roomctl(*common, "--passphrase-env", "PASS")
    assert wrong.returncode == 2
    assert "wrong passphrase" in wrong.stderr
    assert "$PASS" in wrong.stderr
    missing = fleet.roomctl(*common)
    assert missing.returncode == 2
    assert "--passphrase-env" in missing.stderr
    # Pushing an unsigned payload, or an envelope without signatures.
    payload = tmp_path / "config.json"
    payload.write_text(json.dumps({"kind": "config", "version": 1, "body": {}}))
    unsigned = fleet.roomctl(
        "push", str(payload), "--broker", "mqtt://127.0.0.1:9", "--device", "room-a", *fleet.trust
    )
    assert unsigned.returncode == 2
    assert "roomctl sign config" in unsigned.stderr
    bare = tmp_path / "bare.json"
    bare.write_bytes(Envelope(payload_type("config"), b"{}", ()).to_json())
    nosig = fleet.roomctl(
        "push", str(bare), "--broker", "mqtt://127.0.0.1:9", "--device", "room-a", *fleet.trust
    )
    assert nosig.returncode == 2
    assert "no signatures" in nosig.stderr
    # No roster given at all.
    none = fleet.roomctl("status", "--broker", "mqtt://127.0.0.1:9")
    assert none.returncode == 2
    assert "roomctl roster add" in none.stderr
    for r in (wrong, missing, unsigned, nosig, none):
        assert "Traceback" not in r.stderr
