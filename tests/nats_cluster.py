"""A real three-node NATS cluster for tests (Debian's ``nats-server``: JetStream, MQTT listeners).

The cluster itself is :class:`agent.fleet.brokers.NatsCluster` (also behind ``make cluster`` and
``roomctl fleet-sim --cluster nats:3``); this module adds what tests need around it: skipping cleanly
when ``nats-server`` is not installed (``make test`` installs it from ``TEST_DEBS``), and a broker
description that scenarios parametrized over Mosquitto and NATS share.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from agent.fleet.brokers import NATS_SERVER, NatsCluster

__all__ = ["BrokerTarget", "NatsCluster", "nats_available"]


def nats_available() -> bool:
    return os.access(NATS_SERVER, os.X_OK)


@dataclass(frozen=True, slots=True)
class BrokerTarget:
    """Where rooms and the plane connect: endpoint URLs (a room tries them in order) and the protocol.

    ``host``/``port`` are the first endpoint's (the plane in in-process scenarios connects there).
    """

    name: str
    urls: tuple[str, ...]
    protocol: str  # "5" or "3.1.1"
    cluster: NatsCluster | None = field(default=None, compare=False)

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def rotated(self, start: int) -> list[str]:
        """The endpoints starting at ``start`` (spreads rooms over the nodes, each with the rest as
        failover)."""
        n = len(self.urls)
        return [self.urls[(start + i) % n] for i in range(n)]


def workdir_for(tmp: Path) -> Path:
    path = tmp / "nats"
    path.mkdir(parents=True, exist_ok=True)
    return path
