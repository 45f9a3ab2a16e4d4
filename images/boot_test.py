"""make image-test: boot the room-system image under QEMU and check what its self-test reports.

The guest has no network. Its self-test unit (images/rootfs/usr/lib/roomagent-selftest/selftest.py)
writes one JSON line per check to the second serial port, which QEMU writes to a file here; the first
serial port is the guest console (kept as a log). The VM powers itself off after the last check.

Acceleration: /dev/kvm on these machines is a paravirtual KVM that cannot boot a stock kernel, so KVM
is used only if a probe boot (the initrd prints a marker and powers off) succeeds within a short
timeout; otherwise TCG (``-accel tcg -cpu qemu64``). If neither boots, this fails loudly.

Exit status: 0 only when every expected check reported ok. Prints a table and writes
``images/out/image-test.json`` (figures: boot-to-READY, watchdog restart time, exposure, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMAGES = Path(__file__).resolve().parent
OUT = Path(os.environ.get("IMAGE_OUT", IMAGES / "out"))
QEMU = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"
PROBE_MARKER = "ROOMAGENT-PROBE-OK"
# Not qemu64: that is x86-64-v1, and numpy (>= 2.4, a HAL dependency) is built for x86-64-v2
# (SSE4.2, POPCNT): under qemu64 `roomagent hal list` dies with SIGILL. Nehalem is the oldest QEMU model
# with x86-64-v2, the least any room PC of the last decade offers, and cheap to emulate (no AVX).
TCG_CPU = os.environ.get("IMAGE_TCG_CPU", "Nehalem")
# The unpacked kernel boots through its PVH entry without decompressing itself (faster under TCG).
KERNEL = OUT / "vmlinux"

# Every check the self-test must report ok for the image test to pass.
REQUIRED = [
    "start", "boot", "installation", "camera_node", "ready", "stop_for_camera_tools",
    "sandbox_probe_mdwe_on", "sandbox_probe_mdwe_off", "mdwe_verdict", "restart_ready",
    "security_online", "watchdog", "sigterm", "done",
]  # fmt: skip
# Checks of features other sub-systems build: they report ok=null ("not in this build") when the
# feature is not installed, which fails the test unless IMAGE_TEST_REQUIRE_ALL=0 (a partial build).
FEATURES = [
    "hal_list", "hal_record", "hal_control", "media_e2ee", "config_push", "reboot_allowed",
    "agent_after_checks",
]  # fmt: skip


def qemu_argv(
    accel: str, append: str, *, disk: Path | None, console: Path, results: Path | None, smp: int
) -> list[str]:
    argv = [QEMU, "-machine", "q35", "-m", "2048", "-smp", str(smp), "-no-reboot", "-display", "none",
            "-monitor", "none", "-nic", "none", "-kernel", str(KERNEL), "-initrd",
            str(OUT / "initrd.img"), "-append", append, "-serial", f"file:{console}"]  # fmt: skip
    argv += ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else ["-accel", "tcg", "-cpu", TCG_CPU]
    if results is not None:
        argv += ["-serial", f"file:{results}"]
    if disk is not None:
        # snapshot=on: the guest's writes go to a temporary overlay; the image stays pristine.
        argv += ["-drive", f"file={disk},format=raw,if=virtio,snapshot=on"]
    return argv


def probe(accel: str, timeout: float) -> tuple[bool, str]:
    """Boot the kernel and initrd only; True if user space printed the marker in time."""
    with tempfile.TemporaryDirectory() as tmp:
        console = Path(tmp) / "console.log"
        argv = qemu_argv(accel, "console=ttyS0 roomagent.probe=1 panic=-1", disk=None, console=console,
                         results=None, smp=1)  # fmt: skip
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
            err = proc.stderr.strip()
        except subprocess.TimeoutExpired:
            err = f"no marker within {timeout:.0f} s"
        text = console.read_text(errors="replace") if console.exists() else ""
        return PROBE_MARKER in text, err or text[-300:]


def choose_accel(requested: str) -> str:
    if requested != "auto":
        return requested
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        t0 = time.monotonic()
        ok, why = probe("kvm", timeout=25)
        print(f"image-test: KVM probe {'booted' if ok else 'failed'} in {time.monotonic() - t0:.1f} s"
              + ("" if ok else f" ({why.splitlines()[-1] if why else 'no output'}); using TCG"))  # fmt: skip
        if ok:
            return "kvm"
    else:
        print("image-test: /dev/kvm not usable; using TCG")
    return "tcg"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--accel", choices=["auto", "kvm", "tcg"], default=os.environ.get("IMAGE_ACCEL", "auto")
    )
    parser.add_argument("--timeout", type=float, default=float(os.environ.get("IMAGE_TEST_TIMEOUT", "600")))
    parser.add_argument("--smp", type=int, default=2)
    args = parser.parse_args()

    for name in ("vmlinux", "initrd.img", "rootfs.ext4"):
        if not (OUT / name).is_file():
            print(f"image-test: FAIL: {OUT / name} missing: run make image first", file=sys.stderr)
            return 1
    accel = choose_accel(args.accel)
    console, results = OUT / "console.log", OUT / "results.jsonl"
    for path in (console, results):
        path.unlink(missing_ok=True)
    append = (
        "console=ttyS0 root=/dev/vda rw panic=-1 roomagent.selftest=1 systemd.show_status=auto loglevel=4"
    )
    argv = qemu_argv(accel, append, disk=OUT / "rootfs.ext4", console=console, results=results, smp=args.smp)
    print(f"image-test: booting ({accel}), console log {console}, results {results}")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen: dict[str, dict[str, object]] = {}
    arrival: dict[str, float] = {}
    offset = 0
    timed_out = False
    try:
        while True:
            finished = proc.poll() is not None
            if results.exists():
                data = results.read_bytes()
                complete = data[: data.rfind(b"\n") + 1]
                for raw in complete[offset:].splitlines():
                    try:
                        line = json.loads(raw)
                    except json.JSONDecodeError:
                        continue
                    name = str(line.get("check"))
                    seen[name] = line
                    arrival[name] = round(time.monotonic() - t0, 1)
                    status = "PASS" if line.get("ok") else "SKIP" if line.get("ok") is None else "FAIL"
                    detail = str(line.get("detail", ""))[:120]
                    print(f"  [{arrival[name]:6.1f} s] {name:28s} {status}  {detail!r}")
                offset = len(complete)
            if finished:
                break
            if time.monotonic() - t0 > args.timeout:
                timed_out = True
                break
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
        qemu_out = proc.communicate()[0] or ""
    elapsed = time.monotonic() - t0

    failures = []
    if timed_out:
        failures.append(f"VM did not power off within {args.timeout:.0f} s")
    if "start" not in seen:
        failures.append("the guest never reported (boot failed? see the console log)")
    require_all = os.environ.get("IMAGE_TEST_REQUIRE_ALL", "1") != "0"
    not_checked = []
    for name in REQUIRED + FEATURES + sorted(set(seen) - set(REQUIRED) - set(FEATURES)):
        line = seen.get(name)
        if line is None:
            failures.append(f"{name}: not reported")
        elif line.get("ok") is False or (name in REQUIRED and line.get("ok") is not True):
            failures.append(f"{name}: {line.get('detail', '')}")
        elif line.get("ok") is None:
            not_checked.append(f"{name}: {line.get('detail', '')}")
            if require_all:
                failures.append(f"{name}: NOT CHECKED ({line.get('detail', '')})")
    figures = {
        "accel": accel,
        "vm_seconds": round(elapsed, 1),
        "ready_seen_by_host_s": arrival.get("ready"),
        "boot_to_ready_s": seen.get("ready", {}).get("boot_to_ready_s"),
        "start_to_ready_s": seen.get("ready", {}).get("start_to_ready_s"),
        "watchdog_fired_s": seen.get("watchdog", {}).get("watchdog_fired_s"),
        "watchdog_restart_s": seen.get("watchdog", {}).get("restart_s"),
        "sigterm_stop_s": seen.get("sigterm", {}).get("stop_s"),
        "media_receiver": seen.get("media_e2ee", {}).get("receiver"),
        "exposure_in_guest": seen.get("security_online", {}).get("exposure"),
        "mdwe": seen.get("mdwe_verdict", {}).get("detail"),
        "checks": {k: v.get("ok") for k, v in seen.items()},
        "failures": failures,
        "not_checked": not_checked,
    }
    image_json = OUT / "image.json"
    if image_json.exists():
        figures["image"] = json.loads(image_json.read_text())
    (OUT / "image-test.json").write_text(json.dumps({**figures, "results": seen}, indent=2) + "\n")
    print(json.dumps({k: v for k, v in figures.items() if k != "checks"}, indent=2))
    if failures:
        print(f"image-test: FAIL ({len(failures)} problems); console log: {console}", file=sys.stderr)
        for f in failures:
            print(f"  - {f[:2000]}", file=sys.stderr)
        if qemu_out.strip():
            print(f"qemu said: {qemu_out[-2000:]}", file=sys.stderr)
        tail = console.read_text(errors="replace")[-3000:] if console.exists() else "(no console output)"
        print(f"--- console tail ---\n{tail}", file=sys.stderr)
        return 1
    for item in not_checked:
        print(f"image-test: NOT CHECKED (feature not in this build): {item}")
    print(f"image-test: PASS ({len(seen) - len(not_checked)} checks passed, {len(not_checked)} not checked, "
          f"{elapsed:.0f} s in the VM)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
