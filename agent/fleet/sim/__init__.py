"""``roomctl fleet-sim``: N rooms' control planes against one broker, one signed group push, ack times.

Each simulated room is the agent's own stack, not a model of it: an :class:`~agent.config.AgentConfig`
(sim HAL, media off, its own state directory), a :class:`~agent.daemon.runtime.Runtime`, the services
``roomagent run`` builds (:func:`agent.daemon.main.build_services`: the state reporter and the control
link from ``agent.control.service``) under a real :class:`~agent.daemon.supervisor.Supervisor`. The rooms
run in ``--workers`` child processes (``python -m agent.fleet.sim --worker``, one per CPU by default),
their state on tmpfs by default (``--state-dir``); the plane below runs in this process on an otherwise
idle event loop so that it timestamps each ack as it arrives. All talk to one MQTT broker.

The measurement is the management plane's view, through the wire contract only (docs/design.md):

1. set up a trust root (root and fleet Ed25519 keys) and write the root envelope every room trusts;
2. start the rooms (paced at ``--connect-rate`` per second) and wait until each has published its
   retained state with ``online: true``;
3. publish ONE signed policy (fleet-signed, tightening) to ``{p}/groups/{g}/desired/policy``, retained,
   QoS 1, and take the time;
4. collect each room's ack on ``{p}/devices/+/ack`` (payload in the device-signed DSSE envelope) and
   record, per room, the time from the publish to its ``applied`` ack.

``--json`` prints ``rooms``, ``acked``, ``p50_ms``, ``p99_ms``, ``all_acked_s`` (null when some room never
acked within ``--timeout``) and extra detail (connect time, rejections by reason, broker).
"""

from __future__ import annotations

__all__ = [
    "FleetKeys",
    "FleetSimError",
    "FleetSimResult",
    "agent_services",
    "percentile",
    "register",
    "run_fleet_sim",
    "run_rooms",
]

from agent.fleet.sim.cli import register
from agent.fleet.sim.keys import FleetKeys
from agent.fleet.sim.plane import run_fleet_sim
from agent.fleet.sim.result import FleetSimError, FleetSimResult, percentile
from agent.fleet.sim.rooms import agent_services, run_rooms
