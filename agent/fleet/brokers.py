"""Throw-away local brokers for fleet simulations, demos and tests (never for production).

:class:`NatsCluster` starts an N-node NATS cluster (Debian's ``nats-server``) on free loopback ports:
each node is its own process with its own generated configuration and JetStream store directory,
joined by cluster routes, each with an MQTT listener. A single Mosquitto is
:class:`agent.control.devbroker.Mosquitto`.

What NATS 2.9's MQTT support means for the rooms (measured here; ADR 0031):

- MQTT 3.1.1 only: an MQTT 5 CONNECT is refused ("unacceptable protocol version"), so rooms and
  roomctl use ``protocol = "3.1.1"`` against it;
- QoS 0 and 1 only (the wire contract uses QoS 1 only); retained messages and last wills are kept in
  JetStream streams replicated to all nodes, so they cross nodes;
- the MQTT streams are created with three replicas when the first MQTT client connects: a fresh
  cluster needs every node up once, and :meth:`NatsCluster.start` waits until an MQTT subscription is
  granted on every node;
- when a node dies, connects to the others may hang about 4 s and SUBACK may fail (0x80) until
  JetStream has re-elected its stream leaders (6-8 s here): clients need short connect timeouts,
  endpoint rotation and subscription retries (``agent.control.link``);
- two connections with one client id on different nodes take the id from each other.

Run one by hand: ``python -m agent.fleet.brokers --nodes 3`` (``make cluster``) prints the MQTT URLs and
runs until interrupted.
"""

from __future__ import annotations

__all__ = ["NATS_SERVER", "NatsCluster", "NatsNode"]

import argparse
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from agent.control.devbroker import BrokerError, free_port

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


@dataclass(frozen=True, slots=True)
class NatsNode:
    """One node's name, ports and files."""

    name: str
    client_port: int
    cluster_port: int
    mqtt_port: int
    http_port: int
    store: Path
    conf: Path
    log: Path

    @property
    def url(self) -> str:
        """The node's MQTT listener (plain, loopback)."""
        return f"mqtt://127.0.0.1:{self.mqtt_port}"


class NatsCluster:
    """``nodes`` nats-server processes with JetStream, MQTT listeners and full-mesh cluster routes."""

    def __init__(self, workdir: Path, *, nodes: int = 3, name: str = "rooms") -> None:
        if nodes < 1:
            raise ValueError("a cluster has at least one node")
        self.workdir = Path(workdir)
        self.name = name
        self.nodes = [
            NatsNode(
                f"n{i}",
                free_port(),
                free_port(),
                free_port(),
                free_port(),
                self.workdir / f"n{i}" / "jetstream",
                self.workdir / f"n{i}" / "nats.conf",
                self.workdir / f"n{i}" / "nats.log",
            )
            for i in range(nodes)
        ]
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * nodes

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def pid(self, index: int) -> int | None:
        proc = self._procs[index]
        return proc.pid if proc is not None and proc.poll() is None else None

    def running(self, index: int) -> bool:
        return self.pid(index) is not None

    def _write_conf(self, index: int) -> None:
        node = self.nodes[index]
        node.store.mkdir(parents=True, exist_ok=True)
        routes = ", ".join(
            f"nats-route://127.0.0.1:{other.cluster_port}" for other in self.nodes if other is not node
        )
        cluster = (
            f"cluster {{\n  name: {self.name}\n  listen: 127.0.0.1:{node.cluster_port}\n"
            f"  routes: [{routes}]\n}}\n"
            if len(self.nodes) > 1
            else ""
        )
        node.conf.write_text(
            f"server_name: {node.name}\n"
            f"listen: 127.0.0.1:{node.client_port}\n"
            f"http: 127.0.0.1:{node.http_port}\n"
            # One client connection per simulated room: the default (64k) is fine; set for clarity.
            "max_connections: 65536\n"
            f'jetstream {{\n  store_dir: "{node.store}"\n  max_memory_store: 256MB\n'
            "  max_file_store: 2GB\n}\n"
            f"{cluster}"
            # Explicit replicas: left to itself a node sizes the MQTT streams from the peers it sees
            # when the first MQTT client connects (two, here), and then one lost node stalls them.
            f"mqtt {{\n  listen: 127.0.0.1:{node.mqtt_port}\n"
            f"  stream_replicas: {min(len(self.nodes), 3)}\n}}\n"
        )

    def start_node(self, index: int) -> None:
        """Start (or restart, same ports and store) one node; does not wait for MQTT readiness."""
        proc = self._procs[index]
        if proc is not None and proc.poll() is None:
            return
        self._write_conf(index)
        node = self.nodes[index]
        self._procs[index] = subprocess.Popen(
            [NATS_SERVER, "-c", str(node.conf), "-l", str(node.log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill_node(self, index: int) -> None:
        """SIGKILL one node: the crash of a cluster member."""
        proc, self._procs[index] = self._procs[index], None
        if proc is not None:
            proc.kill()
            proc.wait()

    def stop_node(self, index: int, timeout_s: float = 10.0) -> None:
        proc, self._procs[index] = self._procs[index], None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def start(self, timeout_s: float = 60.0) -> None:
        """Start every node and wait until each grants an MQTT subscription (streams created)."""
        for i in range(len(self.nodes)):
            self.start_node(i)
        deadline = time.monotonic() + timeout_s
        for i in range(len(self.nodes)):
            self.wait_mqtt_ready(i, deadline - time.monotonic())

    def wait_mqtt_ready(self, index: int, timeout_s: float = 30.0) -> float:
        """Wait until node ``index`` accepts an MQTT 3.1.1 connect and grants a QoS 1 subscription.

        Returns the seconds it took. Raises :class:`BrokerError` on timeout or when the node exited.
        """
        node = self.nodes[index]
        started = time.monotonic()
        deadline = started + max(timeout_s, 1.0)
        last = "no answer"
        while time.monotonic() < deadline:
            proc = self._procs[index]
            if proc is None or proc.poll() is not None:
                log = node.log.read_text(errors="replace")[-2000:] if node.log.exists() else ""
                raise BrokerError(f"nats-server {node.name} is not running: {log}")
            ok, last = _probe(node.mqtt_port, f"probe-{node.name}-{time.monotonic_ns()}")
            if ok:
                return time.monotonic() - started
            time.sleep(0.2)
        raise BrokerError(f"nats-server {node.name} MQTT not ready within {timeout_s:.0f} s: {last}")

    def stop(self) -> None:
        for i in range(len(self.nodes)):
            self.stop_node(i)

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _probe(port: int, client_id: str, timeout_s: float = 3.0) -> tuple[bool, str]:
    """One MQTT 3.1.1 CONNECT + SUBSCRIBE (QoS 1) round trip on loopback; ``(granted, detail)``."""
    import paho.mqtt.client as mqtt  # paho comes with aiomqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

    granted = threading.Event()
    failed: list[str] = []

    def on_subscribe(
        _c: mqtt.Client, _u: object, _mid: int, codes: list[ReasonCode], _p: Properties | None
    ) -> None:
        if all(not code.is_failure for code in codes):
            granted.set()
        else:
            failed.append(str(codes))
            granted.set()

    def on_connect(c: mqtt.Client, _u: object, _f: object, code: object, _p: object) -> None:
        if getattr(code, "is_failure", False):
            failed.append(f"connack {code}")
            granted.set()
            return
        c.subscribe("roomagent-probe/ready", qos=1)

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True
    )
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.connect_timeout = timeout_s
    try:
        client.connect("127.0.0.1", port, keepalive=10)
    except OSError as exc:
        return False, str(exc)
    client.loop_start()
    try:
        if not granted.wait(timeout_s):
            return False, "no CONNACK/SUBACK in time"
        return (not failed), (failed[0] if failed else "granted")
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()
        client.loop_stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agent.fleet.brokers", description="run a local NATS cluster with MQTT listeners"
    )
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a fresh temporary directory")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="nats-cluster-"))
    cluster = NatsCluster(workdir, nodes=args.nodes)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        cluster.start()
        print(json.dumps({"urls": cluster.urls, "protocol": "3.1.1", "workdir": str(workdir)}), flush=True)
        print(f"roomctl ... --mqtt-protocol 3.1.1 --broker {','.join(cluster.urls)}", file=sys.stderr)
        with contextlib.suppress(KeyboardInterrupt):
            while not stop.wait(1.0):
                pass
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
