"""The benchmark harness: a quick smoke run whose numbers are consistent with each other."""

from __future__ import annotations

import numpy as np
import pytest

from kasf.bench import BASELINE, run, time_calls, to_markdown

pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install kasf[onnx])")


def test_time_calls_runs_until_min_time_and_min_calls():
    calls = []
    lat = time_calls(lambda x: calls.append(1) or x, np.zeros(1), warmup=3, min_time_s=0.0, min_calls=7)
    assert len(lat) == 7 and len(calls) == 10 and (lat >= 0).all()


def test_smoke_run_has_baseline_ratios_and_skips_with_reasons():
    report = run(["kasportsformer-t"], [BASELINE, "eager-fused", "ort-fp32", "trt-fp16"], [1, 2], warmup=1,
                 min_time_s=0.0, progress=lambda _: None)
    rows = {(r.backend, r.batch): r for r in report.rows}
    assert rows[(BASELINE, 1)].speedup == pytest.approx(1.0)
    for batch in (1, 2):
        r = rows[("eager-fused", batch)]
        assert r.p50_ms <= r.p95_ms <= r.p99_ms
        assert r.windows_per_s == pytest.approx(r.poses_per_s)  # causal: one new pose per window
        assert r.delta_vs_fp32_mm < 0.01  # same function as the baseline
    assert rows[("ort-fp32", 1)].delta_vs_fp32_mm < 0.5
    trt = rows[("trt-fp16", 1)]
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert trt.skipped and "TensorRT" in trt.skipped
    table = to_markdown(report)
    assert "eager-reference" in table and report.machine["cpu"] in table


def test_rounds_time_every_backend_in_turns():
    """With rounds=3 each row pools 3 turns of calls (a progress line per turn), and the table says so."""
    order: list[str] = []
    report = run(["kasportsformer-t"], [BASELINE, "eager-fused"], [1], warmup=1, min_time_s=0.0, rounds=3,
                 progress=order.append)
    assert [r.calls for r in report.rows] == [3 * 4, 3 * 4]  # ceil(10 / 3) calls a turn
    assert sum("turn" in line for line in order) == 3
    assert "in 3 turns" in to_markdown(report)
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        run(["kasportsformer-t"], [BASELINE], [1], rounds=0, progress=lambda _: None)
