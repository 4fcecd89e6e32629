"""Exact retrieval metrics (mAP, CMC), Cluster Compactness Score and centroid accuracy.

All functions take numpy arrays of L2-normalised float32 embeddings and return plain dicts of
Python floats / ints, so results serialise to JSON directly.

Retrieval conventions (used by every protocol in :mod:`jaxforget.eval.protocols`):

* Similarity is the inner product (cosine for normalised embeddings).
* **Exclusion.** When image ids are given, every gallery item whose id equals the query's id is
  removed from that query's ranking (the query's own image never counts, as positive or negative).
* **Labels.** A gallery item is a positive of a query when the labels are equal and the label is
  ``>= 0``. Negative labels (``-1`` for distractors) never match anything, not even each other.
* **Skipped queries.** A query with no positive left in the gallery is skipped: it contributes to
  neither mAP nor CMC and is counted in ``num_skipped``.
* **Tie rule (pessimistic).** When a negative and a positive have exactly the same score, the
  negative is ranked first. Equivalently the full ranking is ``sort by (-score, is_positive)``.
  The order among tied positives does not change any metric. Under this rule the rank of the k-th
  best positive (k = 1, 2, ...) is ``k + #{negatives with score >= its score}``.
* **mAP** is exact and untruncated: ``AP = 1/P * sum_k k / rank_k`` over all ``P`` positives of the
  query in the whole gallery; mAP is the mean AP over evaluated queries.
* **CMC@k (``R@k``)** is the fraction of evaluated queries whose best positive has rank ``<= k``.

Memory stays bounded for large galleries: the score matrix is built for a block of queries at a
time (``max_block_bytes`` caps the block), from gallery chunks, and each query's ranks are derived
from counts, never from a full sort.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
DEFAULT_BLOCK_BYTES = 256 * 2**20
DEFAULT_GALLERY_CHUNK = 65536


def _as_embeddings(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (N, d) of embeddings, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name}: expected floating embeddings, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.all(np.isfinite(a)):
        bad = int(np.count_nonzero(~np.isfinite(a).all(axis=1)))
        raise ValueError(f"{name}: {bad} row(s) contain NaN or inf; check the model's outputs")
    return a


def _as_labels(x: Any, n: int, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},) to match the embeddings, got {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(
            f"{name}: expected integer class labels (map raw identities to ints first), "
            f"got dtype {a.dtype}"
        )
    return a.astype(np.int64)


def _as_ids(x: Any, n: int, name: str) -> np.ndarray | None:
    if x is None:
        return None
    a = np.asarray(x)
    if a.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},) to match the embeddings, got {a.shape}")
    return a


def _group_index(keys: np.ndarray) -> dict[Any, np.ndarray]:
    """Map each distinct key to the sorted indices where it occurs."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    if len(keys) == 0:
        return {}
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    ends = np.r_[starts[1:], len(keys)]
    return {sorted_keys[s].item(): order[s:e] for s, e in zip(starts, ends)}


def positive_ranks(scores: np.ndarray, positive: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """1-based ranks of the positives in one query's ranking, under the pessimistic tie rule.

    Args:
      scores: (G,) similarity of the query to every gallery item.
      positive: (G,) bool, True for the query's positives.
      valid: optional (G,) bool, False for excluded items (e.g. the query's own image).

    Returns:
      (P,) int64 ranks, ascending (best positive first). Empty when there is no positive.
    """
    if valid is None:
        valid = np.ones(scores.shape, bool)
    pos_asc = np.sort(scores[positive & valid])
    neg = scores[~positive & valid]
    return _ranks_from_scores(pos_asc, neg)


def _ranks_from_scores(pos_asc: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Ranks (best first) of positives with ascending scores ``pos_asc`` among negatives ``neg``.

    ``n_ge[j]`` = number of negatives with score >= pos_asc[j]. A negative with score s counts for
    every positive whose score is <= s, i.e. the first ``searchsorted(pos_asc, s, 'right')`` ones.
    """
    p = pos_asc.shape[0]
    if p == 0:
        return np.zeros(0, np.int64)
    neg = neg[neg >= pos_asc[0]]  # only negatives at or above the worst positive matter
    idx = np.searchsorted(pos_asc, neg, side="right")
    hist = np.bincount(idx, minlength=p + 1)
    # n_ge[j] = sum_{i > j} hist[i]
    n_ge = np.cumsum(hist[::-1])[::-1][1:]
    # best positive first: reverse; k-th best positive (k = 1..P) has rank k + n_ge
    n_ge_best_first = n_ge[::-1]
    return np.arange(1, p + 1, dtype=np.int64) + n_ge_best_first.astype(np.int64)


def average_precision(ranks: np.ndarray) -> float:
    """AP from the 1-based ascending ranks of all of a query's positives."""
    if ranks.size == 0:
        raise ValueError("average_precision: a query without positives has no AP (it is skipped)")
    k = np.arange(1, ranks.size + 1, dtype=np.float64)
    return float(np.mean(k / ranks))


def retrieval_metrics(
    query_emb: np.ndarray,
    query_labels: np.ndarray,
    gallery_emb: np.ndarray,
    gallery_labels: np.ndarray,
    query_ids: np.ndarray | None = None,
    gallery_ids: np.ndarray | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    max_block_bytes: int = DEFAULT_BLOCK_BYTES,
    gallery_chunk: int = DEFAULT_GALLERY_CHUNK,
    return_per_query: bool = False,
) -> dict[str, Any]:
    """Exact mAP and CMC@k of queries against a gallery (see the module docstring for the rules).

    Args:
      query_emb: (Q, d) float embeddings (L2-normalised for cosine similarity).
      query_labels: (Q,) integer labels.
      gallery_emb: (G, d) float embeddings.
      gallery_labels: (G,) integer labels; negative labels never match.
      query_ids / gallery_ids: optional (Q,) / (G,) image ids (ints or strings); a gallery item with
        the query's id is excluded from that query's ranking. Give both or neither.
      ks: the CMC ranks to report as ``R@k``.
      max_block_bytes: cap on the float32 score block (queries x gallery) held at once.
      gallery_chunk: gallery rows per matrix product.
      return_per_query: also return ``per_query_ap`` (NaN for skipped queries) and
        ``per_query_first_rank`` (0 for skipped queries).

    Returns:
      ``{'mAP', 'R@1', 'R@5', 'R@10', 'num_queries', 'num_skipped'}``: fractions in [0, 1];
      ``num_queries`` counts evaluated queries, ``num_skipped`` those without positives.
    """
    q = _as_embeddings(query_emb, "query_emb")
    g = _as_embeddings(gallery_emb, "gallery_emb")
    if q.shape[1] != g.shape[1]:
        raise ValueError(
            f"query_emb has dimension {q.shape[1]} but gallery_emb has {g.shape[1]}; embed both "
            "with the same model"
        )
    ql = _as_labels(query_labels, q.shape[0], "query_labels")
    gl = _as_labels(gallery_labels, g.shape[0], "gallery_labels")
    if (query_ids is None) != (gallery_ids is None):
        raise ValueError("give both query_ids and gallery_ids (to exclude the query's own image) or neither")
    qid = _as_ids(query_ids, q.shape[0], "query_ids")
    gid = _as_ids(gallery_ids, g.shape[0], "gallery_ids")
    ks = tuple(int(k) for k in ks)
    if any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive ranks, got {ks}")

    nq, ng = q.shape[0], g.shape[0]
    by_label = _group_index(gl)
    by_id = _group_index(gid) if gid is not None else {}

    ap = np.full(nq, np.nan)
    first = np.zeros(nq, np.int64)
    block_q = max(1, min(nq, max_block_bytes // max(1, 4 * ng)))
    scores = np.empty((block_q, ng), np.float32)
    empty = np.zeros(0, np.int64)
    for q0 in range(0, nq, block_q):
        q1 = min(nq, q0 + block_q)
        block = scores[: q1 - q0]
        for g0 in range(0, ng, gallery_chunk):
            g1 = min(ng, g0 + gallery_chunk)
            np.matmul(q[q0:q1], g[g0:g1].T, out=block[:, g0:g1])
        for r in range(q1 - q0):
            i = q0 + r
            row = block[r]
            lab = int(ql[i])
            pos_idx = by_label.get(lab, empty) if lab >= 0 else empty
            excl = by_id.get(qid[i].item(), empty) if qid is not None else empty
            if excl.size and pos_idx.size:
                pos_idx = np.setdiff1d(pos_idx, excl, assume_unique=True)
            if pos_idx.size == 0:
                continue
            pos_asc = np.sort(row[pos_idx])
            row[pos_idx] = -np.inf  # the row is used once; mark non-negatives in place
            if excl.size:
                row[excl] = -np.inf
            ranks = _ranks_from_scores(pos_asc, row)
            ap[i] = average_precision(ranks)
            first[i] = ranks[0]

    evaluated = ~np.isnan(ap)
    n_eval = int(evaluated.sum())
    out: dict[str, Any] = {
        "mAP": float(ap[evaluated].mean()) if n_eval else float("nan"),
    }
    for k in ks:
        out[f"R@{k}"] = float(np.mean(first[evaluated] <= k)) if n_eval else float("nan")
    out["num_queries"] = n_eval
    out["num_skipped"] = int(nq - n_eval)
    if return_per_query:
        out["per_query_ap"] = ap
        out["per_query_first_rank"] = first
    return out


def compactness_score(emb: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Cluster Compactness Score, paper Eq. 10.

    ``CS(S) = 1/|S| * sum_{c in S} mean_{i < j in E_c} z_i . z_j``: the mean pairwise cosine within
    each identity, averaged over identities. Identities with fewer than two embeddings have no pair
    and are skipped (counted in ``num_identities_skipped``); negative labels are ignored.

    The within-identity mean uses ``sum_{i<j} z_i.z_j = (||sum_i z_i||^2 - sum_i ||z_i||^2) / 2``,
    which is exact for any embeddings (normalised or not).

    Returns:
      ``{'CS', 'num_identities', 'num_identities_skipped'}`` (``CS`` is NaN when no identity has two
      embeddings).
    """
    z = _as_embeddings(emb, "emb").astype(np.float64)
    y = _as_labels(labels, z.shape[0], "labels")
    per_id = []
    skipped = 0
    for lab, idx in _group_index(y).items():
        if lab < 0:
            continue
        n = idx.size
        if n < 2:
            skipped += 1
            continue
        e = z[idx]
        s = e.sum(axis=0)
        pair_sum = (s @ s - np.einsum("ij,ij->", e, e)) / 2.0
        per_id.append(pair_sum / (n * (n - 1) / 2.0))
    return {
        "CS": float(np.mean(per_id)) if per_id else float("nan"),
        "num_identities": len(per_id),
        "num_identities_skipped": skipped,
    }


def identity_centroids(emb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-identity mean embedding, L2-renormalised. Returns ``(centroid_labels (C,), centroids (C, d))``.

    Negative labels are ignored.
    """
    z = _as_embeddings(emb, "emb")
    y = _as_labels(labels, z.shape[0], "labels")
    groups = [(lab, idx) for lab, idx in _group_index(y).items() if lab >= 0]
    if not groups:
        raise ValueError("identity_centroids: no embedding has a non-negative label")
    labs = np.array([lab for lab, _ in groups], np.int64)
    cents = np.stack([z[idx].astype(np.float64).mean(axis=0) for _, idx in groups])
    norms = np.linalg.norm(cents, axis=1, keepdims=True)
    cents = cents / np.maximum(norms, 1e-12)
    return labs, cents.astype(np.float32)


def centroid_accuracy(
    train_emb: np.ndarray,
    train_labels: np.ndarray,
    test_emb: np.ndarray,
    test_labels: np.ndarray,
    restrict_to: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Centroid-level accuracy: a test image is correct when its nearest identity centroid is its own.

    Centroids are the L2-renormalised mean train embeddings of every identity in ``train_labels``
    (all of them compete). Ties follow the pessimistic rule: the image is correct only when its own
    centroid's cosine is strictly greater than every other centroid's. Test images whose identity
    has no centroid are skipped and counted. ``restrict_to`` limits the *scored test images* to those
    identities (e.g. forget identities) while centroids of all train identities still compete.

    Returns:
      ``{'acc', 'num_images', 'num_skipped'}``.
    """
    labs, cents = identity_centroids(train_emb, train_labels)
    t = _as_embeddings(test_emb, "test_emb")
    if t.shape[1] != cents.shape[1]:
        raise ValueError(f"test_emb has dimension {t.shape[1]} but train_emb has {cents.shape[1]}")
    ty = _as_labels(test_labels, t.shape[0], "test_labels")
    keep = np.ones(ty.shape, bool) if restrict_to is None else np.isin(ty, np.asarray(restrict_to))
    col = {int(l): c for c, l in enumerate(labs)}
    own = np.array([col.get(int(l), -1) for l in ty], np.int64)
    has = keep & (own >= 0)
    skipped = int(np.count_nonzero(keep & (own < 0)))
    idx = np.flatnonzero(has)
    if idx.size == 0:
        return {"acc": float("nan"), "num_images": 0, "num_skipped": skipped}
    correct = 0
    for s in range(0, idx.size, 8192):
        part = idx[s : s + 8192]
        sims = t[part] @ cents.T
        own_s = sims[np.arange(part.size), own[part]]
        sims[np.arange(part.size), own[part]] = -np.inf
        correct += int(np.count_nonzero(own_s > sims.max(axis=1)))
    return {"acc": correct / idx.size, "num_images": int(idx.size), "num_skipped": skipped}


def topk_retrieval_metrics(
    topk_ids: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    query_ids: np.ndarray | None = None,
    gallery_ids: np.ndarray | None = None,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, Any]:
    """Metrics from truncated top-K lists (for approximate indexes on galleries of millions).

    ``topk_ids`` (Q, K) holds gallery row indices best first (``-1`` = empty slot), e.g. from
    :func:`jaxforget.eval.index.search`. The query's own image (by id) is dropped from its list.
    ``mAP@K`` divides by the query's total number of positives in the whole gallery, so positives
    beyond the list count as missed: it is a lower bound of the exact mAP when the list is the exact
    top-K. ``R@k`` equals the exact CMC@k when the list is exact and long enough (K >= k + number of
    excluded own images); ties keep the index's order, not the pessimistic rule. Queries without
    positives in the gallery are skipped and counted, as in :func:`retrieval_metrics`.
    """
    ids = np.asarray(topk_ids)
    if ids.ndim != 2:
        raise ValueError(f"topk_ids: expected (Q, K) gallery indices, got shape {ids.shape}")
    nq = ids.shape[0]
    ql = _as_labels(query_labels, nq, "query_labels")
    gl = np.asarray(gallery_labels).astype(np.int64)
    if (query_ids is None) != (gallery_ids is None):
        raise ValueError("give both query_ids and gallery_ids or neither")
    qid = _as_ids(query_ids, nq, "query_ids")
    gid = None if gallery_ids is None else np.asarray(gallery_ids)
    by_label = _group_index(gl)
    by_id = _group_index(gid) if gid is not None else {}
    empty = np.zeros(0, np.int64)
    aps, firsts = [], []
    skipped = 0
    for i in range(nq):
        lab = int(ql[i])
        pos_idx = by_label.get(lab, empty) if lab >= 0 else empty
        excl = by_id.get(qid[i].item(), empty) if qid is not None else empty
        if excl.size and pos_idx.size:
            pos_idx = np.setdiff1d(pos_idx, excl, assume_unique=True)
        if pos_idx.size == 0:
            skipped += 1
            continue
        row = ids[i][ids[i] >= 0]
        if excl.size:
            row = row[~np.isin(row, excl)]
        hit = gl[row] == lab
        ranks = np.flatnonzero(hit) + 1
        if ranks.size:
            aps.append(float(np.sum(np.arange(1, ranks.size + 1) / ranks)) / pos_idx.size)
            firsts.append(int(ranks[0]))
        else:
            aps.append(0.0)
            firsts.append(np.iinfo(np.int64).max)
    n_eval = len(aps)
    out: dict[str, Any] = {"mAP@K": float(np.mean(aps)) if n_eval else float("nan")}
    f = np.asarray(firsts, np.int64)
    for k in ks:
        out[f"R@{int(k)}"] = float(np.mean(f <= int(k))) if n_eval else float("nan")
    out["K"] = int(ids.shape[1])
    out["num_queries"] = n_eval
    out["num_skipped"] = skipped
    return out
