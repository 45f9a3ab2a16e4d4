"""The README's code blocks, as the acceptance tests run them: the docs cannot drift from what works.

``sh`` blocks give commands (one per line; ``\\`` continues a line; ``  # ...`` ends it with a comment);
``toml`` blocks whose first line is ``# NAME`` are files a reader writes. Tests look blocks up by the
README section they are in and a command they contain, then run those commands as written, with only
what a test machine needs replaced (the program path, a free port for a fixed one).
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"

_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)


@dataclass(frozen=True, slots=True)
class Block:
    section: str  # the nearest ``## `` heading above the block
    lang: str
    text: str

    def commands(self) -> list[str]:
        """Shell commands, continuations joined and trailing comments removed."""
        joined = re.sub(r"\\\n\s*", " ", self.text)
        out = []
        for line in joined.splitlines():
            command = re.split(r"\s{2,}#|^#", line, maxsplit=1)[0].strip()
            if command:
                out.append(command)
        return out

    def file_name(self) -> str | None:
        """``NAME`` of a file block whose first line is ``# NAME``."""
        first = self.text.splitlines()[0] if self.text else ""
        match = re.fullmatch(r"#\s*(\S+)", first.strip())
        return match.group(1) if match else None


def blocks(path: Path = README) -> list[Block]:
    text = path.read_text()
    found = []
    for match in _FENCE.finditer(text):
        headings = re.findall(r"^## (.+)$", text[: match.start()], re.M)
        found.append(Block(headings[-1] if headings else "", match.group(1), match.group(2)))
    return found


def section_commands(section: str, *, containing: str) -> list[str]:
    """Commands of the ``sh`` block in ``section`` that has a command containing ``containing``."""
    for block in blocks():
        if block.lang == "sh" and block.section.startswith(section):
            commands = block.commands()
            if any(containing in c for c in commands):
                return commands
    raise LookupError(f"README.md: no sh block in {section!r} with a command containing {containing!r}")


def command(section: str, starting: str) -> str:
    """The one README command in ``section`` that starts with ``starting``."""
    for c in section_commands(section, containing=starting):
        if c.startswith(starting):
            return c
    raise LookupError(f"README.md: no command starting {starting!r} in {section!r}")


def file_block(name: str) -> str:
    """The content of the README's ``# NAME`` file block (without that first line)."""
    for block in blocks():
        if block.file_name() == name:
            return block.text.split("\n", 1)[1]
    raise LookupError(f"README.md: no file block '# {name}'")


def argv(cmd: str) -> list[str]:
    """A README command as a process argument list: ``roomagent``/``roomctl`` (on the reader's PATH, or
    ``.venv/bin/...``) become this interpreter running the repository's code."""
    words = shlex.split(cmd)
    program = Path(words[0]).name
    if program == "roomagent":
        return [sys.executable, "-m", "agent", *words[1:]]
    if program == "roomctl":
        return [sys.executable, "-m", "agent.fleet", *words[1:]]
    return words
