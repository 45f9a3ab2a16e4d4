"""``roomagent bench --json sframe --quick`` runs as a real process and reports every figure."""

from __future__ import annotations

import json
import subprocess
import sys

from agent.e2ee.bench import SIZES


def test_bench_reports_every_suite_size_and_baseline(agent_env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "bench", "--json", "sframe", "--quick", "--suites", "1,4"],
        env=agent_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    results = {r["metric"]: r for r in json.loads(proc.stdout)}  # stdout is pure JSON, no log lines
    for suite in (1, 4):
        for size in SIZES:
            for verb in ("encrypt", "decrypt"):
                r = results[f"sframe.suite{suite}.{verb}.{size}B"]
                assert r["unit"] == "us/frame"
                assert r["value"] > 0
                assert r["baseline"] > 0
                # value and baseline are rounded to 6 decimals, the ratio from the unrounded figures
                assert abs(r["ratio"] - r["value"] / r["baseline"]) <= 1e-3 * r["ratio"] + 1e-4
        assert results[f"sframe.suite{suite}.encrypt_core_share.4k30_35mbps"]["frame_bytes"] == 145_833
    assert results["sframe.suite4.encrypt.1200B"]["goal"] == "ratio <= 1.5"
    assert results["sframe.suite4.encrypt_throughput.102400B"]["goal"] == "ratio >= 0.9"
    assert "sframe.suite2.encrypt.64B" not in results
