"""In-guest self-test of the room-system image (runs as roomagent-selftest.service, root).

Each check prints one JSON line on the second serial port (/dev/ttyS1), which the host
(images/boot_test.py) reads back: ``{"check": name, "ok": bool, "detail": ..., ...figures}``. The last
line is ``{"check": "done"}``; then the unit's ExecStopPost powers the VM off.

Only the guest's own python3 standard library is used here, so the self-test runs even when the agent
venv is broken (that is one of the things it reports). Checks that exercise the agent run it the way
systemd runs it: as the unit itself, or through ``systemd-run`` with the unit's own sandbox properties.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

UNIT = "roomagent.service"
UNIT_FILE = Path("/usr/lib/systemd/system/roomagent.service")
VENV = Path("/opt/roomagent")
HERE = Path(__file__).resolve().parent
READY_TIMEOUT_S = float(os.environ.get("SELFTEST_READY_TIMEOUT_S", "300"))
RESULTS_PATH = os.environ.get("SELFTEST_RESULTS", "/dev/ttyS1")

# Service settings that describe the process's lifecycle, not its sandbox: not copied to systemd-run.
_LIFECYCLE_KEYS = {
    "Type", "NotifyAccess", "ExecStart", "WatchdogSec", "Restart", "RestartSec", "TimeoutStartSec",
    "TimeoutStopSec", "KillMode", "WorkingDirectory",
}  # fmt: skip

_out = open(RESULTS_PATH, "w", buffering=1)  # noqa: SIM115 - the report channel lives as long as we do


def report(check: str, ok: bool | None, detail: str = "", **figures: object) -> None:
    line = {"check": check, "ok": ok, "detail": detail[-3000:], "t": round(time.monotonic(), 2), **figures}
    _out.write(json.dumps(line) + "\n")
    print(
        f"selftest: {check}: {'PASS' if ok else 'SKIP' if ok is None else 'FAIL'} {detail[:300]}", flush=True
    )


def run(argv: list[str], timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(argv)} -> {proc.returncode}: {proc.stdout[-1500:]}{proc.stderr[-1500:]}"
        )
    return proc


def show(*props: str) -> dict[str, str]:
    out = run(["systemctl", "show", UNIT, *(f"--property={p}" for p in props)], check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def journal(lines: int = 40) -> str:
    return run(["journalctl", "-u", UNIT, "-n", str(lines), "--no-pager", "-o", "short-monotonic"]).stdout


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def sandbox_properties(*, mdwe: bool | None = None) -> list[str]:
    """The [Service] settings of roomagent.service, as ``systemd-run -p`` arguments."""
    props: list[str] = []
    section = ""
    for raw in UNIT_FILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        key, _, value = line.partition("=")
        if section != "[Service]" or key in _LIFECYCLE_KEYS:
            continue
        if key == "MemoryDenyWriteExecute" and mdwe is not None:
            continue
        props += ["-p", f"{key}={value}"]
    if mdwe is not None:
        props += ["-p", f"MemoryDenyWriteExecute={'yes' if mdwe else 'no'}"]
    return props


def sandboxed(
    argv: list[str], *, timeout: float = 300, mdwe: bool | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as a transient service with roomagent.service's user and sandbox."""
    # Not --quiet: on failure systemd-run says how the process ended (e.g. status=4/ILL).
    cmd = ["systemd-run", "--wait", "--pipe", "--collect", "--setenv=PYTHONFAULTHANDLER=1",
           *sandbox_properties(mdwe=mdwe), *argv]  # fmt: skip
    return run(cmd, timeout=timeout)


def agent_cli() -> str:
    return run([str(VENV / "bin/roomagent"), "--help"]).stdout


# ------------------------------------------------------------------------------------------------ checks
def check_boot() -> None:
    uname = os.uname()
    kernel_s = float(Path("/proc/uptime").read_text().split()[0])
    analyze = run(["systemd-analyze", "time"]).stdout.strip()
    analyze += "\n" + "\n".join(run(["systemd-analyze", "blame", "--no-pager"]).stdout.splitlines()[:8])
    analyze += "\n" + run(["systemd-analyze", "critical-chain", UNIT, "--no-pager"]).stdout
    report("boot", True, analyze, kernel=uname.release, uptime_s=kernel_s)


def check_installation() -> None:
    problems = []
    version = run([str(VENV / "bin/roomagent"), "--version"])
    if version.returncode != 0:
        problems.append(f"venv agent does not start: {version.stderr[-800:]}")
    groups = run(["id", "-nG", "roomagent"]).stdout.split()
    if "video" not in groups:
        problems.append(f"user roomagent not in group video (groups: {groups})")
    for path in ("/etc/roomagent/agent.toml",):
        if not Path(path).is_file():
            problems.append(f"{path} missing")
    cfg = run([str(VENV / "bin/roomagent"), "check-config", "/etc/roomagent/agent.toml"])
    if cfg.returncode != 0:
        problems.append(f"check-config: {cfg.stdout}{cfg.stderr}"[-800:])
    report("installation", not problems, "; ".join(problems) or version.stdout.strip())


def check_camera_node() -> None:
    problems = []
    if "vivid" not in Path("/proc/modules").read_text():
        problems.append("vivid module not loaded")
    dev = Path("/dev/video0")
    if not wait_for(dev.exists, 30):
        problems.append("no /dev/video0")
    else:
        st = dev.stat()
        mode = oct(st.st_mode & 0o777)
        group = run(["stat", "-c", "%G", str(dev)]).stdout.strip()
        if group != "video" or mode != "0o660":
            problems.append(f"/dev/video0 is {group} {mode}, the udev rule wants video 0o660")
        if not Path("/dev/roomagent/camera-video0").is_symlink():
            problems.append("udev rule symlink /dev/roomagent/camera-video0 missing")
    name = Path("/sys/class/video4linux/video0/name")
    report(
        "camera_node", not problems, "; ".join(problems) or name.read_text().strip() if name.exists() else ""
    )


def check_ready() -> None:
    def settled() -> bool:
        s = show("ActiveState", "SubState")
        return s["ActiveState"] in ("active", "failed") or (
            s["ActiveState"] == "inactive" and s["SubState"] == "dead"
        )

    wait_for(settled, READY_TIMEOUT_S)
    s = show("ActiveState", "SubState", "StatusText", "ActiveEnterTimestampMonotonic", "NRestarts", "MainPID",
             "ExecMainStartTimestampMonotonic", "Result")  # fmt: skip
    ok = s["ActiveState"] == "active" and s["SubState"] == "running"
    ready_s = int(s["ActiveEnterTimestampMonotonic"]) / 1e6 if ok else None
    start_s = int(s["ExecMainStartTimestampMonotonic"]) / 1e6
    detail = f"state={s['ActiveState']}/{s['SubState']} status={s['StatusText']!r} restarts={s['NRestarts']}"
    if not ok:
        detail += "\n" + journal()
    report("ready", ok, detail, boot_to_ready_s=ready_s,
           start_to_ready_s=(ready_s - start_s) if ready_s else None, status=s["StatusText"])  # fmt: skip


PROBE = HERE / "sandbox_probe.py"


def check_mdwe() -> None:
    """PyAV (capture + libx264 encode/decode) and cryptography under the unit's sandbox, MDWE on and off."""
    results = {}
    for mdwe in (True, False):
        t0 = time.monotonic()
        proc = sandboxed([str(VENV / "bin/python"), str(PROBE), "/dev/video0"], mdwe=mdwe)
        results[mdwe] = proc
        report(f"sandbox_probe_mdwe_{'on' if mdwe else 'off'}", proc.returncode == 0,
               f"exit {proc.returncode}\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}",
               seconds=round(time.monotonic() - t0, 1))  # fmt: skip
    on, off = results[True].returncode == 0, results[False].returncode == 0
    if not off:
        # Diagnosis: does it fail outside the sandbox too (then the sandbox is not the cause)?
        plain = run([str(VENV / "bin/python"), str(PROBE), "/dev/video0"], timeout=300)
        report("sandbox_probe_unsandboxed", None if plain.returncode == 0 else False,
               f"exit {plain.returncode}\n{plain.stdout[-1500:]}\n{plain.stderr[-1500:]}")  # fmt: skip
    verdict = (
        "PyAV and cryptography run under MemoryDenyWriteExecute=yes"
        if on
        else "MemoryDenyWriteExecute=yes breaks them (see sandbox_probe_mdwe_on)"
        if off
        else "the probe fails even without MemoryDenyWriteExecute"
    )
    unit_has_mdwe = re.search(r"^MemoryDenyWriteExecute=yes", UNIT_FILE.read_text(), re.M) is not None
    # The unit must keep MDWE exactly when the probe proves it harmless.
    report("mdwe_verdict", on == unit_has_mdwe and off, verdict, unit_has_mdwe=unit_has_mdwe)


def check_security() -> None:
    out = run(["systemd-analyze", "security", UNIT, "--no-pager"]).stdout
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
    score = float(m.group(1)) if m else None
    report("security_online", score is not None and score <= 2.0, f"exposure {score}", exposure=score)


def check_watchdog() -> None:
    before = show("MainPID", "NRestarts", "ActiveState")
    if before["ActiveState"] != "active":
        report("watchdog", False, f"agent not running: {before}")
        return
    t0 = time.monotonic()
    run(["systemctl", "kill", "-s", "SIGSTOP", "--kill-who=main", UNIT], check=True)

    def restarted() -> bool:
        s = show("MainPID", "NRestarts", "ActiveState", "SubState")
        return (
            int(s["NRestarts"]) > int(before["NRestarts"])
            and s["MainPID"] not in ("0", before["MainPID"])
            and s["ActiveState"] == "active"
            and s["SubState"] == "running"
        )

    ok = wait_for(restarted, 240)
    log = journal(60)
    fired_at = [float(m.group(1)) for m in re.finditer(r"^\[\s*([0-9.]+)\].*Watchdog timeout", log, re.M)]
    fired = bool(fired_at)
    # journalctl's short-monotonic stamps and time.monotonic() are both CLOCK_MONOTONIC.
    fired_s = round(fired_at[-1] - t0, 1) if fired else None
    after = show("MainPID", "NRestarts", "ActiveState", "SubState")
    report("watchdog", ok and fired,
           f"before={before} after={after} watchdog_fired={fired}" + ("" if ok and fired else "\n" + log),
           restart_s=round(time.monotonic() - t0, 1), watchdog_fired_s=fired_s)  # fmt: skip


def check_sigterm() -> None:
    s = show("MainPID", "ActiveState")
    if s["ActiveState"] != "active":
        report("sigterm", False, f"agent not running: {s}")
        return
    t0 = time.monotonic()
    run(["systemctl", "kill", "-s", "SIGTERM", "--kill-who=main", UNIT], check=True)
    wait_for(lambda: show("ActiveState")["ActiveState"] in ("inactive", "failed"), 60)
    after = show("ActiveState", "SubState", "Result", "ExecMainCode", "ExecMainStatus", "NRestarts")
    # A clean stop: exited (code 1 = CLD_EXITED) with status 0, so Restart=on-failure leaves it stopped.
    ok = (
        after["ActiveState"] == "inactive" and after["Result"] == "success" and after["ExecMainStatus"] == "0"
    )
    report(
        "sigterm", ok, f"{after}" + ("" if ok else "\n" + journal()), stop_s=round(time.monotonic() - t0, 1)
    )


EXTRA = HERE / "checks_agent.py"


def check_stop_for_camera_tools() -> None:
    """The capture checks need the camera to themselves: stop the agent cleanly first."""
    t0 = time.monotonic()
    # systemctl stop returns with the stop job's real outcome: SIGTERM, the agent's own 5 s deadline,
    # systemd's SIGKILL at TimeoutStopSec=30 s; 120 s leaves TCG under load room for all of it.
    run(["systemctl", "stop", UNIT], check=True, timeout=120)
    s = show("ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
    ok = s["ActiveState"] == "inactive" and s["Result"] == "success"
    # How it ended (ExecMainCode 2 = killed by signal ExecMainStatus) and the agent's last words.
    report("stop_for_camera_tools", ok, f"{s}" + ("" if ok else "\n" + journal()),
           stop_s=round(time.monotonic() - t0, 1))  # fmt: skip


def check_restart_ready() -> None:
    t0 = time.monotonic()
    run(["systemctl", "start", UNIT], timeout=300)
    s = show("ActiveState", "SubState", "StatusText")
    ok = s["ActiveState"] == "active" and s["SubState"] == "running"
    detail = f"{s}" + ("" if ok else "\n" + journal())
    report("restart_ready", ok, detail, start_s=round(time.monotonic() - t0, 1))


def main() -> int:
    report("start", True, "self-test started")
    camera_checks: list[Callable[[], None]] = []
    agent_checks: list[Callable[[], None]] = []
    if EXTRA.exists():
        sys.path.insert(0, str(HERE))
        import checks_agent  # the agent-feature checks (HAL tools, signed push)

        camera_checks, agent_checks = checks_agent.CAMERA_CHECKS, checks_agent.AGENT_CHECKS
    checks: list[Callable[[], None]] = [
        check_boot, check_installation, check_camera_node, check_ready,
        check_stop_for_camera_tools, check_mdwe, *camera_checks, check_restart_ready,
        *agent_checks, check_security, check_watchdog, check_sigterm,
    ]  # fmt: skip
    for check in checks:
        name = check.__name__.removeprefix("check_")
        try:
            check()
        except Exception as exc:  # report and go on: every check gets its line
            report(name, False, f"{type(exc).__name__}: {exc}")
    report("done", True, "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
