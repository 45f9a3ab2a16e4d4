"""Two rooms meet over the one transport: ``roomagent webrtc join`` x 2 through a real Janus.

Each room sends the sim camera (VP8) and audio (Opus) SFrame-sealed and receives, opens and decodes
the other's; Janus (VideoRoom, ``require_e2ee``) records only ciphertext. In a private network
namespace (Janus gathers no loopback candidates).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.webrtc.joinkeys import JoinKeys, PeerKey
from tests.mjr import scan_recording
from tests.webrtc_env import Janus, janus_in_netns, netns_available

__all__ = ["janus_in_netns"]  # the fixture, used by name

REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("janus") is None, reason="needs Debian's janus (make test installs it)"),
    pytest.mark.skipif(not netns_available(), reason="needs root for a private network namespace"),
]


def test_two_rooms_see_and_hear_each_other_through_janus(tmp_path: Path, janus_in_netns: Janus) -> None:
    janus = janus_in_netns
    ka, kb = secrets.token_bytes(32), secrets.token_bytes(32)
    files = {
        "room-a": JoinKeys("m-2", 4, PeerKey("self", 0x201, ka), (PeerKey("room-b", 0x202, kb),)),
        "room-b": JoinKeys("m-2", 4, PeerKey("self", 0x202, kb), (PeerKey("room-a", 0x201, ka),)),
    }
    for name, keys in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(keys.to_json()))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    reports = {}
    procs = {}
    try:
        for name in files:
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "agent", "webrtc", "join", "--sfu-url", janus.url,
                 "--sfu-room", str(janus.room), "--token", janus.pin,
                 "--keys-file", str(tmp_path / f"{name}.json"), "--name", name,
                 "--seconds", "12", "--width", "320", "--height", "240", "--take", "all", "--json"],
                env=env, stdout=subprocess.PIPE, stderr=(tmp_path / f"{name}.log").open("w"),
            )  # fmt: skip
            time.sleep(1)
        for name, proc in procs.items():
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0, (tmp_path / f"{name}.log").read_text()[-2000:]
            reports[name] = json.loads(out)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        janus.stop()  # recordings are complete once Janus has closed them
    recording = scan_recording(janus.rec_dir)
    for name, other in (("room-a", "room-b"), ("room-b", "room-a")):
        got = next(v for v in reports[name]["received"].values() if v["display"] == other)
        assert got["video_frames"] > 100, reports
        # Both layers the room sends reached the other room through the SFU (full and half size).
        assert got["layers"].get("320x240", 0) > 50, reports
        assert got["layers"].get("160x120", 0) > 50, reports
        assert got["audio_frames"] > 200, reports
        assert not reports[name]["sframe"]["open_failed"], reports
    assert recording["stamps_readable"] == 0, recording
    assert recording["plaintext_frames"] == 0, recording
    assert set(recording["kids"]) == {0x201, 0x202}, recording
