"""FAISS search against numpy, approximate-index recall."""

import numpy as np
import pytest

from jaxforget.eval import index as I


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_flat_search_equals_numpy():
    rng = np.random.default_rng(0)
    g = _unit(rng.normal(size=(500, 32)))
    q = _unit(rng.normal(size=(40, 32)))
    idx = I.build_index(g)
    scores, ids = I.search(idx, q, k=10, batch_size=7)
    ref = q @ g.T
    ref_ids = np.argsort(-ref, axis=1)[:, :10]
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, np.take_along_axis(ref, ref_ids, axis=1), atol=1e-5)


def test_search_pads_missing_slots():
    g = _unit(np.random.default_rng(1).normal(size=(3, 4)))
    scores, ids = I.search(I.build_index(g), g, k=5)
    assert (ids[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()


@pytest.mark.parametrize("cfg", [I.IndexConfig(kind="ivf", nlist=16, nprobe=8), I.IndexConfig(kind="hnsw", hnsw_m=16)])
def test_approximate_index_recall_is_measured(cfg):
    rng = np.random.default_rng(2)
    centers = _unit(rng.normal(size=(50, 32)))
    g = _unit(centers[rng.integers(0, 50, 3000)] + 0.3 * rng.normal(size=(3000, 32)))
    q = _unit(centers[rng.integers(0, 50, 50)] + 0.3 * rng.normal(size=(50, 32)))
    rep = I.measure_recall(g, q, cfg, k=10)
    assert 0.0 <= rep["recall@10"] <= 1.0
    assert rep["recall@10"] > 0.8, rep  # these settings search a large part of a small index


def test_recall_at_k_hand_case():
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    approx = np.array([[3, 2, 9], [-1, -1, -1]])
    assert I.recall_at_k(approx, exact) == pytest.approx(2 / 6)
    # A gallery of 2 searched with k = 3: the exact list is padded with -1, which never counts.
    exact = np.array([[7, 8, -1]])
    assert I.recall_at_k(np.array([[8, 7, -1]]), exact) == 1.0
    assert I.recall_at_k(np.array([[8, -1, -1]]), exact) == 0.5


def test_config_errors():
    with pytest.raises(ValueError, match="kind"):
        I.IndexConfig(kind="lsh")
    with pytest.raises(ValueError, match="unknown field"):
        I.IndexConfig.from_mapping({"kind": "ivf", "nlists": 3})
    with pytest.raises(ValueError, match="dimension"):
        I.search(I.build_index(np.ones((2, 4), np.float32)), np.ones((1, 3), np.float32), 1)
