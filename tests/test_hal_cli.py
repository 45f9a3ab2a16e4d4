"""`roomagent hal ...` as a tester runs it: real processes, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av

from hal.stamps import read_stamp

CONFIG = """
[[hal.cameras]]
id = "cam0"
width = 320
height = 240
fps = 30
"""


def _hal(
    env: dict[str, str], tmp_path: Path, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "agent.toml"
    config.write_text(CONFIG)
    return subprocess.run(
        [sys.executable, "-m", "agent", "hal", "--config", str(config), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_list_json(agent_env: dict[str, str], tmp_path: Path) -> None:
    out = _hal(agent_env, tmp_path, "list", "--json")
    assert out.returncode == 0, out.stderr
    devices = json.loads(out.stdout)  # logs go to stderr: stdout is pure JSON
    cams = [d for d in devices if d["kind"] == "camera"]
    assert [c["id"] for c in cams] == ["cam0"]
    assert cams[0]["capabilities"]["modes"][0]["width"] == 320
    assert {"pan_absolute", "privacy"} <= {c["name"] for c in cams[0]["capabilities"]["controls"]}
    encoders = {d["id"] for d in devices if d["kind"] == "encoder"}
    assert "libx264" in encoders
    assert "h264_nvenc" not in encoders


def test_record_then_read_the_stamps_back(agent_env: dict[str, str], tmp_path: Path) -> None:
    video = tmp_path / "rec.mkv"
    out = _hal(agent_env, tmp_path, "record", "cam0", "--seconds", "1.5", "--codec", "vp8", str(video))
    assert out.returncode == 0, out.stderr
    drop_line = out.stdout.splitlines()[1]
    dropped = 0 if "none dropped" in drop_line else int(drop_line.split("dropped ")[1].split()[0])
    with av.open(str(video)) as container:  # a file other tools open
        assert container.streams.video[0].codec_context.name in ("vp8", "libvpx")
    out = _hal(agent_env, tmp_path, "stamps", str(video), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["frames"] >= 10
    assert report["stamped"] == report["frames"]
    assert report["first_seq"] == 0
    # Frames the encoder was too slow for are lost at the camera, as on real hardware; record said so.
    assert report["missing"] == dropped
    assert report["out_of_order"] == 0


def test_snapshot(agent_env: dict[str, str], tmp_path: Path) -> None:
    png = tmp_path / "snap.png"
    out = _hal(agent_env, tmp_path, "snapshot", "cam0", str(png))
    assert out.returncode == 0, out.stderr
    with av.open(str(png)) as container:
        [image] = list(container.decode(video=0))
    assert (image.width, image.height) == (320, 240)
    assert read_stamp(image) is not None


def test_control_set_and_read_back(agent_env: dict[str, str], tmp_path: Path) -> None:
    out = _hal(agent_env, tmp_path, "control", "cam0", "zoom_absolute", "250")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "zoom_absolute=250"
    out = _hal(agent_env, tmp_path, "control", "cam0", "zoom_absolute", "9999")
    assert out.returncode == 1
    assert "zoom 9999 outside 100..400" in out.stderr
    out = _hal(agent_env, tmp_path, "control", "cam9", "privacy")
    assert out.returncode == 1
    assert "cam9" in out.stderr


SCENARIO = """
duration_s = 2.6
settle_s = 1.0
codec = "h264"
[[camera]]
id = "cam0"
width = 320
height = 240
fps = 30
[[step]]
at_s = 0.3
fault = "encoder_fail"
[[step]]
at_s = 0.6
fault = "unplug"
[[step]]
at_s = 1.0
fault = "replug"
[[step]]
at_s = 1.3
fault = "stall"
ms = 200
"""


def test_scenario_reports_recovery(agent_env: dict[str, str], tmp_path: Path) -> None:
    script = tmp_path / "faults.toml"
    script.write_text(SCENARIO)
    out = _hal(agent_env, tmp_path, "scenario", str(script), "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    events = [o["event"] for o in result["observations"]]
    assert "encoder_failed" in events
    assert "encoder_reopened" in events
    assert "camera_gone" in events
    assert events.count("camera_opened") == 2
    assert result["recovered"] is True
    assert result["stamps"]["restarts"] == 1


def test_scenario_that_never_replugs_does_not_recover(agent_env: dict[str, str], tmp_path: Path) -> None:
    script = tmp_path / "gone.toml"
    script.write_text('duration_s = 1.2\n[[step]]\nat_s = 0.3\nfault = "unplug"\n')
    out = _hal(agent_env, tmp_path, "scenario", str(script))
    assert out.returncode == 1
    assert "NOT recovered" in out.stdout


def test_bad_scenario_names_the_key(agent_env: dict[str, str], tmp_path: Path) -> None:
    script = tmp_path / "bad.toml"
    script.write_text('[[step]]\nat_s = 0.3\nfault = "explode"\n')
    out = _hal(agent_env, tmp_path, "scenario", str(script))
    assert out.returncode == 1
    assert "step[0].fault 'explode'" in out.stderr


def test_stall_longer_than_the_scenario_is_not_recovered(agent_env: dict[str, str], tmp_path: Path) -> None:
    """Frames captured before the stall began must not count as recovery."""
    script = tmp_path / "long-stall.toml"
    script.write_text('duration_s = 1.5\n[[step]]\nat_s = 0.3\nfault = "stall"\nms = 10000\n')
    out = _hal(agent_env, tmp_path, "scenario", str(script), "--json")
    assert out.returncode == 1, out.stdout
    result = json.loads(out.stdout)
    assert result["recovered"] is False
    assert result["faults_end_s"] == 10.3
    assert result["frames_after_last_fault"] == 0
    assert "after the scenario's 1.50 s" in result["verdict"]


def test_stall_within_the_scenario_counts_later_frames(agent_env: dict[str, str], tmp_path: Path) -> None:
    script = tmp_path / "stall.toml"
    script.write_text('duration_s = 2.0\n[[step]]\nat_s = 0.3\nfault = "stall"\nms = 600\n')
    out = _hal(agent_env, tmp_path, "scenario", str(script))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "recovered: " in out.stdout
    assert "after the faults ended at 0.90 s" in out.stdout


def test_record_reports_drops_and_codec_banners_stay_quiet(agent_env: dict[str, str], tmp_path: Path) -> None:
    """Frames the encoder had no time for show up as drops, with the reason."""
    out = _hal(agent_env, tmp_path, "record", "cam0", "--seconds", "1.5", "--codec", "av1",
               str(tmp_path / "out.mkv"), timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Svt[" not in out.stderr  # SVT-AV1's banner is silenced
    lines = out.stdout.splitlines()
    written = int(lines[0].split(": ")[1].split(" frames")[0])
    assert lines[1].startswith("captured ")
    captured = int(lines[1].split()[1])
    assert captured >= written
    if captured > written:
        assert f"dropped {captured - written} " in lines[1]
        assert "slower than the camera" in lines[1]
    else:
        assert "none dropped" in lines[1]


def test_drop_report_names_the_cause() -> None:
    from hal.cli import _drop_report

    line = _drop_report({"captured": 148, "frames": 24, "elapsed_s": 5.0, "fps": 30, "encoder": "libsvtav1"})
    assert line.startswith("captured 148 frames in 5.0 s, dropped 124 (83%): libsvtav1 encoded 4.8 fps")
