"""The control benchmark runs end to end (tiny counts) and reports its figures with a same-run baseline."""

from __future__ import annotations

import pytest

from agent.control.bench import run

pytestmark = pytest.mark.broker


def test_bench_control_reports_latency_and_verify_cost() -> None:
    results = {
        r["metric"]: r
        for r in run(
            [
                "--commands",
                "5",
                "--configs",
                "3",
                "--verifies",
                "20",
                "--flood-seconds",
                "2",
                "--flood-rate",
                "300",
            ]
        )
    }
    assert results["control.command_ack_p99"]["value"] > 0
    assert results["control.config_apply_ack_p50"]["unit"] == "ms"
    verify = results["control.verify_document"]
    assert verify["baseline"] is not None
    assert verify["baseline"] > 0
    assert verify["ratio"] is not None
    assert verify["ratio"] >= 1  # verifying a document costs at least one bare verify

    # The flood phase reports each figure beside the same run without a flood.
    for metric in ("control.flood_ack_p50", "control.flood_ack_p99", "control.flood_audit_growth"):
        assert results[metric]["baseline"] is not None, metric
    assert results["control.flood_ack_p99"]["n"] > 0  # lost commands count as 10 s, so n > 0 always
    assert results["control.flood_messages_seen"]["baseline"] > 0
    assert results["control.verify_350_signatures"]["baseline"] == verify["value"]
