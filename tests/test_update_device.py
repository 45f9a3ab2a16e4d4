"""The device updater against a real ``dbus-daemon`` hosting a RAUC ``Installer`` / logind ``Manager``
service object (tests/rauc_service.py, its own process) and a real HTTP mirror: download with resume
and checks, install through D-Bus, reboot, health check, Mark good / fall back, and the acks."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.control.apply import Outcome
from agent.control.documents import UpdateWindow
from agent.control.errors import Refused
from agent.control.verify import VerifiedDocument, VerifyContext, verify_document, verify_initial_root
from agent.schema.policy import PolicyBody, UpdatesPolicy
from agent.update.bus import Logind, RaucInstaller
from agent.update.download import DownloadLimits
from agent.update.errors import InstallError
from agent.update.updater import Updater, in_window
from tests.firmware import FirmwareLog, Mirror, PrivateBus
from tests.plane import Plane, now

V2 = b"roomagent firmware v2 " * 20_000  # ~440 KB
V3 = b"roomagent firmware v3 " * 20_000


class Beat:
    def beat(self) -> None:
        pass


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[PrivateBus]:
    b = PrivateBus(tmp_path / "dbus")
    yield b
    b.close()


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "v2.raucb").write_bytes(V2)
    (tmp_path / "www" / "v3.raucb").write_bytes(V3)
    m = Mirror(tmp_path / "www")
    yield m
    m.close()


class Room:
    """The device side of one room: state dir, firmware version file, reports received."""

    def __init__(self, tmp_path: Path, bus: PrivateBus, mirror: Mirror) -> None:
        self.plane = Plane(transparency=ed25519.Ed25519PrivateKey.generate())
        self.root = verify_initial_root(self.plane.root())
        assert self.plane.transparency is not None
        self.log = FirmwareLog(tmp_path / "log", self.plane.transparency)
        self.log.add(2, V2)
        self.log.add(3, V3)
        self.state = tmp_path / "state"
        self.version_file = tmp_path / "firmware-version"
        self.version_file.write_text("1\n")
        self.bus = bus
        self.mirror = mirror
        self.reports: list[tuple[str, int, str, Outcome]] = []
        self.health_problem: str | None = None
        self.meeting = False

    def doc(self, version: int, data: bytes, name: str, **extra: Any) -> VerifiedDocument:
        body = self.log.body(version, data, [f"{self.mirror.url}/{name}"], **extra)
        policy = PolicyBody(updates=UpdatesPolicy(mode="automatic"))
        ctx = VerifyContext("room-101", ("hq",), now(), {}, policy, 64 * 1024, 300, 1)
        return verify_document(self.plane.sign("update", body), "update", self.root, ctx)

    def updater(self) -> Updater:
        async def health() -> str | None:
            return self.health_problem

        def report(kind: str, version: int, sha: str, signers: tuple[str, ...], outcome: Outcome) -> None:
            self.reports.append((kind, version, sha, outcome))

        return Updater(
            self.state,
            installer=RaucInstaller(self.bus.address),
            rebooter=Logind(self.bus.address),
            report=report,
            health=health,
            running_version=lambda: int(self.version_file.read_text()),
            meeting_active=lambda: self.meeting,
            limits=DownloadLimits(chunk_bytes=16 * 1024, timeout_s=10),
            poll_s=0.05,
        )

    async def run_until(self, updater: Updater, done: Any) -> None:
        """Run the updater service until ``done()``; then cancel it (power off or agent stop)."""
        task = asyncio.create_task(updater.run(Beat()))
        try:
            async with asyncio.timeout(30):
                while not done():
                    if task.done():
                        task.result()
                    await asyncio.sleep(0.05)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    def slot(self, name: str) -> bytes:
        image = Path(self.bus.system()["slots"][name]["file"])
        return image.read_bytes() if image.exists() else b""

    def boot(self) -> None:
        """What the boot loader did on the reboot the service recorded: the booted slot's image."""
        image = self.slot(self.bus.system()["booted"])
        version = 2 if image == V2 else 3 if image == V3 else 1
        self.version_file.write_text(f"{version}\n")


@pytest.fixture
def room(tmp_path: Path, bus: PrivateBus, mirror: Mirror) -> Room:
    return Room(tmp_path, bus, mirror)


async def test_update_installs_reboots_and_is_marked_good(room: Room) -> None:
    doc = room.doc(2, V2, "v2.raucb")
    up = room.updater()
    up.submit(doc)
    assert up.owns("update", doc.payload_sha256)
    await room.run_until(up, lambda: room.bus.system()["reboots"] == 1)
    system = room.bus.system()
    assert system["installs"] == 1
    assert system["primary"] == "B"
    assert room.slot("B") == V2
    assert room.reports == []  # nothing acked before the new slot proved itself
    assert up.state()["phase"] == "rebooting"
    room.boot()  # the new slot came up with v2
    up = room.updater()  # a new process on the new slot, same data partition
    await room.run_until(up, lambda: room.reports)
    (kind, version, sha, outcome) = room.reports[0]
    assert (kind, version, sha, outcome.status) == ("update", doc.version, doc.payload_sha256, "applied")
    assert ["good", "B"] in room.bus.system()["marks"]
    assert up.firmware_version() == 2
    assert not up.owns("update", doc.payload_sha256)
    assert up.state() == {"firmware_version": 2, "phase": "idle"}
    assert not (room.state / "update" / "bundle.raucb").exists()
    with pytest.raises(Refused) as info:  # never back to the same (or an older) version
        up.submit(room.doc(2, V2, "v2.raucb"))
    assert info.value.reason == "rollback"


async def test_unhealthy_firmware_is_marked_bad_and_the_room_falls_back(room: Room) -> None:
    up = room.updater()
    up.submit(room.doc(3, V3, "v3.raucb"))
    await room.run_until(up, lambda: room.bus.system()["reboots"] == 1)
    room.boot()
    room.health_problem = "not healthy after 120 s: cameras missing"
    up = room.updater()
    await room.run_until(up, lambda: room.bus.system()["reboots"] == 2)  # marked bad, reboots back
    assert ["bad", "B"] in room.bus.system()["marks"]
    assert ["good", "B"] not in room.bus.system()["marks"]
    assert room.reports == []
    room.boot()
    assert up.firmware_version() == 1
    up = room.updater()
    await room.run_until(up, lambda: room.reports)
    outcome = room.reports[0][3]
    assert (outcome.status, outcome.reason) == ("rolled_back", "health_check_failed")
    assert "cameras missing" in outcome.message
    assert up.firmware_version() == 1


async def test_firmware_that_never_boots_is_reported_after_the_boot_loader_falls_back(room: Room) -> None:
    up = room.updater()
    up.submit(room.doc(3, V3, "v3.raucb"))
    await room.run_until(up, lambda: room.bus.system()["reboots"] == 1)
    # The new kernel panics: GRUB's attempts run out and slot A boots again.
    room.bus.set(booted="A", primary="A")
    room.boot()
    up = room.updater()
    await room.run_until(up, lambda: room.reports)
    outcome = room.reports[0][3]
    assert (outcome.status, outcome.reason) == ("rolled_back", "fell_back")


async def test_wrong_bytes_are_refused_before_rauc_sees_them(room: Room) -> None:
    room.mirror.corrupt = True
    up = room.updater()
    up.submit(room.doc(2, V2, "v2.raucb"))
    await room.run_until(up, lambda: room.reports)
    outcome = room.reports[0][3]
    assert (outcome.status, outcome.reason) == ("rejected", "hash_mismatch")
    assert room.bus.system()["installs"] == 0
    assert room.bus.system()["reboots"] == 0
    assert not list((room.state / "update").glob("bundle*"))


async def test_a_longer_response_is_cut_at_the_signed_length(room: Room) -> None:
    room.mirror.extra = b"x" * 100_000
    up = room.updater()
    up.submit(room.doc(2, V2, "v2.raucb"))
    await room.run_until(up, lambda: room.reports)
    outcome = room.reports[0][3]
    assert (outcome.status, outcome.reason) == ("rejected", "too_large")
    assert room.bus.system()["installs"] == 0


async def test_a_dropped_download_resumes_with_a_range_request(room: Room) -> None:
    room.mirror.drop_after = 100_000
    up = room.updater()
    up.submit(room.doc(2, V2, "v2.raucb"))
    await room.run_until(up, lambda: room.bus.system()["reboots"] == 1)
    assert room.mirror.ranges[0] is None
    assert room.mirror.ranges[1] is not None
    assert room.mirror.ranges[1].startswith("bytes=")
    assert int(room.mirror.ranges[1].removeprefix("bytes=").rstrip("-")) >= 16 * 1024
    assert room.slot("B") == V2


async def test_a_server_ignoring_range_starts_over_and_still_verifies(room: Room) -> None:
    room.mirror.drop_after = 100_000
    room.mirror.ignore_range = True
    up = room.updater()
    up.submit(room.doc(2, V2, "v2.raucb"))
    await room.run_until(up, lambda: room.bus.system()["reboots"] == 1)
    assert room.slot("B") == V2


async def test_rauc_install_failure_is_rolled_back_without_reboot(room: Room) -> None:
    room.bus.set(fail_install="Failed to mount bundle: squashfs error")
    up = room.updater()
    up.submit(room.doc(2, V2, "v2.raucb"))
    await room.run_until(up, lambda: room.reports)
    outcome = room.reports[0][3]
    assert (outcome.status, outcome.reason) == ("rolled_back", "install_failed")
    assert "squashfs error" in outcome.message
    assert room.bus.system()["reboots"] == 0


async def test_rauc_refusing_the_call_is_an_install_failure(room: Room) -> None:
    room.bus.set(refuse_calls=True)
    with pytest.raises(InstallError, match="Already processing"):
        await RaucInstaller(room.bus.address).install(Path("/nonexistent.raucb"))


async def test_rauc_missing_from_the_bus_is_an_install_failure(room: Room, tmp_path: Path) -> None:
    room.bus.stop_service()
    up = room.updater()
    up.submit(room.doc(2, V2, "v2.raucb"))
    await room.run_until(up, lambda: room.reports)
    outcome = room.reports[0][3]
    assert (outcome.status, outcome.reason) == ("rolled_back", "install_failed")


async def test_no_reboot_mid_meeting_or_outside_the_window(room: Room) -> None:
    room.meeting = True
    up = room.updater()
    up.submit(room.doc(2, V2, "v2.raucb"))
    await room.run_until(up, lambda: up.state()["phase"] == "installed")
    await asyncio.sleep(0.5)
    assert room.bus.system()["reboots"] == 0
    room.meeting = False
    up = room.updater()  # the agent restarted meanwhile: the phase survives
    await room.run_until(up, lambda: room.bus.system()["reboots"] == 1)


def test_install_window_wraps_midnight() -> None:
    w = UpdateWindow(start="23:00", end="02:00")
    at = lambda h, m: dt.datetime(2026, 11, 30, h, m, tzinfo=dt.UTC)  # noqa: E731
    assert in_window(w, at(23, 30))
    assert in_window(w, at(1, 59))
    assert not in_window(w, at(2, 0))
    assert not in_window(w, at(12, 0))
    day = UpdateWindow(start="02:00", end="04:00")
    assert in_window(day, at(3, 0))
    assert not in_window(day, at(4, 0))
    assert in_window(None, at(12, 0))


async def test_one_update_at_a_time(room: Room) -> None:
    up = room.updater()
    up.submit(room.doc(2, V2, "v2.raucb"))
    with pytest.raises(Refused):
        up.submit(room.doc(3, V3, "v3.raucb"))


async def test_rauc_not_yet_on_the_bus_after_boot_is_retried_not_given_up(room: Room) -> None:
    doc = room.doc(2, V2, "v2.raucb")
    up = room.updater()
    up.submit(doc)
    await room.run_until(up, lambda: room.bus.system()["reboots"] == 1)
    room.boot()
    room.bus.stop_service()  # rauc.service starts after roomagent on this boot
    up = room.updater()
    task = asyncio.create_task(up.run(Beat()))
    await asyncio.sleep(1.0)
    assert room.reports == []
    assert up.pending is not None
    room.bus.start_service()
    try:
        await reports_of(room)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert room.reports[0][3].status == "applied"


async def reports_of(room: Room) -> None:
    for _ in range(600):
        if room.reports:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("no report within 30 s")


class CountingBeat:
    def __init__(self) -> None:
        self.beats = 0

    def beat(self) -> None:
        self.beats += 1


async def test_a_long_health_check_does_not_look_like_a_stall(room: Room) -> None:
    up = room.updater()
    up.submit(room.doc(2, V2, "v2.raucb"))
    await room.run_until(up, lambda: room.bus.system()["reboots"] == 1)
    room.boot()
    release = asyncio.Event()

    async def slow_health() -> str | None:
        await release.wait()  # e.g. waiting for the daemon's READY, which waits for every service
        return None

    up = room.updater()
    up._health = slow_health
    beat = CountingBeat()
    task = asyncio.create_task(up.run(beat))
    await asyncio.sleep(2.5)
    assert beat.beats >= 2  # the supervisor sees progress (and READY is not held back)
    assert up.state()["phase"] == "verifying"
    release.set()
    try:
        await reports_of(room)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert room.reports[0][3].status == "applied"


async def test_an_agent_crash_mid_download_resumes_where_it_stopped(room: Room) -> None:
    room.mirror.chunk_delay_s = 0.02
    part = room.state / "update" / "bundle.raucb.part"
    up = room.updater()
    up.submit(room.doc(2, V2, "v2.raucb"))
    await room.run_until(up, lambda: part.exists() and part.stat().st_size > 100_000)  # then: kill
    assert up.state()["phase"] == "downloading"
    room.mirror.chunk_delay_s = 0.0
    up = room.updater()  # the restarted agent
    await room.run_until(up, lambda: room.bus.system()["reboots"] == 1)
    resumed_from = int(room.mirror.ranges[-1].removeprefix("bytes=").rstrip("-"))
    assert resumed_from > 100_000
    assert room.slot("B") == V2


@pytest.fixture
def tls_mirror(tmp_path: Path) -> Iterator[tuple[Mirror, Path]]:
    """An HTTPS mirror with a self-signed certificate for ``localhost``; yields it and the CA file."""
    import subprocess

    cert, key = tmp_path / "mirror.pem", tmp_path / "mirror.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-days",
            "2",
        ],
        check=True,
        capture_output=True,
    )
    (tmp_path / "tls-www").mkdir()
    (tmp_path / "tls-www" / "v2.raucb").write_bytes(V2)
    mirror = Mirror(tmp_path / "tls-www", tls=(cert, key))
    yield mirror, cert
    mirror.close()


async def test_https_mirror_with_the_configured_ca_and_refused_without_it(
    tls_mirror: tuple[Mirror, Path], tmp_path: Path
) -> None:
    import hashlib

    from agent.update.download import fetch
    from agent.update.errors import DownloadError

    mirror, ca = tls_mirror
    sha = hashlib.sha256(V2).hexdigest()
    with pytest.raises(DownloadError) as info:  # the system CAs do not know this mirror
        await fetch(
            [f"{mirror.url}/v2.raucb"],
            len(V2),
            sha,
            tmp_path / "a.raucb",
            limits=DownloadLimits(attempts_per_url=1),
        )
    assert info.value.reason == "download_failed"
    assert "CERTIFICATE_VERIFY_FAILED" in info.value.message
    out = await fetch([f"{mirror.url}/v2.raucb"], len(V2), sha, tmp_path / "b.raucb", ca_file=ca)
    assert out == tmp_path / "b.raucb"
    assert not (tmp_path / "b.raucb.part").exists()
