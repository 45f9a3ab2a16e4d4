"""Running the README's ``make`` commands in a test: the Makefile as written, with this interpreter's venv.

``make run``/``make demo`` depend on the venv stamp (creating ``.venv`` takes minutes and a network);
the test machine already has an environment, so the stamp is marked old-but-good (``-o``) and ``BIN``
points at this interpreter's directory. Everything else is the Makefile's own recipe.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def make_argv(cmd: str) -> list[str]:
    words = shlex.split(cmd)
    assert words[0] == "make", cmd
    return [
        "make",
        "--no-print-directory",
        "-C",
        str(REPO),
        "-o",
        ".venv/.installed-stamp",
        f"BIN={Path(sys.executable).parent}",
        *words[1:],
    ]


def descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (children first), from /proc."""
    out: list[int] = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for child in map(int, children):
        out.append(child)
        out += descendants(child)
    return out


def program_pids(pid: int, needle: str) -> list[int]:
    """Descendants of ``pid`` whose command line contains ``needle``."""
    found = []
    for child in descendants(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if needle in cmdline:
            found.append(child)
    return found
