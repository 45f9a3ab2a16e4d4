"""The systemd units of the room system, checked with systemd's own tools.

- ``systemd-analyze security --offline=true``: the exposure score of roomagent.service stays within
  the issue's bound (2.0; the unit scores 1.5), and the analysis really notices a weakened unit.
- ``systemd-sysusers`` / ``systemd-tmpfiles`` with ``--root``: the user, its groups and directories.
- ``systemd-analyze verify --root=<image rootfs>``: no warning at all (it warns with exit code 0, so
  stderr is what counts). Needs the image's root file system (``make image``); marked ``image``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SYSTEMD = REPO / "systemd"
UNIT = SYSTEMD / "roomagent.service"
EXPOSURE_LIMIT = 2.0  # regression bound with headroom; the unit scores 1.5 (docs/image.md)

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)


def _sections(text: str) -> dict[str, list[tuple[str, str]]]:
    """Unit file → {section: [(key, value), ...]} keeping repeated keys (systemd semantics)."""
    out: dict[str, list[tuple[str, str]]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, [])
            continue
        key, _, value = line.partition("=")
        out[section].append((key.strip(), value.strip()))
    return out


def _exposure(unit: Path) -> float:
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    assert match, f"no exposure in systemd-analyze output:\n{proc.stdout}\n{proc.stderr}"
    return float(match.group(1))


def test_unit_exposure_is_within_bound() -> None:
    score = _exposure(UNIT)
    assert score <= EXPOSURE_LIMIT, f"roomagent.service exposure {score} > {EXPOSURE_LIMIT}"


@pytest.mark.parametrize(
    "weakening",
    [
        "NoNewPrivileges=no\nCapabilityBoundingSet=CAP_SYS_ADMIN\n",
        "ProtectSystem=no\nProtectHome=no\nPrivateTmp=no\n",
        "SystemCallFilter=\nRestrictAddressFamilies=\nRestrictNamespaces=no\n",
    ],
    ids=["privileges", "filesystem", "syscalls"],
)
def test_a_weakened_unit_scores_worse(tmp_path: Path, weakening: str) -> None:
    # The attack: someone relaxes the sandbox in a later edit. The analysis must see it.
    weak = tmp_path / "roomagent.service"
    weak.write_text(UNIT.read_text().replace("[Install]", weakening + "\n[Install]"))
    assert _exposure(weak) > _exposure(UNIT)


def test_unit_settings_required_by_the_issue() -> None:
    unit = _sections(UNIT.read_text())
    service = dict(unit["Service"])
    start_limits = {k for k, _ in unit["Unit"]}
    # StartLimit* belong to [Unit] (in [Service] systemd ignores them with a warning).
    assert {"StartLimitIntervalSec", "StartLimitBurst"} <= start_limits
    assert not {k for k, _ in unit["Service"] if k.startswith("StartLimit")}
    expected = {
        "Type": "notify", "NotifyAccess": "main", "Restart": "on-failure", "User": "roomagent",
        "SupplementaryGroups": "video", "StateDirectory": "roomagent", "ConfigurationDirectory": "roomagent",
        "UMask": "0077", "DevicePolicy": "closed", "DeviceAllow": "char-video4linux rw",
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "ProtectClock": "yes",
        "ProtectHostname": "yes", "ProtectProc": "invisible", "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes", "RestrictSUIDSGID": "yes", "LockPersonality": "yes",
        "SystemCallArchitectures": "native", "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    }  # fmt: skip
    wrong = {k: (service.get(k), v) for k, v in expected.items() if service.get(k) != v}
    assert not wrong, f"(actual, expected): {wrong}"
    assert "WatchdogSec" in service
    assert "@system-service" in [v for k, v in unit["Service"] if k == "SystemCallFilter"]
    assert unit["Install"] == [("WantedBy", "multi-user.target")]


def _root_with_video_group(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\nvideo:x:44:\n")
    return root


def test_sysusers_creates_a_locked_system_user_in_group_video(tmp_path: Path) -> None:
    root = _root_with_video_group(tmp_path)
    subprocess.run(["systemd-sysusers", f"--root={root}", str(SYSTEMD / "roomagent.sysusers")],
                   check=True, capture_output=True, timeout=30)  # fmt: skip
    users = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in (root / "etc/group").read_text().splitlines()}
    user = users["roomagent"]
    assert int(user[2]) < 1000, "a system user (uid below 1000)"
    assert user[5:] == ["/var/lib/roomagent", "/usr/sbin/nologin"]
    assert "roomagent" in groups["video"][3].split(",")
    assert groups["roomagent"][2] == user[3]


def test_tmpfiles_directories_owned_and_private(tmp_path: Path) -> None:
    root = _root_with_video_group(tmp_path)
    subprocess.run(["systemd-sysusers", f"--root={root}", str(SYSTEMD / "roomagent.sysusers")],
                   check=True, capture_output=True, timeout=30)  # fmt: skip
    subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create", str(SYSTEMD / "roomagent.tmpfiles")],
                   check=True, capture_output=True, timeout=30)  # fmt: skip
    uid = int(
        next(
            line for line in (root / "etc/passwd").read_text().splitlines() if line.startswith("roomagent:")
        ).split(":")[2]
    )
    state = (root / "var/lib/roomagent").stat()
    assert (state.st_mode & 0o777, state.st_uid) == (0o700, uid)
    tls = (root / "etc/roomagent/tls").stat()
    assert (tls.st_mode & 0o777, tls.st_uid, tls.st_gid) == (0o750, 0, uid)
    assert ((root / "etc/roomagent").stat().st_mode & 0o777) == 0o755


def test_udev_rule_gives_cameras_to_group_video_only() -> None:
    rules = (SYSTEMD / "70-roomagent-camera.rules").read_text()
    active = [line for line in rules.splitlines() if line.strip() and not line.startswith("#")]
    assert any('SUBSYSTEM!="video4linux"' in line for line in active)
    assert any(
        'GROUP="video"' in line and 'MODE="0660"' in line and 'TAG+="systemd"' in line for line in active
    )
    # Enforced for real in the VM: images/selftest checks /dev/video0 is video 0660 with the symlink.


def _image_rootfs() -> Path | None:
    path = Path(os.environ.get("IMAGE_ROOTFS", REPO / "images/out/rootfs"))
    return path if (path / "usr/lib/systemd/system/roomagent.service").exists() else None


@pytest.mark.image
def test_verify_against_image_rootfs_is_silent() -> None:
    root = _image_rootfs()
    if root is None:
        if os.environ.get("IMAGE_ROOTFS"):
            pytest.fail(f"IMAGE_ROOTFS={os.environ['IMAGE_ROOTFS']} holds no built image")
        pytest.skip("no image root file system: run make image (make image-test runs this test)")
    units = ["roomagent.service"]
    if (root / "usr/lib/systemd/system/roomagent-selftest.service").exists():
        units.append("roomagent-selftest.service")
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={root}", *units],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", f"systemd-analyze verify warned:\n{proc.stderr}"
