"""A room, a real Janus and a real headless Chromium meet with SFrame end to end.

Everything runs inside a private network namespace (``tests/webrtc_env.py``): Janus (Debian ``janus``,
VideoRoom with ``require_e2ee``, recording), ``roomagent webrtc join`` on the sim HAL, ``roomctl meeting
web`` serving ``web/`` on 127.0.0.1, Chromium driven by chromium-driver with fake camera/microphone.
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

from agent.webrtc.joinkeys import JoinKeys, PeerKey, SfuPlace, join_fragment
from tests.mjr import scan_recording
from tests.webrtc_env import free_port, netns_available, private_netns, start_janus

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("ROOMAGENT_ARTIFACTS", REPO / "test-artifacts"))

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None or shutil.which("janus") is None,
        reason="needs Debian's chromium, chromium-driver and janus (make browser-test installs them)",
    ),
    pytest.mark.skipif(not netns_available(), reason="needs root for a private network namespace"),
]

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
    "--window-size=1280,800",
]


def _browser(profile: Path):  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _stats(driver) -> dict:  # type: ignore[no-untyped-def]
    return driver.execute_script("return JSON.parse(JSON.stringify(window.roomStats || null))") or {}


def test_room_and_browser_meet_through_janus_with_sframe(tmp_path: Path) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    room_key, guest_key = secrets.token_bytes(32), secrets.token_bytes(32)
    room_keys = JoinKeys("m-web", 4, PeerKey("self", 0x101, room_key), (PeerKey("alice", 0x102, guest_key),))
    guest_keys = JoinKeys(
        "m-web", 4, PeerKey("self", 0x102, guest_key), (PeerKey("room-a", 0x101, room_key),)
    )
    (tmp_path / "room.json").write_text(json.dumps(room_keys.to_json()))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with private_netns():
        janus = start_janus(tmp_path)
        web = room = None
        drivers = []
        try:
            port = free_port("127.0.0.1")
            web = subprocess.Popen(
                [sys.executable, "-m", "agent.fleet", "meeting", "web", "--port", str(port)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            assert web.stdout is not None
            web.stdout.readline()
            room = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "agent",
                    "webrtc",
                    "join",
                    "--sfu-url",
                    janus.url,
                    "--sfu-room",
                    str(janus.room),
                    "--token",
                    janus.pin,
                    "--keys-file",
                    str(tmp_path / "room.json"),
                    "--name",
                    "room-a",
                    "--seconds",
                    "45",
                    "--width",
                    "320",
                    "--height",
                    "240",
                    "--json",
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=(tmp_path / "room.log").open("w"),
            )
            place = SfuPlace(janus.url, janus.room, janus.pin)
            link = f"http://127.0.0.1:{port}/index.html#{join_fragment(place, 'alice', guest_keys)}&video=320x240"
            keyless = f"http://127.0.0.1:{port}/index.html#{join_fragment(place, 'mallory', None)}"

            alice = _browser(tmp_path / "profile-alice")
            drivers.append(alice)
            alice.get(link)
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                tile = _stats(alice).get("tiles", {}).get("room-a") or {}
                if tile.get("t0") is not None and (tile["t1"] - tile["t0"]) >= 20_000:
                    break
                time.sleep(1)
            stats = _stats(alice)
            alice.save_screenshot(str(ARTIFACTS / "webrtc-browser.png"))
            (ARTIFACTS / "webrtc-browser-console.log").write_text(
                "\n".join(str(e) for e in alice.get_log("browser"))
            )

            mallory = _browser(tmp_path / "profile-mallory")
            drivers.append(mallory)
            mallory.get(keyless)
            time.sleep(8)
            locked = _stats(mallory)
            notice = mallory.find_element("id", "notice").text
            mallory.save_screenshot(str(ARTIFACTS / "webrtc-browser-nokey.png"))
            for d in drivers:
                d.quit()
            drivers.clear()
            out, _ = room.communicate(timeout=60)
            report = json.loads(out)
        finally:
            for d in drivers:
                d.quit()
            for p in (room, web):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait()
            janus.stop()

    tile = stats["tiles"]["room-a"]
    # Stamps the browser did not show, less frames the room's camera dropped before the encoder.
    seen = set(tile["seqs"])
    first, last = min(seen), max(seen)
    camera_dropped = {s + 1 + i for s, n in report["sent"]["camera_gaps"] for i in range(n)}
    lost = sorted(s for s in range(first, last + 1) if s not in seen and s not in camera_dropped)
    tile["lost_after_first"] = len(lost)
    tile["camera_dropped_in_window"] = len([s for s in camera_dropped if first <= s <= last])
    del tile["seqs"]
    seconds = (tile["t1"] - tile["t0"]) / 1000
    fps = (tile["stamps"] - 1) / seconds
    lat = sorted(tile["latencies"])
    p50, p99 = lat[len(lat) // 2], lat[int(len(lat) * 0.99)]
    summary = {
        "browser": {
            "fps": round(fps, 1),
            "stamps": tile["stamps"],
            "missing": tile["missing"],
            "lost_after_first": tile["lost_after_first"],
            "camera_dropped_in_window": tile["camera_dropped_in_window"],
            "presented": tile.get("presented", 0) - tile.get("presented0", 0),
            "out_of_order": tile["outOfOrder"],
            "latency_ms_p50": round(p50, 1),
            "latency_ms_p99": round(p99, 1),
            "worker": stats.get("worker"),
        },
        "room": report,
        "keyless": {"worker": locked.get("worker"), "tiles": locked.get("tiles"), "notice": notice},
    }
    recording = scan_recording(janus.rec_dir)
    summary["recording"] = recording
    (ARTIFACTS / "webrtc-browser.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))

    # The browser shows the room's video: stamps read from decoded frames, >= 25 fps, none missing.
    assert seconds >= 15, summary
    assert fps >= 25, summary
    assert tile["lost_after_first"] == 0, summary
    assert not stats["worker"]["failed"], summary
    # The room received, decrypted and decoded the browser's video and audio.
    alice_rx = next(v for v in report["received"].values() if v["display"] == "alice")
    assert alice_rx["video_frames"] > 100 and alice_rx["audio_frames"] > 200, summary
    # No frame failed authentication or named an unknown key (a frame the transport delivered
    # truncated is counted as "short" and dropped before decryption).
    assert not {k for k in report["sframe"]["open_failed"] if not k.endswith(":short")}, summary
    assert sum(report["sframe"]["open_failed"].values()) <= 3, summary
    # Without the key: the clear message, nothing decrypted, no stamp read.
    assert "Cannot decrypt" in notice
    assert locked["worker"]["opened"] == 0 and locked["worker"]["failed"], summary
    assert all(t["stamps"] == 0 for t in locked.get("tiles", {}).values()), summary
    # Janus forwarded only ciphertext.
    assert recording["video_frames"] > 100 and recording["plaintext_frames"] == 0, summary
