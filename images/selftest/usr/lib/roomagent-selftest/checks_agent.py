"""Self-test checks of agent features built by other sub-systems (HAL tools, signed config push).

Each check first asks the installed agent whether the feature exists (``--help``). A feature absent
from this build is reported with ``ok: null`` and the reason ("not in this build"): boot_test.py
prints those as NOT CHECKED and fails on them when IMAGE_TEST_REQUIRE_ALL=1. Present features must
pass.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selftest import VENV, report, run, sandboxed, show, wait_for

ROOMAGENT = str(VENV / "bin/roomagent")
ROOMCTL = str(VENV / "bin/roomctl")
SELFTEST_KEYS = Path("/usr/lib/roomagent-selftest/keys")
RECORDING = Path("/var/lib/roomagent/selftest-record.mkv")
# The tools read the cameras from the agent's own config (without it: one simulated camera).
HAL = [ROOMAGENT, "hal", "--config", "/etc/roomagent/agent.toml"]
MEDIA_WINDOW_S = 15


@functools.cache
def _help(tool: str, *words: str) -> str:
    # Each start of the agent costs seconds under emulation: ask each parser once.
    proc = run([tool, *words, "--help"])
    return proc.stdout if proc.returncode == 0 else ""


def _has(tool: str, *words: str) -> bool:
    # A sub-command is listed as "    NAME  help" or inside "{a,NAME,b}".
    pattern = rf"(^\s+|[{{,]){re.escape(words[-1])}\b"
    return re.search(pattern, _help(tool, *words[:-1]), re.M) is not None


@functools.cache
def _hal_list() -> subprocess.CompletedProcess[str]:
    return sandboxed([*HAL, "list", "--json"], timeout=240)


def _v4l2_device_id() -> str | None:
    proc = _hal_list()
    if proc.returncode != 0:
        return None
    devices: Any = json.loads(proc.stdout)
    if isinstance(devices, dict):
        devices = devices.get("devices", [])
    for dev in devices:
        text = json.dumps(dev)
        if "/dev/video0" in text or "vivid" in text:
            return str(dev.get("id") or dev.get("path") or "/dev/video0")
    return None


def check_hal_list() -> None:
    if not _has(ROOMAGENT, "hal", "list"):
        report("hal_list", None, "roomagent hal list: not in this build")
        return
    proc = _hal_list()
    found = proc.returncode == 0 and ("/dev/video0" in proc.stdout or "vivid" in proc.stdout)
    report("hal_list", found, f"exit {proc.returncode}\n{proc.stdout[-1500:]}\n{proc.stderr[-1000:]}")
    if not found:
        # Diagnosis: which encoder (the list probes them all) brings the process down?
        probe = "/usr/lib/roomagent-selftest/codec_probe.py"
        diag = sandboxed([str(VENV / "bin/python"), probe], timeout=300)
        report("codec_probe", None, f"exit {diag.returncode}\n{diag.stdout[-1500:]}\n{diag.stderr[-1000:]}")


def check_hal_record() -> None:
    if not _has(ROOMAGENT, "hal", "record"):
        report("hal_record", None, "roomagent hal record: not in this build")
        return
    device = _v4l2_device_id() or "cam0"  # the id in agent.toml
    RECORDING.unlink(missing_ok=True)
    t0 = time.monotonic()
    argv = [*HAL, "record", device, "--seconds", "3", "--codec", "libx264", str(RECORDING)]
    proc = sandboxed(argv, timeout=300)
    probe = run(
        [str(VENV / "bin/python"), "-c",
         "import av,sys; c=av.open(sys.argv[1]); s=c.streams.video[0]; "
         "n=sum(1 for _ in c.decode(s)); print(s.codec_context.name, s.width, s.height, n)", str(RECORDING)],
    )  # fmt: skip
    frames = int(probe.stdout.split()[-1]) if probe.returncode == 0 and probe.stdout.split() else 0
    report("hal_record", proc.returncode == 0 and frames > 0,
           f"record exit {proc.returncode}; decoded back: {probe.stdout.strip()} {probe.stderr[-500:]}\n"
           f"{proc.stdout[-800:]}\n{proc.stderr[-800:]}", frames=frames,
           seconds=round(time.monotonic() - t0, 1))  # fmt: skip


def check_hal_control() -> None:
    if not _has(ROOMAGENT, "hal", "control"):
        report("hal_control", None, "roomagent hal control: not in this build")
        return
    device = _v4l2_device_id() or "cam0"  # the id in agent.toml
    before = run(["v4l2-ctl", "-d", "/dev/video0", "--get-ctrl=brightness"]).stdout.strip()
    target = "200" if not before.endswith(" 200") else "100"
    set_proc = sandboxed([*HAL, "control", device, "brightness", target], timeout=180)
    get_proc = sandboxed([*HAL, "control", device, "brightness"], timeout=180)
    # An independent reader (v4l2-ctl, VIDIOC_G_CTRL) confirms the driver really holds the value.
    after = run(["v4l2-ctl", "-d", "/dev/video0", "--get-ctrl=brightness"]).stdout.strip()
    ok = set_proc.returncode == 0 and get_proc.returncode == 0 and after == f"brightness: {target}"
    ok = ok and f"brightness={target}" in get_proc.stdout
    report("hal_control", ok,
           f"v4l2-ctl before {before!r} after {after!r}; set exit {set_proc.returncode}, get exit "
           f"{get_proc.returncode}: {get_proc.stdout[-300:]} {set_proc.stderr[-600:]} "
           f"{get_proc.stderr[-600:]}")  # fmt: skip


def check_config_push() -> None:
    if not (_has(ROOMCTL, "sign") and _has(ROOMCTL, "push")):
        report("config_push", None, "roomctl sign/push: not in this build")
        return
    health = _state().get("health", {})
    if not any(name.startswith("control") for name in health):
        # roomctl is there but the daemon runs no control service (the control plane's provider,
        # agent.control.service:services, is not in this build): nothing would ever ack.
        services = ", ".join(sorted(health))
        report("config_push", None, f"the agent runs no control service in this build (services: {services})")
        return
    fleet_key = SELFTEST_KEYS / "fleet.pem"
    if not fleet_key.exists():
        report("config_push", False, f"{fleet_key} missing: the image build made no test fleet")
        return
    work = Path("/run/roomagent-selftest")
    work.mkdir(exist_ok=True)
    template = run([ROOMCTL, "template", "config"], check=True).stdout
    doc = json.loads(template)
    before = _applied("config")
    doc["version"] = (before or 0) + 1
    doc["targets"] = {"devices": ["room-image"], "groups": []}
    # The image's own camera and a loopback sink (the guest has no network).
    body = doc.setdefault("body", {})
    body["cameras"] = [{"id": "cam0", "backend": "v4l2", "device": "/dev/video0", "width": 640, "height": 360,
                        "fps": 15}]  # fmt: skip
    if isinstance(body.get("media"), dict):
        body["media"]["sink"] = "rtp://127.0.0.1:5004"
    payload = work / "config.json"
    payload.write_text(json.dumps(doc))
    envelope = work / "config.dsse.json"
    sign = run([ROOMCTL, "sign", "config", str(payload), "--key", str(fleet_key), "--out", str(envelope)])
    if sign.returncode != 0:
        report("config_push", False, f"roomctl sign failed: {sign.stdout[-800:]} {sign.stderr[-800:]}")
        return
    # roomctl trusts acks only from rooms in a customer-signed roster: enroll this room as an installer
    # would (roomagent identity --json on the room, roomctl roster add with the customer key).
    trust: list[str] = []
    customer_key = SELFTEST_KEYS / "customer.pem"
    if _has(ROOMCTL, "roster"):
        # As the unit runs the agent (its user, and StateDirectory= setting $STATE_DIRECTORY): run as root
        # with no [state] dir, `roomagent identity` would read (and make) keys under root's
        # ~/.local/state, and every ack of the real agent would then look forged.
        identity = sandboxed([ROOMAGENT, "identity", "--config", "/etc/roomagent/agent.toml", "--json"],
                             timeout=180)  # fmt: skip
        (work / "identity.json").write_text(identity.stdout)
        trust = ["--roster", str(work / "roster.env.json"), "--root", "/etc/roomagent/trust/root.json"]
        enroll = run([ROOMCTL, "roster", "add", "room-image", "--identity", str(work / "identity.json"),
                      "--customer", "selftest", "--customer-key", str(customer_key), *trust])  # fmt: skip
        if identity.returncode != 0 or enroll.returncode != 0:
            report("config_push", False,
                   f"enrollment failed: {identity.stderr[-600:]} {enroll.stderr[-600:]}")  # fmt: skip
            return
    t0 = time.monotonic()
    push = run([ROOMCTL, "push", str(envelope), "--broker", "mqtt://127.0.0.1:1883", "--device", "room-image",
                "--wait", "90", *trust], timeout=150)  # fmt: skip
    wait_for(lambda: _applied("config") == doc["version"], 30)
    applied = _applied("config")
    ok = push.returncode == 0 and applied == doc["version"]
    report("config_push", ok,
           f"push exit {push.returncode}; applied config {before} -> {applied}\n{push.stdout[-1200:]}\n"
           f"{push.stderr[-800:]}", ack_s=round(time.monotonic() - t0, 1))  # fmt: skip


def _state() -> dict[str, Any]:
    try:
        state = json.loads(Path("/var/lib/roomagent/state.json").read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _applied(kind: str) -> int | None:
    value = _state().get("applied", {}).get(kind)
    return int(value) if isinstance(value, int) else None


def check_media_e2ee() -> None:
    """The agent's own pipeline (vivid -> libx264 -> SFrame -> RTP) as a receiver sees it."""
    lab_key = Path("/etc/roomagent/lab.json")
    if not (_has(ROOMAGENT, "receive") and lab_key.exists()):
        report("media_e2ee", None, "roomagent receive or the self-test lab key: not in this build")
        return
    # The receiver joins a running stream: it decodes from the first keyframe it sees. The self-test
    # config sends one every 5 frames (build.sh; a plain RTP sink carries no keyframe request back), and
    # a loaded emulator sends 1-2 frames a second: the window spans at least 4 keyframe intervals.
    argv = [ROOMAGENT, "receive", "--listen", "127.0.0.1:5004", "--key-file", str(lab_key), "--seconds",
            str(MEDIA_WINDOW_S), "--json"]  # fmt: skip
    proc = sandboxed(argv, timeout=180)
    try:
        figures = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        figures = {}
    ok = (
        proc.returncode == 0 and figures.get("frames_decoded", 0) > 0 and figures.get("decrypt_failures") == 0
    )
    report("media_e2ee", ok, f"exit {proc.returncode}: {json.dumps(figures)}\n{proc.stderr[-1200:]}",
           receiver=figures)  # fmt: skip


def check_reboot_allowed() -> None:
    """The fleet-signed ``reboot`` command's path, short of rebooting: the agent's own logind call
    (``CanReboot`` over the system D-Bus), as the unit's user in its sandbox, answers ``yes`` (polkit
    with systemd/roomagent-reboot.rules). Anything else and the room acks every reboot rolled_back."""
    code = "import asyncio; from agent.daemon.power import logind_can_reboot as c; print(asyncio.run(c()))"
    proc = sandboxed([str(VENV / "bin/python"), "-c", code], timeout=180)
    answer = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    polkit = run(["systemctl", "show", "polkit.service", "--property=ActiveState,LoadState"]).stdout.split()
    report("reboot_allowed", proc.returncode == 0 and answer == "yes",
           f"CanReboot as roomagent: {answer!r} (exit {proc.returncode}); polkit {polkit}\n"
           f"{proc.stderr[-800:]}")  # fmt: skip


def check_agent_still_up() -> None:
    s = show("ActiveState", "SubState", "NRestarts", "StatusText")
    report("agent_after_checks", s["ActiveState"] == "active", f"{s}")


# Run with the agent stopped (they open the camera themselves).
CAMERA_CHECKS: list[Callable[[], None]] = [check_hal_list, check_hal_record, check_hal_control]
# Run with the agent up again.
AGENT_CHECKS: list[Callable[[], None]] = [
    check_media_e2ee, check_config_push, check_reboot_allowed, check_agent_still_up,
]  # fmt: skip
