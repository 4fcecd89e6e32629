"""Smoke test of ``benchmarks.benchmark`` and ``benchmarks.bench_depthwise``: each ``--quick`` run
finishes and writes a complete JSON report."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _run_quick(module: str, out: pathlib.Path) -> str:
    """Runs ``python -m <module> --quick --json-out out`` from the repository root (without
    inherited XLA flags, and with LLVM's optimisations off, as ``benchmarks.benchmark --quick``
    sets them for its own runs: compiling is most of a tiny run, and a smoke run's numbers are
    not performance figures); its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
    proc = subprocess.run(
        [sys.executable, "-m", module, "--quick", "--json-out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_quick_benchmark_writes_complete_report(tmp_path):
    out = tmp_path / "bench.json"
    stdout = _run_quick("benchmarks.benchmark", out)
    assert "unlearning step fp32" in stdout and "goals:" in stdout
    report = json.loads(out.read_text())

    assert _positive(report["ceiling"]["jax_fp32_gflops"]) and _positive(report["ceiling"]["torch_bf16_gflops"])
    for kind in ("step", "embed"):
        for precision in ("fp32", "bf16"):
            entry = report[kind][precision]
            assert _positive(entry["speedup"])
            for side in ("jax", "torch"):
                m = entry[side]
                assert _positive(m["images_per_s"]) and _positive(m["median_s"])
                assert len(m["step_s"]) == report["config"]["steps"]
                assert _positive(m["peak_rss_mb"])
    fp32 = report["step"]["fp32"]
    assert _positive(fp32["model_gflops_per_step"]) and _positive(fp32["jax"]["achieved_gflops"])
    assert 0 < fp32["jax_utilisation"]
    # Same weights, batch, loss and optimiser: the first two fp32 losses agree (the second after an
    # SGD step on each side), so the two frameworks are timed on the same computation.
    assert len(fp32["loss_abs_diff_first_steps"]) == 2
    assert max(fp32["loss_abs_diff_first_steps"]) < 1e-4
    assert report["embed"]["fp32"]["embedding_abs_diff"] < 1e-4

    pipe = report["pipeline"]
    assert len(pipe["wait_s"]) == report["config"]["pipeline_steps"]
    assert all(w >= 0 for w in pipe["wait_s"]) and _positive(pipe["median_step_with_pipeline_s"])
    assert 0 <= pipe["wait_fraction"] <= 1.5

    r = report["retrieval"]
    for name in ("jaxforget_exact", "faiss_flat_top100", "numpy_reference"):
        assert _positive(r[name]["seconds"])
    assert r["mAP_abs_diff_exact_vs_numpy"] < 1e-6
    goals = report["goals"]
    assert goals["fp32_goal_met"] == (goals["step_fp32_vs_torch_fp32"] >= 1.0)


def test_quick_depthwise_benchmark_compares_both_implementations(tmp_path):
    out = tmp_path / "dw.json"
    assert "hard_disp step images/s" in _run_quick("benchmarks.bench_depthwise", out)
    report = json.loads(out.read_text())
    for impl in ("ours", "grouped_depthwise"):  # --reference defaults to grouped_depthwise
        assert _positive(report[impl]["embed_images_per_s"]) and _positive(report[impl]["step_images_per_s"])
    assert _positive(report["embed_speedup"]) and _positive(report["step_speedup"])
    assert report["embedding_max_abs_diff"] < 1e-4
