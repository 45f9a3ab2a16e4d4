"""A room (``roomagent run``), a real Janus and a real headless Chromium meet with SFrame end to end.

Everything runs inside a private network namespace (``tests/webrtc_env.py``): Mosquitto, Janus (Debian
``janus``, VideoRoom with ``require_e2ee``, recording), the room agent on the sim HAL, ``roomctl meeting
web`` serving ``web/`` on 127.0.0.1, and Chromium driven by chromium-driver with a fake camera and
microphone. The customer starts the meeting with ``roomctl meeting start --sfu-url ... --guest alice``:
the room learns the SFU place and its keys from the customer-signed key package; alice opens the join
link it prints; mallory opens the same link without its key.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from tests.broker import Broker
from tests.fleet_trust import Fleet
from tests.mjr import scan_recording
from tests.webrtc_env import Janus, free_port, janus_in_netns, netns_available

__all__ = ["janus_in_netns"]  # the fixture, used by name

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


def _without_keys(link: str) -> str:
    parts = urlsplit(link)
    fragment = {k: v[0] for k, v in parse_qs(parts.fragment).items() if k != "keys"} | {"name": "mallory"}
    return parts._replace(fragment=urlencode(fragment)).geturl()


_VECTOR_KEY = bytes(range(32))
_VECTOR_META = bytes([0x31, 0x02, 0x00])
_VECTOR_PLAIN = bytes(range(200))
_VECTOR_SCRIPT = """
const done = arguments[arguments.length - 1];
const hex = (a) => Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
const bytes = (h) => Uint8Array.from(h.match(/../g), (x) => parseInt(x, 16));
import("/sframe.js").then(async (m) => {
  const k = await m.deriveKey(4, 0x101n, bytes(arguments[0]), "encrypt");
  const out = [];
  for (const ctr of [0n, 1n, 7n, 8n, 9n, 255n, 256n, 1n << 40n]) {
    out.push(hex(await m.seal(k, ctr, bytes(arguments[1]), bytes(arguments[2]))));
  }
  done(out);
}).catch((e) => done(String(e)));
"""


def _js_vectors(driver) -> list[str]:  # type: ignore[no-untyped-def]
    """web/sframe.js sealing fixed frames under a fixed key at chosen CTRs, in the page."""
    return list(
        driver.execute_async_script(
            _VECTOR_SCRIPT, _VECTOR_KEY.hex(), _VECTOR_META.hex(), _VECTOR_PLAIN.hex()
        )
    )


def _check_vectors(vectors: list[str]) -> None:
    """Byte for byte: Python's SenderContext gives the same ciphertexts for CTR 0..256, and Python's
    ReceiverContext opens the browser's frame at CTR 2^40 (a long CTR field, RFC 9605 §4.3)."""
    from agent.e2ee.context import ReceiverContext, SenderContext

    sender = SenderContext(4, _VECTOR_KEY, 0x101)
    ours = {ctr: None for ctr in (0, 1, 7, 8, 9, 255, 256)}
    for ctr in range(257):
        frame = sender.encrypt(_VECTOR_META, _VECTOR_PLAIN)
        if ctr in ours:
            ours[ctr] = frame.hex()
    assert vectors[:7] == [ours[c] for c in (0, 1, 7, 8, 9, 255, 256)]
    receiver = ReceiverContext()
    receiver.add_key(0x101, _VECTOR_KEY, 4, epoch=1)
    assert receiver.decrypt(_VECTOR_META, bytes.fromhex(vectors[7])).plaintext == _VECTOR_PLAIN


def _wait_state(path: Path, check, within_s: float) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within_s
    state: dict = {}
    while time.monotonic() < deadline:
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            state = {}
        if check(state):
            return state
        time.sleep(0.5)
    raise AssertionError(f"state never matched: {json.dumps(state)[:2000]}")


@pytest.mark.xfail(
    strict=False,
    reason="in the full suite the room sometimes receives browser VP8 frames under a KID it has not "
    "installed (vp8:unknown_kid); passes alone: under investigation, see docs/webrtc.md",
)
def test_room_and_browser_meet_through_janus_with_sframe(
    tmp_path: Path, agent_env: dict[str, str], janus_in_netns: Janus
) -> None:
    janus = janus_in_netns
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    broker = Broker(tmp_path / "mosquitto")
    broker.start()
    # The customer enrolls the room in its signed roster (roomagent identity + roomctl roster add):
    # roomctl takes the room's HPKE keys from there, never from the broker.
    fleet = Fleet(tmp_path, agent_env)
    fleet.enroll("room-a", broker)
    config = fleet.rooms["room-a"]
    config.write_text(
        config.read_text()
        + '[[hal.cameras]]\nid = "cam0"\nwidth = 320\nheight = 240\nfps = 30\npattern = "room"\n'
    )
    state_dir = tmp_path / "room-a"
    procs: list[subprocess.Popen[bytes]] = []
    drivers = []
    try:
        room = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config)],
            env=agent_env,
            stdout=(tmp_path / "room.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        procs.append(room)
        port = free_port("127.0.0.1")
        web = subprocess.Popen(
            [sys.executable, "-m", "agent.fleet", "meeting", "web", "--port", str(port)],
            env=agent_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        procs.append(web)
        assert web.stdout is not None
        web.stdout.readline()
        # state.json is the room's state document: online once the control link is up and subscribed.
        _wait_state(state_dir / "state.json", lambda s: s.get("online") is True, 30)
        started = subprocess.run(
            [
                sys.executable, "-m", "agent.fleet", "meeting", "start",
                "--rooms", "room-a", "--broker", broker.url, "--customer-key", str(fleet.keys["customer"]),
                *fleet.trust,
                "--meeting", "m-web", "--sfu-url", janus.url, "--sfu-room", str(janus.room),
                "--sfu-token", janus.pin, "--guest", "alice",
                "--web-url", f"http://127.0.0.1:{port}/", "--wait-acks", "--timeout", "20", "--json",
            ],
            env=agent_env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert started.returncode == 0, started.stdout + started.stderr
        meeting = json.loads(started.stdout)
        link = meeting["guests"]["alice"]["link"] + "&video=320x240"
        _wait_state(state_dir / "state.json", lambda s: (s.get("webrtc") or {}).get("joined"), 30)

        alice = _browser(tmp_path / "profile-alice")
        drivers.append(alice)
        alice.get(link)
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            tile = _stats(alice).get("tiles", {}).get("room-a") or {}
            if tile.get("t0") is not None and (tile["t1"] - tile["t0"]) >= 20_000:
                break
            time.sleep(1)
        stats = _stats(alice)
        vectors = _js_vectors(alice)
        badge = alice.find_element("id", "badge").text
        names = [e.text for e in alice.find_elements("css selector", ".tile .name")]
        alice.save_screenshot(str(ARTIFACTS / "webrtc-browser.png"))
        (ARTIFACTS / "webrtc-browser-console.log").write_text(
            "\n".join(str(e) for e in alice.get_log("browser"))
        )

        mallory = _browser(tmp_path / "profile-mallory")
        drivers.append(mallory)
        mallory.get(_without_keys(link))
        time.sleep(8)
        locked = _stats(mallory)
        notice = mallory.find_element("id", "notice").text
        mallory.save_screenshot(str(ARTIFACTS / "webrtc-browser-nokey.png"))
        room_state = json.loads((state_dir / "state.json").read_text())["webrtc"]
    finally:
        for d in drivers:
            d.quit()
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        broker.stop()
        janus.stop()

    tile = stats["tiles"]["room-a"]
    # Stamps the browser did not read between its first and last one, less the frames the room's
    # (simulated) sensor dropped before the encoder because the room was too slow to take them.
    seen = set(tile.pop("seqs"))
    first, last = min(seen), max(seen)
    dropped = {after + 1 + i for after, n in room_state["sent"]["camera_gaps"] for i in range(n)}
    lost = [s for s in range(first, last + 1) if s not in seen and s not in dropped]
    seconds = (tile["t1"] - tile["t0"]) / 1000
    fps = (tile["stamps"] - 1) / seconds
    lat = sorted(tile.pop("latencies"))
    p50, p99 = lat[len(lat) // 2], lat[int(len(lat) * 0.99)]
    recording = scan_recording(janus.rec_dir)
    summary = {
        "browser": {
            "fps": round(fps, 1),
            "seconds": round(seconds, 1),
            "stamps": tile["stamps"],
            "lost_after_first": len(lost),
            "lost_seqs": lost[:20],
            "decoded_frames": tile["frames"],
            "decoded_without_readable_stamp": tile["frames"] - tile["stamps"],
            "camera_dropped": len([s for s in dropped if first <= s <= last]),
            "out_of_order": tile["outOfOrder"],
            "reader": tile.get("reader"),
            "latency_ms_p50": round(p50, 1),
            "latency_ms_p99": round(p99, 1),
            "worker": stats.get("worker"),
            "errors": stats.get("errors"),
        },
        "room": room_state,
        "keyless": {"worker": locked.get("worker"), "tiles": locked.get("tiles"), "notice": notice},
        "recording": recording,
        "meeting": {k: v for k, v in meeting.items() if k != "guests"},
    }
    (ARTIFACTS / "webrtc-browser.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))

    # What a person sees: named tiles and the badge.
    assert badge == "end-to-end encrypted", summary
    assert sorted(names) == ["alice (you)", "room-a"], summary
    # The browser's SFrame is byte for byte the room's.
    _check_vectors(vectors)
    # The browser shows the room's video: stamps read from decoded frames, >= 25 fps, none lost.
    assert seconds >= 15, summary
    assert fps >= 25, summary
    assert not lost, summary
    assert not stats["worker"]["failed"], summary
    # The room received, decrypted and decoded the browser's video and audio.
    alice_rx = next(v for v in room_state["received"].values() if v["display"] == "alice")
    assert alice_rx["video_frames"] > 100, summary
    assert alice_rx["audio_frames"] > 200, summary
    # No frame failed authentication or named an unknown key (a frame the transport delivered
    # truncated is counted as "short" and dropped before decryption).
    failed = room_state["sframe"]["open_failed"]
    assert not {k for k in failed if not k.endswith(":short")}, summary
    assert sum(failed.values()) <= 3, summary
    # Without the key: the clear message, nothing decrypted, no stamp read.
    assert "Cannot decrypt" in notice
    assert locked["worker"]["opened"] == 0, summary
    assert locked["worker"]["failed"], summary
    assert all(t["stamps"] == 0 for t in locked.get("tiles", {}).values()), summary
    # Janus forwarded only ciphertext: every frame carries an SFrame header with a meeting KID after
    # its clear bytes, and libvpx finds no stamp in what Janus recorded.
    assert recording["video_frames"] > 100, summary
    assert recording["plaintext_frames"] == 0, summary
    assert recording["stamps_readable"] == 0, summary
    kids = {r["kid"] for r in meeting["rooms"].values()} | {g["kid"] for g in meeting["guests"].values()}
    assert set(recording["kids"]) == kids, summary
