"""``roomctl log`` and ``roomctl update make`` + ``roomctl sign update`` (fleet and customer on their
own machines): the envelope the rooms get verifies under customer approval; log errors are typed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.control.signing_keys import private_key_pem
from agent.control.verify import VerifyContext, verify_document, verify_initial_root
from agent.fleet.cli import main as roomctl
from agent.schema.policy import PolicyBody
from tests.plane import Plane, now


@pytest.fixture
def plane() -> Plane:
    return Plane(transparency=ed25519.Ed25519PrivateKey.generate())


def write_key(tmp_path: Path, name: str, key: object) -> Path:
    path = tmp_path / f"{name}.pem"
    path.write_bytes(private_key_pem(key, None))  # type: ignore[arg-type]
    return path


def test_make_sign_countersign_and_the_room_accepts_it(
    plane: Plane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_key = write_key(tmp_path, "log", plane.transparency)
    fleet = write_key(tmp_path, "fleet", plane.fleet)
    customer = write_key(tmp_path, "customer", plane.customer)
    bundle = tmp_path / "room-v7.raucb"
    bundle.write_bytes(b"v7" * 5000)
    other = tmp_path / "other.raucb"
    other.write_bytes(b"other")
    log = str(tmp_path / "log")
    assert roomctl(["log", "append", str(other), "--log", log, "--key", str(log_key), "--version", "6"]) == 0
    assert roomctl(["log", "append", str(bundle), "--log", log, "--key", str(log_key), "--version", "7"]) == 0
    assert roomctl(["log", "append", str(bundle), "--log", log, "--key", str(log_key), "--version", "8"]) == 1
    assert "already" in capsys.readouterr().err
    payload, env = tmp_path / "u.json", tmp_path / "u.env"
    assert (
        roomctl(
            [
                "update",
                "make",
                str(bundle),
                "--log",
                log,
                "--url",
                "https://m.example/v7.raucb",
                "--group",
                "hq",
                "--window",
                "23:00-02:00",
                "--out",
                str(payload),
            ]
        )
        == 0
    )
    body = json.loads(payload.read_text())["body"]
    assert (body["firmware_version"], body["install_window"]) == (7, {"start": "23:00", "end": "02:00"})
    assert roomctl(["sign", "update", str(payload), "--key", str(fleet), "--out", str(env)]) == 0
    assert roomctl(["sign", "update", str(env), "--key", str(customer), "--out", str(env)]) == 0
    root = verify_initial_root(plane.root())
    ctx = VerifyContext("room-9", ("hq",), now(), {}, PolicyBody(), 64 * 1024, 300, 6)  # customer_approval
    doc = verify_document(env.read_bytes(), "update", root, ctx)
    assert doc.roles >= {"fleet", "customer"}
    capsys.readouterr()
    assert roomctl(["log", "prove", str(bundle), "--log", log]) == 0
    proof = json.loads(capsys.readouterr().out)
    assert (proof["index"], proof["tree_size"], proof["leaf"]["version"]) == (1, 2, 7)


def test_log_verify_catches_a_rewritten_log(
    plane: Plane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_key = write_key(tmp_path, "log", plane.transparency)
    root = tmp_path / "root.json"
    root.write_bytes(plane.root())
    log = tmp_path / "log"
    for v in (1, 2, 3):
        b = tmp_path / f"b{v}"
        b.write_bytes(b"bundle %d" % v)
        assert (
            roomctl(["log", "append", str(b), "--log", str(log), "--key", str(log_key), "--version", str(v)])
            == 0
        )
    kept = tmp_path / "kept"
    kept.write_bytes((log / "checkpoint").read_bytes())
    assert roomctl(["log", "verify", "--log", str(log), "--root", str(root), "--checkpoint", str(kept)]) == 0
    # The operator swaps entry 2 for other bytes and re-signs a checkpoint of the same size: the
    # new checkpoint verifies on its own, but not against the one an auditor kept.
    lines = (log / "entries.jsonl").read_text().splitlines()
    entry = json.loads(lines[1])
    entry["sha256"] = "f" * 64
    lines[1] = json.dumps(entry, sort_keys=True)
    (log / "entries.jsonl").write_text("\n".join(lines) + "\n")
    b4 = tmp_path / "b4"
    b4.write_bytes(b"bundle 4")
    assert (
        roomctl(["log", "append", str(b4), "--log", str(log), "--key", str(log_key), "--version", "4"]) == 0
    )
    capsys.readouterr()
    assert roomctl(["log", "verify", "--log", str(log), "--root", str(root)]) == 0
    assert roomctl(["log", "verify", "--log", str(log), "--root", str(root), "--checkpoint", str(kept)]) == 1
    assert "rewritten" in capsys.readouterr().err
    # Editing entries without re-signing is caught without any old checkpoint.
    lines = (log / "entries.jsonl").read_text().splitlines()
    (log / "entries.jsonl").write_text("\n".join([lines[0], lines[2], lines[1], lines[3]]) + "\n")
    assert roomctl(["log", "verify", "--log", str(log), "--root", str(root)]) == 1
    assert "do not hash" in capsys.readouterr().err
