"""The WebRTC test environment lives in :mod:`agent.webrtc.lab` (the benchmark uses it too)."""

from agent.webrtc.lab import ADDR_A, ADDR_B, Janus, free_port, netns_available, private_netns, start_janus

__all__ = ["ADDR_A", "ADDR_B", "Janus", "free_port", "netns_available", "private_netns", "start_janus"]
