"""The WebRTC test environment lives in :mod:`agent.webrtc.lab` (the benchmark uses it too)."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.webrtc.lab import ADDR_A, ADDR_B, Janus, free_port, netns_available, private_netns, start_janus

__all__ = [
    "ADDR_A",
    "ADDR_B",
    "Janus",
    "free_port",
    "janus_in_netns",
    "netns_available",
    "private_netns",
    "start_janus",
]


@pytest.fixture
def janus_in_netns(tmp_path: Path) -> Iterator[Janus]:
    """A real Janus (VideoRoom, ``require_e2ee``, recording) on free ports inside a private network
    namespace that the test itself runs in (its main thread and every process it starts)."""
    with private_netns():
        janus = start_janus(tmp_path / "janus")
        try:
            yield janus
        finally:
            janus.stop()
