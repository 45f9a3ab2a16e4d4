"""The device updater: one ``update`` document from acceptance to ``applied`` or ``rolled_back``.

Phases, persisted in ``<state>/update/state.json`` (the data partition, which every slot shares) so
that each survives a crash or a reboot::

    downloading -> installing -> installed --(install window, no meeting)--> rebooting
       rebooting, booted into the new slot   -> health check -> Mark good -> ack applied
       rebooting, health check fails         -> Mark bad, reboot -> (old slot) ack rolled_back
       rebooting, back in the old slot       -> the boot loader fell back -> ack rolled_back

The control plane has already verified the document (signatures by policy mode, transparency-log
inclusion, firmware version) when :meth:`Updater.submit` runs; the updater checks the version again
against the version recorded here (a slot may carry an older build than the highest ever marked
good), downloads with the hash checked before RAUC reads a byte, and reports the outcome through
``report`` when it is known, possibly one or two boots later.
"""

from __future__ import annotations

__all__ = ["HealthCheck", "Installer", "Rebooter", "Reporter", "Updater", "in_window"]

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, Protocol

import structlog

from agent.control.apply import Outcome
from agent.control.documents import UpdateBody, UpdateWindow
from agent.control.errors import Refused
from agent.control.verify import VerifiedDocument
from agent.persist import atomic_write_json, read_json
from agent.update.download import DownloadLimits, fetch
from agent.update.errors import BusError, UpdateError

log = structlog.get_logger()


class Installer(Protocol):
    async def boot_slot(self) -> str: ...

    async def install(self, bundle: Path, progress: Callable[[int, str], None]) -> None: ...

    async def mark(self, state: Literal["good", "bad", "active"], slot: str = "booted") -> str: ...


class Rebooter(Protocol):
    async def reboot(self) -> None: ...


class Reporter(Protocol):
    def __call__(
        self, kind: str, version: int, sha: str, signers: tuple[str, ...], outcome: Outcome
    ) -> None: ...


_RETRY_ON_BUS_ERROR = frozenset({"installed", "rebooting", "verifying", "failed_health"})

HealthCheck = Callable[[], Awaitable[str | None]]
"""Returns ``None`` when the new firmware is healthy, else what is wrong (for the ack)."""


def in_window(window: UpdateWindow | None, now: dt.datetime) -> bool:
    """Whether ``now`` (UTC) lies in the daily window; no window: any time."""
    if window is None:
        return True
    t = now.astimezone(dt.UTC).strftime("%H:%M")
    if window.start < window.end:
        return window.start <= t < window.end
    return t >= window.start or t < window.end  # wraps midnight


def read_firmware_version(path: Path) -> int:
    """The running slot's firmware version (an integer in a file of the image); 0 if unknown."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0


class Updater:
    """Implements the daemon's ``Service`` contract; :meth:`submit` is the ``update`` handler's core."""

    name = "update"

    def __init__(
        self,
        state_dir: Path,
        *,
        installer: Installer,
        rebooter: Rebooter,
        report: Reporter,
        health: HealthCheck,
        running_version: Callable[[], int],
        meeting_active: Callable[[], bool] = lambda: False,
        changed: Callable[[], None] = lambda: None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        limits: DownloadLimits | None = None,
        ca_file: Path | None = None,
        poll_s: float = 5.0,
    ) -> None:
        self.dir = Path(state_dir) / "update"
        self._installer = installer
        self._rebooter = rebooter
        self._report = report
        self._health = health
        self._running_version = running_version
        self._meeting_active = meeting_active
        self._changed = changed
        self._clock = clock
        self._limits = limits or DownloadLimits()
        self._ca = ca_file
        self._poll_s = poll_s
        self._wake = asyncio.Event()
        self._progress: dict[str, Any] = {}
        data = read_json(self.dir / "state.json")
        self._data: dict[str, Any] = (
            data if isinstance(data, dict) else {"installed_version": 0, "pending": None}
        )

    # -- state -----------------------------------------------------------------------------------
    @property
    def pending(self) -> dict[str, Any] | None:
        p = self._data.get("pending")
        return p if isinstance(p, dict) else None

    def firmware_version(self) -> int:
        """The version rollback protection compares against: the running one or the highest ever
        marked good, whichever is greater."""
        return max(self._running_version(), int(self._data.get("installed_version", 0)))

    def owns(self, kind: str, sha: str) -> bool:
        """True while the outcome of this ``update`` document is still to come (redeliveries of
        the retained document are then neither re-run nor acked)."""
        p = self.pending
        return kind == "update" and p is not None and p["sha"] == sha

    def state(self) -> dict[str, Any]:
        """The ``update`` field of the device state."""
        p = self.pending
        out: dict[str, Any] = {"firmware_version": self._running_version(), "phase": "idle"}
        if p is not None:
            out.update(phase=p["phase"], target_version=p["target"], **self._progress)
        return out

    def _save(self) -> None:
        atomic_write_json(self.dir / "state.json", self._data, mode=0o644)

    def _set_phase(self, phase: str, **extra: Any) -> None:
        p = self.pending
        assert p is not None
        self._data["pending"] = {**p, "phase": phase, **extra}
        self._save()
        self._progress = {}
        log.info("update_phase", phase=phase, target_version=p["target"])
        self._changed()

    def _finish(
        self, status: Literal["applied", "rejected", "rolled_back"], reason: str | None, msg: str
    ) -> None:
        p = self.pending
        assert p is not None
        log.info("update_finished", status=status, reason=reason, target_version=p["target"])
        # Report (which records the outcome in the control state) before forgetting the update: a
        # crash in between re-reports it on the next start rather than never acking it.
        self._report(
            "update",
            p["doc_version"],
            p["sha"],
            tuple(p["signers"]),
            Outcome(status, reason, msg[:300]),  # type: ignore[arg-type]  # reason is an ack code
        )
        self._data["pending"] = None
        self._save()
        for leftover in (self.dir / "bundle.raucb", self.dir / "bundle.raucb.part"):
            leftover.unlink(missing_ok=True)
        self._progress = {}
        self._changed()

    # -- the handler -----------------------------------------------------------------------------
    def submit(self, doc: VerifiedDocument) -> None:
        """Accept a verified ``update`` document; the work continues in :meth:`run`.

        Raises:
            Refused: another update is under way, or the firmware version is not newer.
        """
        body = doc.body
        assert isinstance(body, UpdateBody)
        if self.pending is not None:
            raise Refused("state_error", f"the update to v{self.pending['target']} is still under way")
        current = self.firmware_version()
        if body.firmware_version <= current:
            raise Refused(
                "rollback", f"firmware version {body.firmware_version} is not greater than {current}"
            )
        self._data["pending"] = {
            "doc_version": doc.version,
            "sha": doc.payload_sha256,
            "signers": list(doc.signer_keyids),
            "target": body.firmware_version,
            "body": body.model_dump(mode="json"),
            "phase": "downloading",
            "from_slot": None,
        }
        self._save()
        self._changed()
        self._wake.set()

    # -- the service -----------------------------------------------------------------------------
    async def run(self, progress: Any) -> None:
        """Resume whatever phase the last boot left, then serve submitted updates until cancelled.

        The phases wait for long, legitimate stretches (a download, RAUC's install, the install
        window, the health check after boot, which itself waits for the daemon's READY): a heartbeat
        keeps the supervisor from taking that for a stall (and READY from waiting for this
        service). Every step that could hang has its own bound instead (download read timeout, D-Bus
        call timeout, RAUC completion timeout, health timeout).
        """
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._heartbeat(progress), name="update.heartbeat")
            while True:
                await self._step()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_s):
                        await self._wake.wait()
                self._wake.clear()

    async def _heartbeat(self, progress: Any) -> None:
        while True:
            progress.beat()
            await asyncio.sleep(min(self._poll_s, 1.0))

    async def _step(self) -> None:
        p = self.pending
        if p is None:
            return
        body = UpdateBody.model_validate(p["body"])
        try:
            if p["phase"] == "downloading":
                await self._download(body)
            if self.pending and self.pending["phase"] == "installing":
                await self._install()
            if self.pending and self.pending["phase"] == "installed":
                await self._reboot_when_allowed(body)
            if self.pending and self.pending["phase"] in ("rebooting", "verifying", "failed_health"):
                await self._after_boot()
        except BusError as exc:
            if self.pending and self.pending["phase"] in _RETRY_ON_BUS_ERROR:
                # The new slot is (or will be) primary: giving up now would leave an unverified
                # firmware to boot later. logind/RAUC may simply not be up yet after a boot: retry.
                log.warning("update_bus_retry", phase=self.pending["phase"], error=exc.message)
                return
            self._finish("rolled_back", exc.reason, exc.message)
        except UpdateError as exc:
            status: Literal["rejected", "rolled_back"] = (
                "rejected" if exc.reason in ("hash_mismatch", "too_large") else "rolled_back"
            )
            self._finish(status, exc.reason, exc.message)

    async def _download(self, body: UpdateBody) -> None:
        def on_bytes(n: int) -> None:
            self._progress = {"percent": n * 100 // body.length, "message": f"{n} of {body.length} bytes"}

        await fetch(
            body.urls,
            body.length,
            body.sha256,
            self.dir / "bundle.raucb",
            limits=self._limits,
            ca_file=self._ca,
            progress=on_bytes,
        )
        self._set_phase("installing")

    async def _install(self) -> None:
        from_slot = await self._installer.boot_slot()

        def on_progress(pct: int, text: str) -> None:
            self._progress = {"percent": pct, "message": text}
            self._changed()

        await self._installer.install(self.dir / "bundle.raucb", on_progress)
        (self.dir / "bundle.raucb").unlink(missing_ok=True)
        self._set_phase("installed", from_slot=from_slot)

    async def _reboot_when_allowed(self, body: UpdateBody) -> None:
        # Never mid-meeting, and only inside the window the signed document allows.
        while not in_window(body.install_window, self._clock()) or self._meeting_active():
            self._progress = {"message": "waiting for the install window and no meeting"}
            await asyncio.sleep(self._poll_s)
        self._set_phase("rebooting")
        await self._rebooter.reboot()
        await asyncio.Event().wait()  # the system goes down; the next boot continues in _after_boot

    async def _after_boot(self) -> None:
        p = self.pending
        assert p is not None
        running = self._running_version()
        booted = await self._installer.boot_slot()
        target = p["target"]
        if p["phase"] == "failed_health":
            if running == target:
                return  # still in the bad slot: the reboot back is under way
            self._finish("rolled_back", "health_check_failed", f"v{target}: {p.get('reason', 'unhealthy')}")
            return
        if running == target and booted != p["from_slot"]:
            self._set_phase("verifying")
            problem = await self._health()
            if problem is None:
                await self._installer.mark("good", "booted")
                self._data["installed_version"] = max(int(self._data.get("installed_version", 0)), target)
                self._save()
                self._finish("applied", None, f"firmware v{target} running from slot {booted}, marked good")
                return
            # Not healthy: never mark it good; make the boot loader go back now instead of after
            # the attempts run out, and ack from the old slot.
            log.warning("update_health_check_failed", target_version=target, problem=problem)
            self._set_phase("failed_health", reason=problem[:200])
            await self._installer.mark("bad", "booted")
            await self._rebooter.reboot()
            await asyncio.Event().wait()
        self._finish(
            "rolled_back",
            "fell_back",
            f"v{target} did not come up; running v{running} from slot {booted} (the boot loader fell back)",
        )
