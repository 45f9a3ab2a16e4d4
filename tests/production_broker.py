"""The shipped production Mosquitto configuration (``deploy/mosquitto/mosquitto.conf``), started as is.

Only what must differ on a test machine is templated: the listener port (a free loopback port), the
certificate paths (a test CA: :class:`tests.broker.TlsBroker` issues them), the persistence directory
(with the dynamic-security JSON that ``roomctl broker-config`` generated) and the log destination;
every substitution must match, so a reshaped shipped file fails the tests instead of being skipped.
"""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

from agent.control.devbroker import Mosquitto, free_port
from tests.broker import TlsBroker, TlsClient

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "deploy" / "mosquitto" / "mosquitto.conf"

__all__ = ["SHIPPED", "ProductionBroker"]


class ProductionBroker(Mosquitto):
    """Mosquitto running ``deploy/mosquitto/mosquitto.conf`` with ``dynsec_json`` as its ACLs."""

    def __init__(self, workdir: Path, dynsec_json: Path) -> None:
        workdir = Path(workdir)
        # TlsBroker is used only as a certificate authority here (its own config is never started).
        self.pki = TlsBroker(workdir / "ca")
        super().__init__(workdir, port=free_port(), anonymous=False, scheme="mqtts")
        self.data = workdir / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dynsec_json, self.data / "dynamic-security.json")

    @property
    def ca(self) -> Path:
        return self.pki.ca

    def client(self, cn: str) -> TlsClient:
        """A client certificate with CN ``cn`` from the broker's CA."""
        return self.pki.client(cn)

    def _write_conf(self) -> None:
        text = SHIPPED.read_text()
        subs = [
            ("listener 8883\n", f"listener {self.port} {self.host}\n"),
            ("/etc/mosquitto/roomagent/ca.crt", str(self.pki.ca)),
            ("/etc/mosquitto/roomagent/server.crt", str(self.pki.pki / "server.crt")),
            ("/etc/mosquitto/roomagent/server.key", str(self.pki.pki / "server.key")),
            ("/var/lib/mosquitto/dynamic-security.json", str(self.data / "dynamic-security.json")),
            ("persistence_location /var/lib/mosquitto/", f"persistence_location {self.data}/"),
            ("log_dest syslog\n", f"log_dest file {self.log_path}\n"),
        ]
        for old, new in subs:
            if old not in text:
                raise AssertionError(f"deploy/mosquitto/mosquitto.conf no longer contains {old!r}")
            text = text.replace(old, new)
        # Started as root, mosquitto would switch to user "mosquitto" and lose the test files.
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
        self.conf_path.write_text(user + text)
