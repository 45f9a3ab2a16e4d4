"""Scenarios for the local configuration: a bad file is refused naming the key, never half-used."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.config import AgentConfig, load_config, parse_config
from agent.errors import ConfigError


def test_no_file_gives_sim_defaults() -> None:
    config = load_config(None)
    assert config.hal.backend == "sim"
    assert config.mqtt.url is None
    assert [c.id for c in config.hal.cameras] == ["cam0"]


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[device]\nid = 'a'\ncolour = 'red'\n", "device.colour"),
        ("[hal.encoder]\nbitrate_kbps = '2000'\n", "hal.encoder.bitrate_kbps"),
        ("[mqtt]\nurl = 'http://broker:1883'\n", "mqtt.url"),
        ("[mqtt]\nurl = 'mqtt://broker:notaport'\n", "mqtt.url"),
        ("[trust]\nroot = '/nonexistent/root.json'\n", "trust.root"),
        ("[[hal.cameras]]\nid = 'c'\nbackend = 'v4l2'\n", "hal.cameras[0]"),
        ("[log]\nlevel = 'loud'\n", "log.level"),
        ("[media]\nsink = 'udp://x'\n", "media.sink"),
    ],
)
def test_bad_key_is_named(tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any(issue.path == key for issue in info.value.issues), info.value.issues


def test_toml_syntax_error_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[device\n")
    with pytest.raises(ConfigError):
        load_config(path)


def test_full_config_parses(tmp_path: Path) -> None:
    root = tmp_path / "root.json"
    root.write_text("{}")
    config = parse_config(
        {
            "device": {"id": "room-101", "groups": ["hq", "floor-3"]},
            "mqtt": {"url": "mqtt://127.0.0.1:1883"},
            "trust": {"root": str(root)},
            "state": {"dir": str(tmp_path / "state")},
            "hal": {"cameras": [{"id": "front", "width": 1920, "height": 1080, "fps": 30}]},
            "media": {"sink": "rtp://127.0.0.1:5004"},
        }
    )
    assert isinstance(config, AgentConfig)
    assert config.state_dir() == tmp_path / "state"


def test_check_config_cli_exits_2_naming_key(tmp_path: Path, python: str, agent_env: dict[str, str]) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[device]\nid = 7\n")
    proc = subprocess.run(
        [python, "-m", "agent", "check-config", str(path)], env=agent_env, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "device.id" in proc.stderr
