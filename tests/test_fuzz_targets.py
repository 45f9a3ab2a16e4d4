"""A short fuzzing pass over every target in ``fuzz/`` (``make fuzz`` runs the long one).

Each target runs as a real atheris/libFuzzer process for a few seconds; only the target's typed errors
are clean rejections, so any other exception fails the process and this test. The execution counts are
printed (``-s`` or the ``-ra`` summary shows them) for the reliability report.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO

FUZZ_DIR = REPO / "fuzz"
TARGETS = sorted(p.name for p in FUZZ_DIR.glob("fuzz_*.py"))
SECONDS = int(os.environ.get("FUZZ_TEST_SECONDS", "3"))
_DONE = re.compile(r"Done (\d+) runs in (\d+) second")


def _run_target(
    script: Path, workdir: Path, *extra: str, engine: str | None = None, seconds: int = SECONDS
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ROOMAGENT_FUZZ_DIR=str(workdir), PYTHONPATH=str(REPO))
    if engine:
        env["ROOMAGENT_FUZZ_ENGINE"] = engine
    return subprocess.run(
        # Crashing inputs land in the test's directory whether or not the target uses fuzz/_harness.py.
        [
            sys.executable,
            str(script),
            f"-max_total_time={seconds}",
            "-timeout=20",
            f"-artifact_prefix={workdir}/",
            # libFuzzer's own crash exit code is 77 too, the harness's "not built here": a crash must
            # never read as a skip.
            "-error_exitcode=70",
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=seconds + 60,
        check=False,
    )


@pytest.mark.parametrize("target", TARGETS)
def test_target_survives_a_short_fuzzing_pass(target: str, tmp_path: Path) -> None:
    proc = _run_target(FUZZ_DIR / target, tmp_path)
    if proc.returncode == 77:  # the harness's "code under test not built on this branch yet"
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, f"{target} crashed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    done = _DONE.search(proc.stderr)
    assert done, proc.stderr[-2000:]
    runs = int(done.group(1))
    assert runs > 0
    print(f"{target}: {runs} executions in {done.group(2)} s")


HARNESS_SELF_TEST = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {fuzz_dir!r})
    from _harness import guarded, run

    class Expected(Exception):
        pass

    @guarded(Expected)
    def TestOneInput(data):
        if data[:1] == b"E":
            raise Expected("a typed rejection is fine")
        if data[:2] == b"OK":
            raise KeyError("an untyped error is a crash")

    if __name__ == "__main__":
        run(TestOneInput, seeds=[b"E", b"O"])
    """
)


@pytest.mark.parametrize("engine", [None, "hypothesis"])
def test_an_untyped_exception_is_reported_as_a_crash(tmp_path: Path, engine: str | None) -> None:
    """The harness itself can fail: a KeyError two mutations away from a seed must be found."""
    script = tmp_path / "fuzz_selftest.py"
    script.write_text(HARNESS_SELF_TEST.format(fuzz_dir=str(FUZZ_DIR)))
    # Generous budget: the run ends at the first crash, which comes within a second or so.
    proc = _run_target(script, tmp_path / "work", engine=engine, seconds=30)
    assert proc.returncode != 0
    assert "KeyError" in proc.stdout + proc.stderr
    if engine is None:
        assert list((tmp_path / "work").glob("crash-*"))


REGRESSIONS = sorted(
    (d.name, f.name) for d in (FUZZ_DIR / "regressions").glob("fuzz_*") for f in d.iterdir() if f.is_file()
)


@pytest.mark.parametrize(("target", "case"), REGRESSIONS)
def test_past_crash_stays_fixed(target: str, case: str, tmp_path: Path) -> None:
    """Every input a fuzzer ever crashed on is kept in fuzz/regressions/<target>/ and replayed."""
    proc = _run_target(FUZZ_DIR / f"{target}.py", tmp_path, str(FUZZ_DIR / "regressions" / target / case))
    if proc.returncode == 77:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, (
        f"{target} crashes again on {case}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    )


MESSAGE_PATH_FAULT = textwrap.dedent(
    """
    import sys
    sys.argv[0] = "fuzz_control_message.py"
    sys.path.insert(0, {fuzz_dir!r})
    import fuzz_control_message as target
    from agent.control import service

    real = service.verify_document

    def faulty(raw, kind, root, ctx):
        # An injected bug deep in verification: a KeyError on nested input.
        if raw.count(b"[") > 40:
            raise KeyError("injected")
        return real(raw, kind, root, ctx)

    service.verify_document = faulty
    target.run(target.TestOneInput, seeds=target.SEEDS)
    """
)


def test_the_message_path_target_fails_on_an_exception_the_boundary_caught(tmp_path: Path) -> None:
    """The boundary's catch-all keeps the room up; the fuzz target must still see the bug behind it."""
    script = tmp_path / "fuzz_message_fault.py"
    script.write_text(MESSAGE_PATH_FAULT.format(fuzz_dir=str(FUZZ_DIR)))
    proc = _run_target(script, tmp_path / "work", engine="hypothesis", seconds=30)
    assert proc.returncode != 0
    assert "reached the message boundary" in proc.stdout + proc.stderr
