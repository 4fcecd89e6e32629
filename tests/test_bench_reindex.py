"""Smoke test of ``benchmarks.bench_reindex --quick``: it runs (a), (b), (c) and the RSS pair and
writes a complete report whose ratios are the printed rates' ratios."""

from __future__ import annotations

import json

import pytest

from tests.test_benchmark_smoke import _positive, _run_quick

pytest.importorskip("pyarrow")
pytest.importorskip("onnxruntime")


def test_quick_reindex_benchmark_reports_rates_ratios_and_rss(tmp_path):
    out = tmp_path / "bench.json"
    stdout = _run_quick("benchmarks.bench_reindex", out)
    assert "(a) bare onnxruntime" in stdout and "ratios:" in stdout and "goals:" in stdout
    r = json.loads(out.read_text())
    a, b, c = r["a_bare_onnxruntime_images_per_s"], r["b_reindex"], r["c_jax_engine_images_per_s"]
    assert _positive(a) and _positive(c) and _positive(b["images_per_s"]) and b["images"] == 128
    assert len(r["a_runs"]) == 2 and a == pytest.approx(sum(r["a_runs"]) / 2)
    assert r["ratios"]["b_over_a"] == pytest.approx(b["images_per_s"] / a)
    assert r["ratios"]["c_over_a"] == pytest.approx(c / a)
    small, large = (r["rss"][str(n)]["peak_rss_mb"] for n in r["config"]["rss_images"])
    assert _positive(small) and _positive(large) and r["ratios"]["rss_large_over_small"] == pytest.approx(large / small)
    assert 0 < b["engine_busy_fraction"] <= 1.0
