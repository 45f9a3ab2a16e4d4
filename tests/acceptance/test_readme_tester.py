"""The README's hardware-tester flow, run as written (commands and files taken from README.md)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import av

from tests.acceptance import readme_blocks

SECTION = "Hardware testers"


def _run(cmd: str, cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        readme_blocks.argv(cmd),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_hal_tools_as_the_readme_shows_them(agent_env: dict[str, str], tmp_path: Path) -> None:
    commands = readme_blocks.section_commands(SECTION, containing="roomagent hal list")
    (tmp_path / "faults.toml").write_text(readme_blocks.file_block("faults.toml"))
    results = {}
    for cmd in commands:
        done = _run(cmd, tmp_path, agent_env)
        results[cmd.split()[2]] = done
        assert done.returncode == 0, f"{cmd}\n{done.stdout}\n{done.stderr}"
        assert "Svt[" not in done.stderr  # codec libraries' banners stay off the terminal

    assert "cam0" in results["list"].stdout
    assert "libx264" in results["list"].stdout
    assert (tmp_path / "out.png").read_bytes().startswith(b"\x89PNG")

    # record: a file PyAV opens, and a line that accounts for every captured frame.
    written, drops = results["record"].stdout.splitlines()[:2]
    assert written.startswith("out.mkv: ")
    assert drops.startswith("captured ")
    with av.open(str(tmp_path / "out.mkv")) as container:
        assert container.streams.video[0].codec_context.name == "h264"

    stamps = dict(line.split(": ", 1) for line in results["stamps"].stdout.splitlines())
    assert int(stamps["stamped"]) >= 100  # 5 s at 30 fps, minus what a loaded machine drops
    assert stamps["out_of_order"] == "0"

    assert results["control"].stdout.strip() == "zoom_absolute=200"

    scenario = results["scenario"].stdout
    for event in ("camera_gone", "encoder_failed", "encoder_reopened"):
        assert event in scenario
    assert scenario.splitlines()[-1].startswith("recovered: ")
