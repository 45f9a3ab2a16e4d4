"""``roomctl fleet-sim``: the command line (broker choice, options, output)."""

from __future__ import annotations

__all__ = ["register"]

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from pathlib import Path

from agent.errors import AgentError
from agent.fleet.sim.plane import run_fleet_sim
from agent.fleet.sim.rooms import raise_nofile


def _hard_nofile() -> int:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 1 << 20 if hard == resource.RLIM_INFINITY else int(hard)


def _main(args: argparse.Namespace) -> int:
    from agent.logs import configure_logging

    configure_logging("error", "json", stream=sys.stderr)
    if args.rooms < 1:
        print("fleet-sim: --rooms must be at least 1", file=sys.stderr)
        return 2
    if args.kill_node and args.cluster is None:
        print("fleet-sim: --kill-node needs --cluster nats:N", file=sys.stderr)
        return 2
    broker = None
    cluster = None
    kill = None
    pids: list[int] = []
    protocol = args.mqtt_protocol
    plane_endpoint = 0
    try:
        urls = [u for group in (args.broker or []) for u in group.split(",") if u]
        if args.cluster is not None:
            from agent.fleet.brokers import NatsCluster

            kind, _, nodes = args.cluster.partition(":")
            if kind != "nats" or not nodes.isdigit() or not 1 <= int(nodes) <= 9:
                print("fleet-sim: --cluster takes nats:N (N from 1 to 9)", file=sys.stderr)
                return 2
            # The nodes inherit it: JetStream keeps files open per consumer (five per room here).
            raise_nofile(min(8 * args.rooms + 1024, _hard_nofile()))
            cluster = NatsCluster(Path(tempfile.mkdtemp(prefix="fleet-sim-nats-")), nodes=int(nodes))
            cluster.start(timeout_s=120)
            urls, protocol = cluster.urls, "3.1.1"  # NATS speaks MQTT 3.1.1 only
            pids = [pid for i in range(len(cluster.nodes)) if (pid := cluster.pid(i)) is not None]
            if args.kill_node:
                # Node 0 carries a third of the rooms; the plane stays on node 1.
                kill, plane_endpoint = (lambda: cluster.kill_node(0)), min(1, len(urls) - 1)
        elif not urls:
            from agent.control.devbroker import Mosquitto

            raise_nofile(min(args.rooms + 1024, _hard_nofile()))  # the broker inherits it
            broker = Mosquitto(Path(tempfile.mkdtemp(prefix="fleet-sim-broker-")))
            broker.start()
            urls = [broker.url]
            pids = [broker.pid] if broker.pid is not None else []
        workdir = None
        if args.state_dir is not None:
            args.state_dir.mkdir(parents=True, exist_ok=True)
            workdir = Path(tempfile.mkdtemp(prefix="fleet-sim-", dir=args.state_dir))
        try:
            result = asyncio.run(
                run_fleet_sim(
                    args.rooms,
                    urls,
                    protocol=protocol,
                    broker_pids=pids,
                    kill_node=kill,
                    plane_endpoint=plane_endpoint,
                    timeout_s=args.timeout,
                    connect_rate=args.connect_rate,
                    prefix=args.prefix,
                    workers=args.workers,
                    workdir=workdir,
                )
            )
        finally:
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
    except AgentError as exc:
        print(f"fleet-sim: {exc}", file=sys.stderr)
        return 1
    finally:
        if broker is not None:
            broker.stop()
            shutil.rmtree(broker.workdir, ignore_errors=True)
        if cluster is not None:
            cluster.stop()
            shutil.rmtree(cluster.workdir, ignore_errors=True)
    out = result.as_json()
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"{out['acked']}/{out['rooms']} rooms applied policy v{out['policy_version']}: "
            f"p50 {out['p50_ms']} ms, "
            f"p99 {out['p99_ms']} ms, all acked in {out['all_acked_s']} s (connect {out['connect_s']} s)"
        )
        if out["rejected"]:
            print(f"not applied: {out['rejected']}")
    once = out.get("applied_twice_or_more", 0) == 0
    return 0 if result.acked == result.rooms and once else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``fleet-sim`` to ``roomctl``."""
    p = sub.add_parser(
        "fleet-sim",
        help="run N rooms' control planes against one broker and time a signed group push",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("--rooms", type=int, required=True, metavar="N", help="number of simulated rooms")
    p.add_argument(
        "--broker",
        metavar="URL[,URL...]",
        action="append",
        default=None,
        help="mqtt://HOST:PORT, repeatable or comma-separated for a cluster's endpoints (default: start a "
        "throw-away Mosquitto on loopback)",
    )
    p.add_argument(
        "--mqtt-protocol", choices=("5", "3.1.1"), default="5", help="MQTT version of rooms and plane"
    )
    p.add_argument(
        "--cluster",
        metavar="nats:N",
        default=None,
        help="start a throw-away N-node NATS cluster (JetStream, MQTT 3.1.1) and spread the rooms over it",
    )
    p.add_argument(
        "--kill-node",
        action="store_true",
        help="with --cluster: SIGKILL node 0 (a third of the rooms on 3 nodes) when the first ack arrives",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--timeout", type=float, default=180.0, metavar="S", help="give up waiting after S seconds"
    )
    p.add_argument(
        "--connect-rate",
        type=float,
        default=500.0,
        metavar="R",
        help="rooms started per second (a real fleet reconnects with jitter, too)",
    )
    p.add_argument("--prefix", default="roomagent/v1", help="topic prefix")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,  # noqa: S108 - tmpfs on purpose
        metavar="DIR",
        help="where the rooms keep their state (default /dev/shm: on a real fleet every room has its own "
        "disk, so N rooms' fsyncs must not queue on one disk here; pass a disk path to include them)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="K",
        help="processes the rooms run in (default: one per CPU)",
    )
    p.set_defaults(func=_main)
