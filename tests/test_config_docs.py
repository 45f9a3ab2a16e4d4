"""docs/config.md is generated from the config model: it must be complete and current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

from agent import config
from agent.config_docs import descriptions, render

PAGE = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def _models() -> list[type[BaseModel]]:
    return [
        obj
        for name in config.__all__
        if isinstance(obj := getattr(config, name), type) and issubclass(obj, BaseModel)
    ]


def test_every_key_has_a_description() -> None:
    missing = [
        f"{model.__name__}.{name}"
        for model in _models()
        for name in model.model_fields
        if model is not config.AgentConfig and not descriptions().get((model.__name__, name), "").strip()
    ]
    assert not missing, f"add an attribute docstring in agent/config.py for: {missing}"
    assert all((model.__doc__ or "").strip() for model in _models())


def test_committed_page_is_current() -> None:
    assert PAGE.read_text() == render(), (
        "docs/config.md is stale: run `python -m agent.config_docs > docs/config.md` and commit it"
    )


def test_every_key_appears_on_the_page() -> None:
    page = render()
    for name in config.AgentConfig.model_fields:
        assert f"## `[{name}]`" in page, name
    for model in _models():
        if model is not config.AgentConfig:
            for name in model.model_fields:
                assert f"| `{name}` |" in page, f"{model.__name__}.{name}"


def test_module_entry_point_prints_the_page(agent_env: dict[str, str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agent.config_docs"], env=agent_env, capture_output=True, text=True, check=True
    )
    assert out.stdout == render()
