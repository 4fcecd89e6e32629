"""Exact retrieval metrics, compactness and centroid accuracy against brute-force references."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxforget.eval import metrics as M


def brute_force(q, ql, g, gl, qid=None, gid=None, ks=(1, 5, 10)):
    """Reference: full ranking per query by (-score, is_positive) (pessimistic ties), then AP/CMC."""
    aps, firsts, skipped = [], [], 0
    for i in range(len(q)):
        s = (g.astype(np.float64) @ q[i].astype(np.float64))
        keep = np.ones(len(g), bool) if qid is None else gid != qid[i]
        s, lab = s[keep], gl[keep]
        pos = (lab == ql[i]) & (lab >= 0)
        if not pos.any():
            skipped += 1
            continue
        order = np.lexsort((pos, -s))  # primary: -score; at equal score negatives (pos=False) first
        ranks = np.flatnonzero(pos[order]) + 1
        aps.append(np.mean(np.arange(1, ranks.size + 1) / ranks))
        firsts.append(ranks[0])
    if not aps:
        return {"num_queries": 0, "num_skipped": skipped}
    firsts = np.asarray(firsts)
    out = {"mAP": float(np.mean(aps))}
    for k in ks:
        out[f"R@{k}"] = float(np.mean(firsts <= k))
    out["num_queries"] = len(aps)
    out["num_skipped"] = skipped
    return out


def integer_embeddings(rng, n, d, dup_from=None):
    """Small-integer vectors: every dot product is exact in float32, so ties are real ties."""
    x = rng.integers(-3, 4, size=(n, d)).astype(np.float32)
    if dup_from is not None:
        src, dst = dup_from
        x[dst] = x[src]
    return x


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("block_bytes,chunk", [(1 << 30, 1 << 20), (4 * 250 * 3, 37)])
def test_matches_brute_force_with_ties_and_exclusion(seed, block_bytes, chunk):
    rng = np.random.default_rng(seed)
    g = integer_embeddings(rng, 250, 6)
    g[100:140] = g[40:80]  # exact duplicates: ties between positives and negatives
    gl = rng.integers(-1, 15, 250)
    gid = np.arange(250)
    qi = rng.choice(250, 70, replace=False)
    got = M.retrieval_metrics(g[qi], gl[qi], g, gl, gid[qi], gid, max_block_bytes=block_bytes, gallery_chunk=chunk)
    ref = brute_force(g[qi], gl[qi], g, gl, gid[qi], gid)
    assert got["num_queries"] == ref["num_queries"] and got["num_skipped"] == ref["num_skipped"]
    for k in ("mAP", "R@1", "R@5", "R@10"):
        assert got[k] == pytest.approx(ref[k], abs=1e-12), k


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 30), nq=st.integers(1, 10), d=st.integers(1, 4), ncls=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_random_small_cases(n, nq, d, ncls, seed):
    rng = np.random.default_rng(seed)
    g = rng.integers(-2, 3, size=(n, d)).astype(np.float32)  # many exact ties
    gl = rng.integers(-1, ncls, n)
    q = rng.integers(-2, 3, size=(nq, d)).astype(np.float32)
    ql = rng.integers(-1, ncls, nq)
    got = M.retrieval_metrics(q, ql, g, gl, max_block_bytes=4 * n * 2, gallery_chunk=3)
    ref = brute_force(q, ql, g, gl)
    assert got["num_skipped"] == ref["num_skipped"]
    if ref["num_queries"]:
        for k in ("mAP", "R@1", "R@5", "R@10"):
            assert got[k] == pytest.approx(ref[k], abs=1e-12)
    else:
        assert np.isnan(got["mAP"])


def test_perfect_clusters_give_one():
    rng = np.random.default_rng(0)
    centers = np.linalg.qr(rng.normal(size=(16, 4)))[0].T  # 4 orthonormal directions
    labels = np.repeat(np.arange(4), 5)
    emb = centers[labels] + 0.01 * rng.normal(size=(20, 16))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    ids = np.arange(20)
    out = M.retrieval_metrics(emb, labels, emb, labels, ids, ids)
    assert out["mAP"] == 1.0 and out["R@1"] == 1.0 and out["num_queries"] == 20 and out["num_skipped"] == 0


def test_hand_worked_case():
    # 1-D "embeddings": the score is the gallery value times the query value 1.0.
    # Gallery, best first: 0.9 neg, 0.8 POS, 0.7 neg, 0.6 POS, 0.5 neg.
    # Positive ranks 2 and 4: AP = (1/2 + 2/4) / 2 = 0.5; first positive at rank 2 -> R@1 = 0, R@5 = 1.
    g = np.array([[0.9], [0.8], [0.7], [0.6], [0.5]], np.float32)
    gl = np.array([1, 0, 2, 0, 3])
    out = M.retrieval_metrics(np.array([[1.0]], np.float32), np.array([0]), g, gl)
    assert out["mAP"] == pytest.approx(0.5)
    assert (out["R@1"], out["R@5"], out["R@10"]) == (0.0, 1.0, 1.0)


def test_hand_worked_tie_rule():
    # Scores: POS 0.8, neg 0.8 (tie), POS 0.5. Pessimistic rule: the tied negative ranks first,
    # so positives sit at ranks 2 and 3: AP = (1/2 + 2/3) / 2 = 7/12, R@1 = 0.
    g = np.array([[0.8], [0.8], [0.5]], np.float32)
    out = M.retrieval_metrics(np.array([[1.0]], np.float32), np.array([7]), g, np.array([7, 3, 7]))
    assert out["mAP"] == pytest.approx(7 / 12)
    assert out["R@1"] == 0.0
    # the per-query helper agrees
    ranks = M.positive_ranks(np.array([0.8, 0.8, 0.5]), np.array([True, False, True]))
    assert ranks.tolist() == [2, 3]


def test_query_without_positives_is_skipped_and_counted():
    g = np.eye(3, dtype=np.float32)
    gl = np.array([0, 0, 1])
    q = np.eye(3, dtype=np.float32)
    ql = np.array([0, 5, 1])  # label 5 has no gallery item
    ids = np.arange(3)
    # query 2 (label 1) only matches itself, which is excluded by id -> also skipped
    out = M.retrieval_metrics(q, ql, g, gl, ids, ids)
    assert out["num_queries"] == 1 and out["num_skipped"] == 2
    # query 0: gallery minus itself = [item1 (pos, score 0), item2 (neg, score 0)] -> tie, neg first
    assert out["mAP"] == pytest.approx(0.5) and out["R@1"] == 0.0


def test_own_image_excluded_and_negative_labels_never_match():
    emb = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    labels = np.array([-1, -1, 4])
    ids = np.array(["a", "b", "c"])
    out = M.retrieval_metrics(emb, labels, emb, labels, ids, ids)
    assert out["num_queries"] == 0 and out["num_skipped"] == 3


def test_bad_inputs_have_clear_errors():
    with pytest.raises(ValueError, match="query_labels.*shape"):
        M.retrieval_metrics(np.zeros((3, 2), np.float32), np.zeros(2, int), np.zeros((4, 2), np.float32), np.zeros(4, int))
    with pytest.raises(ValueError, match="dimension"):
        M.retrieval_metrics(np.zeros((3, 2), np.float32), np.zeros(3, int), np.zeros((4, 5), np.float32), np.zeros(4, int))
    bad = np.zeros((3, 2), np.float32)
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        M.retrieval_metrics(bad, np.zeros(3, int), bad, np.zeros(3, int))


def test_compactness_equals_definition():
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(40, 8))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    labels = rng.integers(0, 6, 40)
    labels[0] = 99  # a singleton identity: skipped
    per = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if idx.size < 2:
            continue
        sims = [float(emb[i].astype(np.float64) @ emb[j]) for a, i in enumerate(idx) for j in idx[a + 1 :]]
        per.append(np.mean(sims))
    out = M.compactness_score(emb, labels)
    assert out["CS"] == pytest.approx(np.mean(per), abs=1e-9)
    assert out["num_identities_skipped"] == 1
    assert out["num_identities"] == len(per)


def test_centroid_accuracy_small_case():
    train = np.array([[1, 0], [1, 0.2], [0, 1], [0.2, 1]], np.float32)
    train_l = np.array([0, 0, 1, 1])
    test = np.array([[1, 0.1], [0.9, 1.0], [1, 1], [0, 1]], np.float32)
    test_l = np.array([0, 1, 0, 7])
    # centroids: id0 ~ (1, 0.1), id1 ~ (0.1, 1) (normalised). test0 -> id0 correct; test1 (0.9, 1)
    # is closer to id1 -> correct; test2 (1, 1) is equidistant -> tie counts as wrong (pessimistic);
    # test3 has label 7 without a centroid -> skipped. acc = 2 / 3.
    out = M.centroid_accuracy(train, train_l, test, test_l)
    assert out["num_images"] == 3 and out["num_skipped"] == 1
    assert out["acc"] == pytest.approx(2 / 3)
    only0 = M.centroid_accuracy(train, train_l, test, test_l, restrict_to=[0])
    assert only0["num_images"] == 2 and only0["acc"] == pytest.approx(0.5)


def test_topk_metrics_equal_exact_cmc_when_list_is_complete():
    rng = np.random.default_rng(5)
    g = rng.normal(size=(200, 16)).astype(np.float32)
    gl = rng.integers(0, 20, 200)
    ids = np.arange(200)
    qi = rng.choice(200, 30, replace=False)
    order = np.argsort(-(g[qi] @ g.T), axis=1, kind="stable")  # the full exact ranking (no ties here)
    exact = M.retrieval_metrics(g[qi], gl[qi], g, gl, ids[qi], ids)
    top = M.topk_retrieval_metrics(order, gl[qi], gl, ids[qi], ids)
    for k in ("R@1", "R@5", "R@10"):
        assert top[k] == pytest.approx(exact[k])
    assert top["mAP@K"] == pytest.approx(exact["mAP"])  # K = whole gallery -> not truncated
    short = M.topk_retrieval_metrics(order[:, :11], gl[qi], gl, ids[qi], ids)
    assert short["R@10"] == pytest.approx(exact["R@10"])
    assert short["mAP@K"] <= exact["mAP"] + 1e-12
