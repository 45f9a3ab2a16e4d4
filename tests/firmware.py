"""Firmware test helpers: a transparency log in a directory and ``update`` bodies proved against it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.tlog.store import Entry, LogStore

ORIGIN = "roomagent.test/firmware"


class FirmwareLog:
    def __init__(self, directory: Path, key: ed25519.Ed25519PrivateKey, origin: str = ORIGIN) -> None:
        self.store = LogStore(directory)
        self.store.init(origin)
        self.key = key

    def add(self, version: int, data: bytes) -> None:
        entry = Entry(version, len(data), hashlib.sha256(data).hexdigest(), f"v{version}")
        self.store.append(entry, self.key)

    def body(self, version: int, data: bytes, urls: list[str] | None = None, **extra: Any) -> dict[str, Any]:
        """An ``update`` body for bundle ``data``, proved against the log's latest checkpoint."""
        sha = hashlib.sha256(data).hexdigest()
        proof = self.store.prove(self.store.find(sha)).to_json()
        return {
            "firmware_version": version,
            "length": len(data),
            "sha256": sha,
            "urls": urls or ["https://updates.example/bundle.raucb"],
            "transparency": proof,
            **extra,
        }


# -- a private D-Bus with the RAUC/logind test service, and an HTTP mirror ---------------------------

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


class PrivateBus:
    """A real ``dbus-daemon`` on a socket in ``directory``, and the RAUC/logind service on it."""

    def __init__(self, directory: Path, *, logind_only: bool = False) -> None:
        import json
        import subprocess
        import sys

        from tests.rauc_service import new_system

        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        socket = directory / "bus.sock"
        (directory / "bus.conf").write_text(_BUS_CONFIG.format(socket=socket))
        self.address = f"unix:path={socket}"
        self.daemon = subprocess.Popen(
            ["dbus-daemon", "--nofork", f"--config-file={directory / 'bus.conf'}", "--print-address=1"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.daemon.stdout is not None
        self.daemon.stdout.readline()  # printed once the socket listens
        self.state_path = directory / "system.json"
        self.state_path.write_text(json.dumps(new_system(directory)))
        self._argv = [sys.executable, "-m", "tests.rauc_service", "--bus", self.address]
        if logind_only:
            self._argv.append("--logind-only")
        self.start_service()

    def start_service(self) -> None:
        """Start the RAUC/logind service process (again, after :meth:`stop_service`)."""
        import subprocess

        self.service = subprocess.Popen(
            [*self._argv, "--state", str(self.state_path)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert self.service.stdout is not None
        assert self.service.stdout.readline().strip() == "ready"

    def stop_service(self) -> None:
        self.service.terminate()
        self.service.wait(timeout=10)

    def system(self) -> dict[str, Any]:
        import json

        return json.loads(self.state_path.read_text())

    def slot(self, name: str) -> bytes:
        """What slot ``name`` holds now (empty before anything was installed there)."""
        image = Path(self.system()["slots"][name]["file"])
        return image.read_bytes() if image.exists() else b""

    def set(self, **fields: Any) -> None:
        import json

        self.state_path.write_text(json.dumps({**self.system(), **fields}))

    def close(self) -> None:
        for proc in (self.service, self.daemon):
            proc.terminate()
            proc.wait(timeout=10)


class Mirror:
    """An HTTP server (a thread) serving files with Range support, and fault switches:
    ``drop_after`` (close the connection once after N bytes), ``corrupt`` (serve other bytes),
    ``extra`` (append bytes beyond the file), ``ignore_range`` (answer 200 to a Range request)."""

    def __init__(self, directory: Path, *, tls: tuple[Path, Path] | None = None) -> None:
        import http.server
        import threading

        self.dir = directory
        self.ranges: list[str | None] = []
        self.drop_after: int | None = None
        self.corrupt = False
        self.extra = b""
        self.ignore_range = False
        self.chunk_delay_s = 0.0  # > 0: send in 16 KiB pieces with this pause (a slow link)
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = mirror.dir / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                if mirror.corrupt:
                    data = bytes([data[0] ^ 1]) + data[1:]
                data += mirror.extra
                rng = self.headers.get("Range")
                mirror.ranges.append(rng)
                start = 0
                if rng and not mirror.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mirror.drop_after is not None:
                    cut, mirror.drop_after = mirror.drop_after, None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if mirror.chunk_delay_s:
                    import time

                    for i in range(0, len(body), 16384):
                        self.wfile.write(body[i : i + 16384])
                        self.wfile.flush()
                        time.sleep(mirror.chunk_delay_s)
                    return
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        if tls is not None:  # (certificate, key): HTTPS
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            self.url = f"https://localhost:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class RealRauc:
    """Debian's ``rauc service`` (1.8) on a :class:`PrivateBus`: two raw slots on files, the noop boot
    loader, a keyring with a test CA; the booted slot is given with ``--override-boot-slot`` (what
    the kernel command line says on a real room). Installing mounts the bundle (squashfs on a loop
    device), so this needs root and ``/dev/loop-control``."""

    def __init__(self, directory: Path, bus: PrivateBus) -> None:
        import subprocess

        self.dir = directory
        self.bus = bus
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "mnt").mkdir(exist_ok=True)
        for name in ("ca", "rogue"):
            subprocess.run(
                [
                    "openssl",
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-keyout",
                    str(directory / f"{name}.key"),
                    "-out",
                    str(directory / f"{name}.pem"),
                    "-subj",
                    f"/O=roomagent test/CN={name}",
                    "-days",
                    "30",
                ],
                check=True,
                capture_output=True,
            )
        for slot in ("A", "B"):
            with (directory / f"slot{slot}.img").open("wb") as f:
                f.truncate(4 * 1024 * 1024)
        (directory / "system.conf").write_text(
            "[system]\ncompatible=roomagent-test\nbootloader=noop\n"
            f"mountprefix={directory / 'mnt'}\nstatusfile={directory / 'status.raucs'}\n"
            f"[keyring]\npath={directory / 'ca.pem'}\n"
            f"[slot.rootfs.0]\ndevice={directory / 'slotA.img'}\ntype=raw\nbootname=A\n"
            f"[slot.rootfs.1]\ndevice={directory / 'slotB.img'}\ntype=raw\nbootname=B\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def bundle(self, out: Path, rootfs: bytes, version: int, *, signer: str = "ca") -> bytes:
        """A RAUC bundle (plain format: no device-mapper needed) whose image is ``rootfs``."""
        import shutil
        import subprocess

        content = self.dir / f"content-{version}-{signer}"
        shutil.rmtree(content, ignore_errors=True)
        content.mkdir()
        (content / "rootfs.img").write_bytes(rootfs)
        (content / "manifest.raucm").write_text(
            f"[update]\ncompatible=roomagent-test\nversion={version}\n[bundle]\nformat=plain\n"
            "[image.rootfs]\nfilename=rootfs.img\n"
        )
        out.unlink(missing_ok=True)
        subprocess.run(
            [
                "rauc",
                "bundle",
                f"--cert={self.dir / f'{signer}.pem'}",
                f"--key={self.dir / f'{signer}.key'}",
                str(content),
                str(out),
            ],
            check=True,
            capture_output=True,
        )
        return out.read_bytes()

    def start(self, boot_slot: str) -> None:
        import os
        import subprocess
        import time

        self.stop()
        env = {**os.environ, "DBUS_STARTER_BUS_TYPE": "session", "DBUS_SESSION_BUS_ADDRESS": self.bus.address}
        self.log = (self.dir / "rauc.log").open("ab")
        self.proc = subprocess.Popen(
            # -d: the debug line "name ... acquired" says when it serves the bus
            [
                "rauc",
                "service",
                "-d",
                f"--conf={self.dir / 'system.conf'}",
                f"--override-boot-slot={boot_slot}",
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        start = (self.dir / "rauc.log").stat().st_size
        for _ in range(200):  # until it owns its bus name
            if b"acquired" in (self.dir / "rauc.log").read_bytes()[start:] or self.proc.poll() is not None:
                break
            time.sleep(0.05)

    def slot(self, name: str, length: int) -> bytes:
        with (self.dir / f"slot{name}.img").open("rb") as f:
            return f.read(length)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None
            self.log.close()
