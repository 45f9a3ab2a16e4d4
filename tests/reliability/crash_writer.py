"""Child process of the crash tests: persist one new state while the parent SIGKILLs it.

``python -m tests.reliability.crash_writer PATH VERSION SIZE`` prints ``go`` then writes the state
``{"version", "blob", "sha256"}`` (blob of SIZE bytes, deterministic per version) with
``agent.persist.atomic_write_json``, prints ``done`` and exits.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from agent.persist import atomic_write_json


def state(version: int, size: int) -> dict[str, object]:
    blob = (hashlib.sha256(str(version).encode()).hexdigest() * (size // 64 + 1))[:size]
    return {"version": version, "blob": blob, "sha256": hashlib.sha256(blob.encode()).hexdigest()}


def main() -> None:
    path, version, size = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    new = state(version, size)
    print("go", flush=True)
    atomic_write_json(path, new)
    print("done", flush=True)


if __name__ == "__main__":
    main()
