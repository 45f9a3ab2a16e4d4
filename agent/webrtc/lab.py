"""A private network namespace and a real Janus, for the WebRTC tests and ``roomagent bench webrtc``.

Janus gathers no loopback ICE candidates, so the meeting runs inside a network namespace the test
creates: ``lo`` plus a veth pair whose two ends (both inside) carry their own addresses. The test's
main thread enters the namespace (``setns``), so every process it starts (Janus, the room, Chromium,
chromedriver) and every socket it opens lives there, and no packet leaves it. Leaving restores the
thread's original namespace and deletes the namespace.
"""

from __future__ import annotations

__all__ = ["ADDR_A", "ADDR_B", "Janus", "free_port", "netns_available", "private_netns", "start_janus"]

import contextlib
import ctypes
import functools
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWNET = 0x40000000
JANUS = shutil.which("janus") or "/usr/bin/janus"
_LIB = Path("/usr/lib/x86_64-linux-gnu/janus")
ADDR_A, ADDR_B = "10.231.7.1", "10.231.7.2"


@functools.cache
def netns_available() -> bool:
    """Root, ``ip`` (iproute2) and a kernel/container that lets us create a network namespace."""
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False)
    return probe.returncode == 0


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def private_netns() -> Iterator[str]:
    """Enter a fresh network namespace with lo and a veth pair (ADDR_A <-> ADDR_B), then leave it."""
    name = f"roomagent-rtc-{os.getpid()}"
    ip = ["ip", "-n", name]
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run([*ip, "link", "set", "lo", "up"], check=True)
        subprocess.run([*ip, "link", "add", "rtca", "type", "veth", "peer", "name", "rtcb"], check=True)
        subprocess.run([*ip, "addr", "add", f"{ADDR_A}/24", "dev", "rtca"], check=True)
        subprocess.run([*ip, "addr", "add", f"{ADDR_B}/24", "dev", "rtcb"], check=True)
        subprocess.run([*ip, "link", "set", "rtca", "up"], check=True)
        subprocess.run([*ip, "link", "set", "rtcb", "up"], check=True)
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield name
            finally:
                _setns(home)
        finally:
            os.close(home)
            os.close(target)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Janus:
    proc: subprocess.Popen[bytes]
    url: str
    room: int
    pin: str
    rec_dir: Path
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_janus(workdir: Path, *, host: str = ADDR_A, room: int = 4242, pin: str = "join-4242") -> Janus:
    """Janus with only the HTTP transport and the VideoRoom plugin, one E2EE room that records."""
    cfg = workdir / "janus-cfg"
    plugins, transports, empty = (
        workdir / "janus-plugins",
        workdir / "janus-transports",
        workdir / "janus-none",
    )
    rec_dir = workdir / "janus-rec"
    for d in (cfg, plugins, transports, empty, rec_dir):
        d.mkdir(parents=True, exist_ok=True)
    (plugins / "libjanus_videoroom.so").symlink_to(_LIB / "plugins" / "libjanus_videoroom.so")
    (transports / "libjanus_http.so").symlink_to(_LIB / "transports" / "libjanus_http.so")
    port = free_port(host)
    rtp_lo = 40000 + (os.getpid() % 200) * 100
    (cfg / "janus.jcfg").write_text(
        f"""general: {{
  configs_folder = "{cfg}"
  plugins_folder = "{plugins}"
  transports_folder = "{transports}"
  events_folder = "{empty}"
  loggers_folder = "{empty}"
  debug_level = 4
  session_timeout = 60
}}
media: {{
  rtp_port_range = "{rtp_lo}-{rtp_lo + 99}"
}}
nat: {{
  ice_enforce_list = "rtca,rtcb"
}}
"""
    )
    (cfg / "janus.transport.http.jcfg").write_text(
        f"""general: {{
  base_path = "/janus"
  http = true
  port = {port}
  interface = "rtca"
  https = false
}}
admin: {{
  admin_http = false
}}
cors: {{
  allow_origin = "*"
}}
"""
    )
    (cfg / "janus.plugin.videoroom.jcfg").write_text(
        f"""general: {{
}}
room-{room}: {{
  description = "roomagent test room"
  pin = "{pin}"
  require_e2ee = true
  publishers = 6
  bitrate = 2000000
  fir_freq = 2
  videocodec = "vp8"
  audiocodec = "opus"
  record = true
  rec_dir = "{rec_dir}"
}}
"""
    )
    log = workdir / "janus.log"
    proc = subprocess.Popen(
        [JANUS, "-C", str(cfg / "janus.jcfg"), "-F", str(cfg), "-o", "-L", str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"http://{host}:{port}/janus"
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(url + "/info", timeout=2) as resp:  # noqa: S310 - our http URL
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"janus did not start; see {log}")
        time.sleep(0.2)
    return Janus(proc, url, room, pin, rec_dir, log)
