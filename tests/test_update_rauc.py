"""The updater against Debian's real ``rauc service`` (1.8) on a private ``dbus-daemon``: a signed
RAUC bundle is downloaded, installed into the inactive slot (a file), the slot marked good after the
"reboot" (RAUC restarted with the other boot slot); a bundle signed by a CA outside RAUC's keyring is
refused by RAUC itself even though it is in the transparency log (defence in depth).

Needs root and loop devices (RAUC mounts the bundle's squashfs); skipped otherwise, saying so.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.control.apply import Outcome
from agent.control.verify import VerifiedDocument, VerifyContext, verify_document, verify_initial_root
from agent.schema.policy import PolicyBody, UpdatesPolicy
from agent.update.bus import Logind, RaucInstaller
from agent.update.updater import Updater
from tests.firmware import FirmwareLog, Mirror, PrivateBus, RealRauc
from tests.plane import Plane, now

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("rauc") is None, reason="Debian package rauc not installed"),
    pytest.mark.skipif(
        os.geteuid() != 0 or not Path("/dev/loop-control").exists(),
        reason="RAUC mounts bundles on loop devices: needs root and /dev/loop-control",
    ),
]

ROOTFS_V2 = os.urandom(1024 * 1024)


class Beat:
    def beat(self) -> None:
        pass


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[PrivateBus, RealRauc, Mirror]]:
    bus = PrivateBus(tmp_path / "dbus", logind_only=True)
    rauc = RealRauc(tmp_path / "rauc", bus)
    (tmp_path / "www").mkdir()
    mirror = Mirror(tmp_path / "www")
    try:
        yield bus, rauc, mirror
    finally:
        rauc.stop()
        mirror.close()
        bus.close()


def make_doc(plane: Plane, flog: FirmwareLog, version: int, data: bytes, url: str) -> VerifiedDocument:
    root = verify_initial_root(plane.root())
    policy = PolicyBody(updates=UpdatesPolicy(mode="automatic"))
    ctx = VerifyContext("room-101", ("hq",), now(), {}, policy, 64 * 1024, 300, 1)
    return verify_document(plane.sign("update", flog.body(version, data, [url])), "update", root, ctx)


async def run_until(updater: Updater, done: Any) -> None:
    task = asyncio.create_task(updater.run(Beat()))
    try:
        for _ in range(600):
            if done():
                return
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        raise TimeoutError
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_real_rauc_installs_into_the_inactive_slot_and_marks_it_good(
    setup: tuple[PrivateBus, RealRauc, Mirror], tmp_path: Path
) -> None:
    bus, rauc, mirror = setup
    plane = Plane(transparency=ed25519.Ed25519PrivateKey.generate())
    assert plane.transparency is not None
    flog = FirmwareLog(tmp_path / "log", plane.transparency)
    good = rauc.bundle(mirror.dir / "v2.raucb", ROOTFS_V2, 2)
    rogue = rauc.bundle(mirror.dir / "v3.raucb", os.urandom(4096), 3, signer="rogue")
    flog.add(2, good)
    flog.add(3, rogue)
    version = tmp_path / "firmware-version"
    version.write_text("1")
    reports: list[Outcome] = []

    async def healthy() -> str | None:
        return None

    def updater() -> Updater:
        return Updater(
            tmp_path / "state",
            installer=RaucInstaller(bus.address),
            rebooter=Logind(bus.address),
            report=lambda kind, v, sha, signers, outcome: reports.append(outcome),
            health=healthy,
            running_version=lambda: int(version.read_text()),
            poll_s=0.05,
        )

    rauc.start(boot_slot="A")
    # A bundle the log knows but signed outside RAUC's keyring: RAUC itself refuses it.
    up = updater()
    up.submit(make_doc(plane, flog, 3, rogue, f"{mirror.url}/v3.raucb"))
    await run_until(up, lambda: reports)
    assert (reports[0].status, reports[0].reason) == ("rolled_back", "install_failed")
    assert "signature" in reports[0].message.lower(), reports[0]
    assert bus.system()["reboots"] == 0
    # The good bundle: installed into slot B (rootfs.1) through RAUC's D-Bus API, then logind reboot.
    reports.clear()
    up = updater()
    up.submit(make_doc(plane, flog, 2, good, f"{mirror.url}/v2.raucb"))
    await run_until(up, lambda: bus.system()["reboots"] == 1)
    assert rauc.slot("B", len(ROOTFS_V2)) == ROOTFS_V2
    assert rauc.slot("A", 16) == b"\0" * 16
    assert reports == []
    # Booted from B now (the kernel command line would say so); the agent checks health, marks good.
    rauc.start(boot_slot="B")
    version.write_text("2")
    up = updater()
    await run_until(up, lambda: reports)
    assert (reports[0].status, reports[0].reason) == ("applied", None)
    assert "marked slot rootfs.1 as good" in (rauc.dir / "rauc.log").read_text()
    status = (rauc.dir / "status.raucs").read_text()
    assert "[slot.rootfs.1]" in status
    assert "bundle.version=2" in status
