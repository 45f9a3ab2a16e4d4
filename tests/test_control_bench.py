"""The control benchmark runs end to end (tiny counts) and reports its figures with a same-run baseline."""

from __future__ import annotations

import pytest

from agent.control.bench import run

pytestmark = pytest.mark.broker


def test_bench_control_reports_latency_and_verify_cost() -> None:
    results = {r["metric"]: r for r in run(["--commands", "5", "--configs", "3", "--verifies", "20"])}
    assert results["control.command_ack_p99"]["value"] > 0
    assert results["control.config_apply_ack_p50"]["unit"] == "ms"
    verify = results["control.verify_document"]
    assert verify["baseline"] is not None
    assert verify["baseline"] > 0
    assert verify["ratio"] is not None
    assert verify["ratio"] >= 1  # verifying a document costs at least one bare verify
