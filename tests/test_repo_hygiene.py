"""The repository stands on its own and its comments explain: no paths outside it, no issue numbers."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# This file names the patterns it looks for.
SELF = Path(__file__).resolve().relative_to(REPO).as_posix()


def _tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    out = []
    for name in listed.splitlines():
        path = REPO / name
        if name == SELF or not path.is_file() or path.suffix in {".json", ".png", ".mkv"}:
            continue
        try:
            path.read_text()
        except UnicodeDecodeError:
            continue  # binary
        out.append(path)
    return out


def _hits(pattern: str) -> list[str]:
    regex = re.compile(pattern)
    return [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in _tracked_text_files()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if regex.search(line)
    ]


def test_nothing_points_outside_the_repository() -> None:
    assert _hits(r"\.\./shared|shared/DESIGN|/work/") == []


def test_comments_say_why_instead_of_citing_issue_numbers() -> None:
    assert _hits(r"\b[Ii]ssue \d+") == []
