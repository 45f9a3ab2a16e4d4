"""Fuzz target: the local configuration file (TOML bytes) through ``agent.config.load_config``.

Any byte string must give a valid :class:`~agent.config.AgentConfig` or a
:class:`~agent.errors.ConfigError` naming the offending keys; a UnicodeDecodeError, a
TOMLDecodeError, a pydantic ValidationError or any other exception escaping is a bug.
The bytes go through a real file (in the target's work directory) because that is the daemon's entry
point.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import guarded, instrumented, run, workdir

with instrumented():
    import tomllib  # noqa: F401 - instrumented too: its branches guide the fuzzer

    from agent.config import load_config
    from agent.errors import ConfigError

_FILE = workdir("fuzz_config") / "agent.toml"

SEEDS: list[bytes] = [
    b"",
    b"[device]\nid = 'room-101'\ngroups = ['hq', 'floor-3']\n",
    b"[mqtt]\nurl = 'mqtt://127.0.0.1:1883'\nprefix = 'roomagent/v1'\nkeepalive_s = 30\n",
    b"[mqtt]\nurl = 'mqtts://broker.example:8883'\nca = '/etc/ca.pem'\ncert = '/c.pem'\nkey = '/k.pem'\n",
    b"[log]\nlevel = 'debug'\nformat = 'json'\n",
    b"[state]\ndir = '/var/lib/roomagent'\n[trust]\nroot = '/etc/roomagent/root.json'\n",
    b"[hal]\nbackend = 'sim'\n[[hal.cameras]]\nid = 'cam0'\nwidth = 1280\nheight = 720\nfps = 30\n"
    b"pattern = 'room'\n[[hal.cameras]]\nid = 'cam1'\nbackend = 'v4l2'\ndevice = '/dev/video0'\n"
    b"[hal.encoder]\ncodecs = ['libx264', 'libvpx']\nbitrate_kbps = 2500\nkeyframe_interval = 60\n",
    b"[media]\nsink = 'rtp://127.0.0.1:5004'\nmtu = 1200\nenabled = true\n[e2ee]\nsuite = 4\n",
    b"[control]\nmax_document_bytes = 65536\nclock_skew_s = 300\nhealth_timeout_s = 10.0\n"
    b"[supervisor]\nmax_restarts = 5\nrestart_window_s = 60.0\nbackoff_initial_s = 0.5\n",
]


@guarded(ConfigError)
def TestOneInput(data: bytes) -> None:
    _FILE.write_bytes(data)
    load_config(_FILE)


if __name__ == "__main__":
    run(TestOneInput, seeds=SEEDS)
