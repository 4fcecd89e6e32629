"""The retrieval benchmark's workers agree with each other on a tiny gallery (smoke test, not timed)."""

import pytest

from benchmarks import bench_retrieval as bench


def test_bench_workers_small():
    exact = bench.worker("exact", 1500, 32, None)
    ref = bench.worker("numpy_ref", 1500, 32, None)
    flat = bench.worker("faiss_flat", 1500, 32, None)
    assert exact["num_queries"] == 150 and exact["num_skipped"] == 0
    for k in ("mAP", "R@1", "R@5", "R@10"):
        assert exact[k] == pytest.approx(ref[k], abs=1e-12)
        if k != "mAP":
            assert flat[k] == pytest.approx(exact[k])  # exact top-101 holds every rank <= 10
    assert flat["mAP@K"] <= exact["mAP"] + 1e-9
    assert exact["py_peak_mb"] >= 0 and exact["seconds"] > 0
