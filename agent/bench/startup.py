"""``roomagent bench startup``: exec -> READY=1 time and RSS after idling, on the sim defaults.

Each run starts a real ``roomagent run`` (built-in defaults: simulated HAL, offline) with a real notify
socket, as systemd would, and times from just before exec to the READY=1 datagram. The agents then idle
together; after ``--idle-s`` seconds (default 30) each one's resident set (VmRSS) is read and it is
stopped with SIGTERM. Figures are medians over ``--runs`` (default 5). Same-run baselines: the bare
interpreter (``python -c pass`` start-up, and the RSS of an idle bare interpreter). ``--config PATH``
measures another set-up (e.g. with a media sink, so pipelines run); without ``[state] dir`` in it each
agent gets its own state directory.
"""

from __future__ import annotations

__all__ = ["run"]

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.bench import Result, result

_REPO = Path(__file__).resolve().parents[2]
# Set by systemd for a service; the benchmark's agents must not inherit the caller's.
_SYSTEMD_VARS = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "STATE_DIRECTORY",
    "CONFIGURATION_DIRECTORY",
)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _env(state_home: str, notify: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(_REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["XDG_STATE_HOME"] = state_home
    for key in _SYSTEMD_VARS:
        env.pop(key, None)
    if notify is not None:
        env["NOTIFY_SOCKET"] = notify
    return env


def _wait_ready(sock: socket.socket, proc: subprocess.Popen[bytes], timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(min(remaining, 0.5))
        try:
            data = sock.recv(4096)
        except TimeoutError:
            if proc.poll() is not None:
                raise RuntimeError(f"agent exited with {proc.returncode} before READY=1") from None
            continue
        if b"READY=1" in data.split(b"\n"):
            return time.monotonic()
    raise RuntimeError(f"no READY=1 within {timeout} s")


def _baseline_exec_s(runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.monotonic()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.monotonic() - start)
    return statistics.median(times)


def run(args: list[str]) -> list[Result]:
    parser = argparse.ArgumentParser(prog="roomagent bench startup")
    parser.add_argument("--runs", type=int, default=5, help="agents to start (median over them)")
    parser.add_argument("--idle-s", type=float, default=30.0, help="idle time before reading RSS")
    parser.add_argument("--config", help="agent config to start with (default: the built-in sim defaults)")
    opts = parser.parse_args(args)
    if opts.runs < 1 or opts.idle_s < 0:
        parser.error("--runs must be >= 1 and --idle-s >= 0")

    config_args = ["--config", opts.config] if opts.config else []
    procs: list[subprocess.Popen[bytes]] = []
    ready_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="ra-bench-") as tmp:
        try:
            idle_baseline = subprocess.Popen(  # a bare interpreter idling beside the agents
                [sys.executable, "-c", "import time; time.sleep(3600)"], env=_env(tmp, None)
            )
            procs.append(idle_baseline)
            for i in range(opts.runs):
                sock_path = os.path.join(tmp, f"notify-{i}.sock")
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                    sock.bind(sock_path)
                    env = _env(os.path.join(tmp, f"state-{i}"), sock_path)
                    start = time.monotonic()
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "agent", "run", *config_args],
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    procs.append(proc)
                    ready_s.append(_wait_ready(sock, proc, timeout=30) - start)
            time.sleep(opts.idle_s)
            rss = [_rss_mb(p.pid) for p in procs[1:]]
            rss_baseline = _rss_mb(idle_baseline.pid)
            for p in procs[1:]:
                if p.poll() is not None:
                    raise RuntimeError(f"agent exited with {p.returncode} while idling")
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            stop_codes = [p.wait(timeout=10) for p in procs[1:]]
        exec_baseline = _baseline_exec_s(opts.runs)

    return [
        result(
            "startup.exec_to_ready",
            statistics.median(ready_s),
            "s",
            exec_baseline,
            runs=[round(x, 4) for x in ready_s],
            baseline_of="python -c pass",
            goal="< 1.0 s",
            config=opts.config or "built-in defaults",
        ),
        result(
            "startup.rss_after_idle",
            statistics.median(rss),
            "MB",
            rss_baseline,
            runs=[round(x, 1) for x in rss],
            idle_s=opts.idle_s,
            baseline_of="idle bare python",
            goal="< 80 MB",
        ),
        result("startup.clean_stops", sum(1 for c in stop_codes if c == 0), "runs", None, of=len(stop_codes)),
    ]
