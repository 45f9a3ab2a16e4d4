"""Common harness for the fuzz targets in ``fuzz/``.

A target module defines ``TestOneInput(data: bytes) -> None`` and ends with::

    if __name__ == "__main__":
        run(TestOneInput, seeds=SEEDS)

``guarded(expected)`` wraps the body so that only the target's *typed* errors count as a clean rejection;
any other exception escapes and atheris (libFuzzer) records it as a crash with the reproducing input.

Run a target directly with libFuzzer flags, e.g. ``python fuzz/fuzz_config.py -max_total_time=60``.
With no corpus directory on the command line the target works in ``$ROOMAGENT_FUZZ_DIR/<target>/``
(default ``$TMPDIR/roomagent-fuzz/<target>/``): ``corpus/`` (the seeds plus what libFuzzer found, kept
across runs so coverage accumulates), ``artifacts/`` (crashing inputs) and ``scratch/``. The
repository is never written to, and libFuzzer's exit skips Python clean-up, so nothing lives in fresh
temporary directories. When atheris cannot be imported (no wheel for the platform) the
same ``TestOneInput`` is driven by hypothesis for the same time budget; the last line printed has the
form ``Done N runs in S second(s)`` in both modes, which ``make fuzz`` and the test suite parse.
"""

from __future__ import annotations

__all__ = ["UNAVAILABLE", "guarded", "instrumented", "run", "unavailable", "workdir"]

import contextlib
import functools
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # ``python fuzz/fuzz_x.py`` puts fuzz/ first, not the repository.
    sys.path.insert(0, str(REPO))

try:  # atheris ships wheels for CPython on Linux x86_64/aarch64; elsewhere hypothesis takes over.
    import atheris
except ImportError:  # pragma: no cover - depends on the platform
    atheris = None

Target = Callable[[bytes], None]

#: Exit status of a target whose code under test is not on this branch yet (the runners skip it).
UNAVAILABLE = 77


def unavailable(reason: str) -> NoReturn:
    """Exit with :data:`UNAVAILABLE`, printing why (e.g. the module under test is not built yet)."""
    print(f"fuzz target unavailable: {reason}", file=sys.stderr)
    sys.exit(UNAVAILABLE)


def guarded(*expected: type[BaseException]) -> Callable[[Target], Target]:
    """Let ``expected`` (the target's typed errors) through as clean rejections; nothing else."""

    def decorate(func: Target) -> Target:
        @functools.wraps(func)
        def wrapper(data: bytes) -> None:
            try:
                func(data)
            except expected:
                return

        return wrapper

    return decorate


@contextlib.contextmanager
def instrumented() -> Iterator[None]:
    """Import the code under test inside this block so atheris can trace its coverage."""
    if atheris is None:  # pragma: no cover
        yield
        return
    with atheris.instrument_imports(include=["agent", "hal", "tomllib", "json"]):
        yield


def _max_total_time(argv: Sequence[str], default: float = 60.0) -> float:
    for arg in argv:
        m = re.fullmatch(r"-max_total_time=(\d+(?:\.\d+)?)", arg)
        if m:
            return float(m.group(1))
    return default


def workdir(name: str | None = None) -> Path:
    """The stable working directory of the running target (created on first use)."""
    if name is None:
        name = Path(sys.argv[0]).stem
    base = os.environ.get("ROOMAGENT_FUZZ_DIR") or str(Path(tempfile.gettempdir()) / "roomagent-fuzz")
    path = Path(base) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _libfuzzer_argv(argv: list[str], seeds: Sequence[bytes]) -> list[str]:
    """Add the work directory's corpus (seeded) and artifact prefix unless argv names its own."""
    out = list(argv)
    if not any(a.startswith("-artifact_prefix=") for a in out):
        artifacts = workdir() / "artifacts"
        artifacts.mkdir(exist_ok=True)
        out.append(f"-artifact_prefix={artifacts}/")
    if not any(not a.startswith("-") for a in out[1:]):
        corpus = workdir() / "corpus"
        corpus.mkdir(exist_ok=True)
        for i, seed in enumerate(seeds):
            (corpus / f"seed-{i:03d}").write_bytes(seed)
        out.append(str(corpus))
    return out


def _run_hypothesis(target: Target, seeds: Sequence[bytes], seconds: float) -> int:  # pragma: no cover
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    class _TimeUp(Exception):
        pass

    runs = 0
    start = time.monotonic()
    data_strategy = st.binary(max_size=4096)
    if seeds:
        data_strategy = data_strategy | st.sampled_from(list(seeds))

    @settings(
        max_examples=10**9,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(data_strategy)
    def fuzz(data: bytes) -> None:
        nonlocal runs
        if time.monotonic() - start > seconds:
            raise _TimeUp
        runs += 1
        target(data)

    for seed in seeds:
        target(seed)
        runs += 1
    with contextlib.suppress(_TimeUp):
        fuzz()
    print(f"Done {runs} runs in {int(time.monotonic() - start)} second(s) (hypothesis)", file=sys.stderr)
    return 0


def run(target: Target, *, seeds: Sequence[bytes] = ()) -> None:
    """Fuzz ``target`` with atheris (libFuzzer flags from ``sys.argv``), else with hypothesis."""
    if atheris is None or os.environ.get("ROOMAGENT_FUZZ_ENGINE") == "hypothesis":
        sys.exit(_run_hypothesis(target, seeds, _max_total_time(sys.argv)))
    atheris.Setup(_libfuzzer_argv(list(sys.argv), seeds), target)
    atheris.Fuzz()  # exits the process: 0 when the time is up, non-zero on a crash
