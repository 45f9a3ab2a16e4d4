"""Real Mosquitto brokers for tests: plain, and TLS with client certificates and an ACL file.

``Broker`` (plain listener) and ``TlsBroker`` (``require_certificate``, ``use_identity_as_username``,
``acl_file`` with ``pattern ... %u``) wrap :class:`agent.control.devbroker.Mosquitto`. Both expose
``host``, ``port``, ``url``, ``stop()``, ``start()`` (same port, persisted sessions and retained
messages) and ``kill()``. ``TlsBroker.client(client_id)`` issues a client certificate whose CN is the
MQTT username the ACL sees.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.control.devbroker import Mosquitto

__all__ = ["DEFAULT_ACL", "Broker", "TlsBroker", "TlsClient"]

PREFIX = "roomagent/v1"

# Each device (certificate CN = %u) reads and writes only its own subtree and reads group topics;
# the management plane (CN "plane") may do everything under the prefix.
DEFAULT_ACL = f"""\
user plane
topic readwrite {PREFIX}/#

pattern read {PREFIX}/devices/%u/desired/#
pattern read {PREFIX}/devices/%u/cmd
pattern read {PREFIX}/devices/%u/keys
pattern readwrite {PREFIX}/devices/%u/state
pattern write {PREFIX}/devices/%u/ack
pattern write {PREFIX}/devices/%u/audit
pattern read {PREFIX}/groups/+/desired/#
"""


class Broker(Mosquitto):
    """Plain listener on loopback, anonymous clients allowed."""


@dataclass(frozen=True, slots=True)
class TlsClient:
    """Paths a client needs for mutual TLS: the CA, its certificate and its private key."""

    client_id: str
    ca: Path
    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


class TlsBroker(Mosquitto):
    """A TLS listener requiring client certificates (CN = username) with an ACL file."""

    def __init__(self, workdir: Path, *, acl: str = DEFAULT_ACL, port: int | None = None) -> None:
        workdir = Path(workdir)
        self.pki = workdir / "pki"
        self.pki.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.UTC)
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        self._ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("roomagent test CA"))
            .issuer_name(_name("roomagent test CA"))
            .public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        self.ca = self.pki / "ca.crt"
        self.ca.write_bytes(self._ca_cert.public_bytes(serialization.Encoding.PEM))
        server_key = ec.generate_private_key(ec.SECP256R1())
        server = self._issue("localhost", server_key.public_key(), server=True)
        (self.pki / "server.crt").write_bytes(server.public_bytes(serialization.Encoding.PEM))
        _write_key(self.pki / "server.key", server_key)
        self.acl_path = self.pki / "acl"
        self.acl_path.write_text(acl)
        extra = (
            f"cafile {self.ca}\n"
            f"certfile {self.pki / 'server.crt'}\n"
            f"keyfile {self.pki / 'server.key'}\n"
            "require_certificate true\n"
            "use_identity_as_username true\n"
            f"acl_file {self.acl_path}\n"
        )
        super().__init__(workdir, port=port, extra_conf=extra, anonymous=False, scheme="mqtts")

    def _issue(self, cn: str, public_key: ec.EllipticCurvePublicKey, *, server: bool) -> x509.Certificate:
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self._ca_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        return builder.sign(self._ca_key, hashes.SHA256())

    def client(self, client_id: str) -> TlsClient:
        """A client certificate with CN ``client_id`` (the ACL's ``%u``), issued by the test CA."""
        cert_path = self.pki / f"{client_id}.crt"
        key_path = self.pki / f"{client_id}.key"
        if not cert_path.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            cert = self._issue(client_id, key.public_key(), server=False)
            cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            _write_key(key_path, key)
        return TlsClient(client_id, self.ca, cert_path, key_path)
