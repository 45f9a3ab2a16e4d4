"""``roomagent run --demo`` (what ``make run`` starts): a room that does its main job on first run.

A newcomer should see what the product does: a room sending its camera end-to-end encrypted, managed
over MQTT, that ``roomctl`` can talk to. This module prepares everything that needs on a development
machine and hands the daemon an ordinary :class:`~agent.config.AgentConfig`, so the daemon has no
special case:

- a demo directory (``$XDG_STATE_HOME/roomagent-demo``) with, made on first run and kept after: demo
  ``root``/``fleet``/``customer``/``legal`` signing keys (``*.pem``, ``*.pem.pub.json``; demo only, never
  for a real fleet), a trust root signed by them (``root.json``), a lab SFrame key (``lab.json``), and
  the agent's state (``state/``); the room enrolled in a customer-signed roster (``roster.env.json``,
  rewritten at every start), since roomctl trusts only rooms its roster names;
- a private Mosquitto on a free loopback port, a child process of the agent (when ``mosquitto`` is
  installed; otherwise the room runs offline and says how to install it);
- a receiver on a free loopback UDP port, in this process, that decrypts and verifies the room's
  stream and logs what it sees (``demo_receiver``) and keeps the newest picture in ``snapshots/``;
- ``agent.toml`` in the demo directory: the config the room runs (copy it to start your own).

A real deployment never gets here: ``--demo`` is refused together with ``--config``.
"""

from __future__ import annotations

__all__ = ["DemoRoom", "DemoRoomError", "demo_dir"]

import contextlib
import datetime as dt
import json
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog
from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.control.devbroker import MOSQUITTO, BrokerError, Mosquitto
from agent.control.documents import ROLES, payload_type
from agent.control.dsse import Envelope
from agent.control.signing_keys import key_dict, keyid_of, load_private_key, private_key_pem
from agent.control.verify import verify_initial_root
from agent.errors import AgentError
from agent.persist import atomic_write_bytes

DEVICE_ID = "room-demo"
GROUP = "demo"
REPORT_INTERVAL_S = 5.0


def demo_dir() -> Path:
    """``$XDG_STATE_HOME/roomagent-demo`` (``~/.local/state/roomagent-demo``)."""
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "roomagent-demo"


def _toml_str(value: str | Path) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def _roomctl_command() -> str:
    """How to run roomctl from here: the script beside this interpreter, else ``python -m``."""
    script = Path(sys.executable).parent / "roomctl"
    if script.exists():
        try:
            rel = script.relative_to(Path.cwd())
            return shlex.quote(str(rel) if str(rel).startswith(".") else f"./{rel}")
        except ValueError:
            return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m agent.fleet"


class DemoRoom:
    """The demo's files, broker and receiver around one ``roomagent run``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.broker: Mosquitto | None = None
        self.broker_problem: str | None = None
        self.media_port = free_port_udp()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._receiver: Any = None

    # --- files ------------------------------------------------------------------------------------

    def _key(self, role: str) -> Any:
        path = self.dir / f"{role}.pem"
        if not path.exists():
            key = ed25519.Ed25519PrivateKey.generate()
            atomic_write_bytes(path, private_key_pem(key), mode=0o600)
            public = key_dict(key.public_key())
            atomic_write_bytes(
                path.with_name(path.name + ".pub.json"),
                json.dumps({**public, "keyid": keyid_of(public)}, indent=2).encode() + b"\n",
                mode=0o644,
            )
        return load_private_key(path)

    def _trust_root(self) -> Path:
        """``root.json``: version 1, one demo key per role, signed by the demo root key (as
        ``roomctl root init`` makes it); the agent verifies it at start like any shipped root."""
        path = self.dir / "root.json"
        keys = {role: self._key(role) for role in ROLES}
        if path.exists():
            return path
        publics = {role: key_dict(k.public_key()) for role, k in keys.items()}
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        payload = {
            "kind": "root",
            "version": 1,
            "issued_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "expires": (now + dt.timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "body": {
                "keys": {keyid_of(p): p for p in publics.values()},
                "roles": {r: {"keyids": [keyid_of(p)], "threshold": 1} for r, p in publics.items()},
            },
        }
        env = Envelope(payload_type("root"), json.dumps(payload, separators=(",", ":")).encode(), ())
        raw = env.signed_by(keys["root"]).to_json()
        verify_initial_root(raw)  # the agent does the same at start: fail here with a clear cause
        atomic_write_bytes(path, raw, mode=0o644)
        return path

    def prepare(self) -> Path:
        """Create the demo files (first run) and start the broker; returns the config path.

        Raises:
            DemoRoomError: another demo room runs on this directory.
        """
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        root = self._trust_root()
        lab = self.dir / "lab.json"
        if not lab.exists():
            from agent.media.key_source import write_lab_key

            write_lab_key(lab)
        self._start_broker()
        lines = [
            "# The demo room (`roomagent run --demo`), rewritten on every start: ports change.",
            f"[device]\nid = {_toml_str(DEVICE_ID)}\ngroups = [{_toml_str(GROUP)}]",
            f"[state]\ndir = {_toml_str(self.dir / 'state')}\nreport_interval_s = 2.0",
            f"[trust]\nroot = {_toml_str(root)}",
            # A light stream: a newcomer's laptop (or a CI machine) encodes it with room to spare.
            '[[hal.cameras]]\nid = "cam0"\nwidth = 640\nheight = 360\nfps = 15\npattern = "room"',
            '[hal.encoder]\ncodecs = ["libx264", "libvpx"]\nbitrate_kbps = 800',
            f'[media]\nsink = "rtp://127.0.0.1:{self.media_port}"',
            f"[e2ee]\nlab_key_file = {_toml_str(lab)}",
        ]
        if self.broker is not None:
            lines.append(f'[mqtt]\nurl = "{self.broker.url}"')
        config = self.dir / "agent.toml"
        atomic_write_bytes(config, ("\n\n".join(lines) + "\n").encode(), mode=0o600)
        self._roster(config)
        return config

    def _roster(self, config_path: Path) -> None:
        """``roster.env.json``: the demo room enrolled as ``roomctl roster add`` does it (the room's
        ``roomagent identity``, signed by the demo customer key), so roomctl trusts its acks and state."""
        from agent.config import load_config
        from agent.control.roster import RosterBody, RosterRoom, roster_envelope
        from agent.daemon.enroll import identity_document

        identity = identity_document(load_config(config_path))
        room = RosterRoom.model_validate(
            {k: identity[k] for k in ("ed25519", "hpke", "hpke_attestation")} | {"groups": [GROUP]}
        )
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        env = roster_envelope(
            RosterBody(customer="demo", rooms={DEVICE_ID: room}),
            version=1,
            issued_at=now,
            expires=now + dt.timedelta(days=365),
            signers=[self._key("customer")],
        )
        atomic_write_bytes(self.dir / "roster.env.json", env.to_json() + b"\n", mode=0o644)

    def status_command(self) -> str:
        """The roomctl command that shows this room as a fleet admin sees it."""
        assert self.broker is not None
        return (
            f"{_roomctl_command()} status --broker {self.broker.url}"
            f" --roster {shlex.quote(str(self.dir / 'roster.env.json'))}"
            f" --root {shlex.quote(str(self.dir / 'root.json'))}"
        )

    # --- broker -----------------------------------------------------------------------------------

    def _start_broker(self) -> None:
        if not Path(MOSQUITTO).exists():
            self.broker_problem = (
                "mosquitto is not installed, so the demo room has no broker and its control link is"
                " offline. Install it with `make test-deps` (or `sudo apt-get install mosquitto`) and"
                " start the demo again."
            )
            return
        self._stop_stale_broker()
        broker = Mosquitto(self.dir / "broker")
        try:
            broker.start()
        except BrokerError as exc:
            self.broker_problem = f"the demo broker did not start ({exc}); the room runs offline."
            return
        self.broker = broker
        pid = broker.pid
        if pid is not None:
            (self.dir / "broker" / "mosquitto.pid").write_text(f"{pid} {os.getpid()}\n")

    def _stop_stale_broker(self) -> None:
        """Stop a broker left behind by a demo that was killed (SIGKILL skips our clean-up); refuse
        to start beside a demo that is still running on the same directory.

        Raises:
            DemoRoomError: another demo room runs on this directory.
        """
        pid_file = self.dir / "broker" / "mosquitto.pid"
        try:
            broker_pid, agent_pid = (int(p) for p in pid_file.read_text().split())
        except (OSError, ValueError):
            return
        if agent_pid != os.getpid() and _cmdline_has(agent_pid, b"--demo"):
            raise DemoRoomError(
                f"a demo room is already running on {self.dir} (pid {agent_pid}): stop it with Ctrl-C"
                f" in its terminal, or `kill -INT {agent_pid}`"
            )
        if _cmdline_has(broker_pid, str(self.dir / "broker").encode()):
            with contextlib.suppress(OSError):
                os.kill(broker_pid, signal.SIGTERM)
        with contextlib.suppress(OSError):
            pid_file.unlink()

    # --- receiver ---------------------------------------------------------------------------------

    def _start_receiver(self) -> None:
        from agent.media.key_source import LabReceiver, load_lab_key
        from agent.media.receiver import MediaReceiver, bind_udp

        self._receiver = MediaReceiver(
            LabReceiver(load_lab_key(self.dir / "lab.json")), snapshot_dir=self.dir / "snapshots"
        )
        sock = bind_udp("127.0.0.1", self.media_port)

        def serve() -> None:
            try:
                self._receiver.serve(sock, self._stop)
            finally:
                sock.close()

        def report() -> None:
            log = structlog.get_logger()
            if self.broker is not None:
                # The banner has scrolled away under the agent's logs by now: say it once more.
                self._stop.wait(REPORT_INTERVAL_S)
                log.info("demo_room_live", try_next=self.status_command())
            while not self._stop.wait(REPORT_INTERVAL_S):
                r = self._receiver.report()
                log.info(
                    "demo_receiver",
                    frames_decoded=r["frames_decoded"],
                    fps=r["fps"],
                    decrypt_failures=r["decrypt_failures"],
                    stamps_missing=r["stamps_missing"],
                    latency_ms_p50=r["latency_ms_p50"],
                )

        for target, name in ((serve, "demo.receiver"), (report, "demo.report")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    # --- run --------------------------------------------------------------------------------------

    def banner(self) -> str:
        lines = [
            "",
            f"roomagent demo room {DEVICE_ID!r} (files: {self.dir}; demo keys only, never for a real fleet)",
            f"  media:   cam0 (simulated) -> SFrame E2EE -> rtp://127.0.0.1:{self.media_port} -> receiver "
            f"(decrypts and verifies; newest picture in {self.dir / 'snapshots'})",
        ]
        if self.broker is not None:
            lines += [
                f"  control: private Mosquitto at {self.broker.url}, trust root {self.dir / 'root.json'}",
                "In a second terminal, see the room as a fleet admin does:",
                f"  {self.status_command()}",
            ]
        else:
            lines.append(f"  control: offline. {self.broker_problem}")
        lines += ["Stop with Ctrl-C.", ""]
        return "\n".join(lines)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Receiver up and banner printed for the agent's run; everything stopped afterwards."""
        try:
            self._start_receiver()
            print(self.banner(), flush=True)
            yield
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2.0)
        if self._receiver is not None:
            from agent.media.cli import drop_summary

            print(f"demo receiver: {drop_summary(self._receiver.report())}", flush=True)
            self._receiver = None
        if self.broker is not None:
            self.broker.stop()
            with contextlib.suppress(OSError):
                (self.dir / "broker" / "mosquitto.pid").unlink()
            self.broker = None


class DemoRoomError(AgentError):
    """The demo room cannot start (the message says what to do)."""


def _cmdline_has(pid: int, needle: bytes) -> bool:
    try:
        return needle in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def free_port_udp() -> int:
    """A currently free UDP port on 127.0.0.1 (the kernel picks it)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
