"""``python -m agent.fleet.sim --worker ...``: one process of simulated rooms (see rooms.py)."""

import sys

from agent.fleet.sim.rooms import worker_entry

if sys.argv[1:2] == ["--worker"]:
    worker_entry()
else:
    sys.exit("usage: python -m agent.fleet.sim --worker ... (started by roomctl fleet-sim)")
