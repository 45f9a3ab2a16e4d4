"""The hal benchmark runs and reports what the issue asks for (tiny settings: this is not a measurement)."""

from __future__ import annotations

from hal.bench import run


def test_bench_reports_frame_cost_and_encoder_overhead() -> None:
    results = {
        r["metric"]: r for r in run(["--json", "--frames", "10", "--codecs", "libx264", "--sizes", "720p"])
    }
    for size in ("1080p", "4k"):
        sim = results[f"sim_frame_{size}"]
        assert sim["unit"] == "ms"
        assert sim["baseline"] == 33.333333
        assert 0 < sim["value"] < 1000
    hal = results["encode_libx264_720p_hal"]
    raw = results["encode_libx264_720p_raw"]
    assert hal["unit"] == raw["unit"] == "fps"
    assert hal["baseline"] == raw["value"]
    assert hal["overhead"] > 0
