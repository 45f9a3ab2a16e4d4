"""Shared fixtures: repository paths, a clean structlog per test, the environment for subprocesses."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog

from tests.broker import DEFAULT_ACL, Broker, TlsBroker
from tests.nats_cluster import BrokerTarget, NatsCluster, nats_available

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO / "tests" / "vectors"  # published test vectors, copied into the repo (see its README)


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture
def agent_env(tmp_path: Path) -> dict[str, str]:
    """Environment for running ``python -m agent`` / ``python -m agent.fleet`` as real processes."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg-state")
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    env.pop("STATE_DIRECTORY", None)
    return env


@pytest.fixture
def python() -> str:
    return sys.executable


# --- Real Mosquitto brokers (used by control, privacy, media and reliability tests) -----------------


@pytest.fixture
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A real Mosquitto on a free loopback port (plain MQTT, anonymous), stopped after the test.

    ``.host``, ``.port``, ``.url`` (``mqtt://127.0.0.1:PORT``), ``.stop()``, ``.start()`` (restart on
    the same port with persisted sessions and retained messages), ``.kill()``.
    """
    broker = Broker(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    """A real Mosquitto with a TLS listener requiring client certificates and an ACL file.

    Certificate CN = MQTT username (``use_identity_as_username``); the ACL (``tests.broker.DEFAULT_ACL``)
    confines each device to ``roomagent/v1/devices/%u/...``; CN ``plane`` may do everything.
    ``.client(client_id)`` returns a ``TlsClient`` with ``.ca``, ``.cert``, ``.key`` paths;
    ``.url`` is ``mqtts://127.0.0.1:PORT``.
    """
    broker = TlsBroker(tmp_path_factory.mktemp("mosquitto-tls"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto_tls_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., TlsBroker]]:
    """Make TLS brokers with a custom ACL text: ``mosquitto_tls_factory(acl="...")``."""
    made: list[TlsBroker] = []

    def make(acl: str = DEFAULT_ACL) -> TlsBroker:
        broker = TlsBroker(tmp_path_factory.mktemp("mosquitto-tls"), acl=acl)
        broker.start()
        made.append(broker)
        return broker

    try:
        yield make
    finally:
        for broker in made:
            broker.stop()


# --- A real three-node NATS cluster (JetStream + MQTT 3.1.1 listeners; tests/nats_cluster.py) -------


@pytest.fixture
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """Three ``nats-server`` processes (own configs, ports and JetStream stores), routes on loopback;
    ready when every node grants an MQTT subscription. ``.urls``, ``.kill_node(i)``,
    ``.start_node(i)``, ``.wait_mqtt_ready(i)``. Tests may kill nodes: this one is theirs alone."""
    if not nats_available():
        pytest.skip("nats-server is not installed (make test-deps installs it)")
    cluster = NatsCluster(tmp_path_factory.mktemp("nats"), nodes=3)
    try:
        cluster.start(timeout_s=90)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def _shared_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster | None]:
    if not nats_available():
        yield None
        return
    cluster = NatsCluster(tmp_path_factory.mktemp("nats-shared"), nodes=3)
    try:
        cluster.start(timeout_s=90)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["mosquitto", "nats"])
def broker_target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrokerTarget]:
    """The same scenario on one Mosquitto (MQTT 5) and on a three-node NATS cluster (MQTT 3.1.1,
    shared by the tests of a session, never killed)."""
    if request.param == "mosquitto":
        broker = Broker(tmp_path_factory.mktemp("mosquitto"))
        broker.start()
        try:
            yield BrokerTarget("mosquitto", (broker.url,), "5")
        finally:
            broker.stop()
        return
    cluster = request.getfixturevalue("_shared_nats")
    if cluster is None:
        pytest.skip("nats-server is not installed (make test-deps installs it)")
    yield BrokerTarget("nats", tuple(cluster.urls), "3.1.1", cluster)
