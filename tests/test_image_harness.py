"""The image test's own machinery, on the host: it must fail loudly, and probe the real sandbox.

- A VM that cannot boot (here: no usable kernel) makes ``images/boot_test.py`` exit non-zero saying
  so, never pass silently.
- The in-guest self-test runs its probes with exactly the sandbox of ``systemd/roomagent.service``
  (every [Service] setting but the lifecycle ones), so "it works under the probe" means "it works
  under the unit".
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
SELFTEST = REPO / "images/selftest/usr/lib/roomagent-selftest/selftest.py"
UNIT = REPO / "systemd/roomagent.service"


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 not installed")
def test_boot_test_fails_loudly_when_nothing_boots(tmp_path: Path) -> None:
    # The attack on CI: an image that does not boot (a corrupt kernel) must not read as a pass.
    for name in ("vmlinux", "initrd.img", "rootfs.ext4"):
        (tmp_path / name).write_bytes(b"\0" * 4096)
    env = {**os.environ, "IMAGE_OUT": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "images/boot_test.py"), "--accel", "tcg", "--timeout", "30"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "image-test: FAIL" in proc.stderr
    assert "the guest never reported" in proc.stderr


def test_boot_test_refuses_a_missing_image(tmp_path: Path) -> None:
    env = {**os.environ, "IMAGE_OUT": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(REPO / "images/boot_test.py")],
                          capture_output=True, text=True, env=env, timeout=30, check=False)  # fmt: skip
    assert proc.returncode == 1
    assert "run make image first" in proc.stderr


def _load_selftest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("SELFTEST_RESULTS", str(tmp_path / "results.jsonl"))
    spec = importlib.util.spec_from_file_location("roomagent_selftest_under_test", SELFTEST)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _service_settings() -> list[tuple[str, str]]:
    settings, section = [], ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif line and not line.startswith("#") and section == "[Service]":
            key, _, value = line.partition("=")
            settings.append((key, value))
    return settings


def test_probe_sandbox_is_the_units_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    selftest = _load_selftest(tmp_path, monkeypatch)
    monkeypatch.setattr(selftest, "UNIT_FILE", UNIT)
    args = selftest.sandbox_properties()
    passed = [tuple(args[i + 1].split("=", 1)) for i in range(0, len(args), 2)]
    assert all(args[i] == "-p" for i in range(0, len(args), 2))
    expected = [(k, v) for k, v in _service_settings() if k not in selftest._LIFECYCLE_KEYS]
    assert passed == expected
    for key in ("User", "SupplementaryGroups", "DevicePolicy", "DeviceAllow", "SystemCallFilter",
                "MemoryDenyWriteExecute", "ProtectSystem", "RestrictAddressFamilies"):  # fmt: skip
        assert key in dict(passed), key


@pytest.mark.parametrize("mdwe", [True, False])
def test_probe_overrides_only_memory_deny_write_execute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mdwe: bool
) -> None:
    selftest = _load_selftest(tmp_path, monkeypatch)
    monkeypatch.setattr(selftest, "UNIT_FILE", UNIT)
    base = selftest.sandbox_properties()
    args = selftest.sandbox_properties(mdwe=mdwe)
    mdwe_args = [a for a in args if a.startswith("MemoryDenyWriteExecute=")]
    assert mdwe_args == [f"MemoryDenyWriteExecute={'yes' if mdwe else 'no'}"]
    others = [a for a in args if not a.startswith("MemoryDenyWriteExecute=") and a != "-p"]
    assert others == [a for a in base if not a.startswith("MemoryDenyWriteExecute=") and a != "-p"]
