"""1:1 verification: k-fold accuracy with the threshold chosen on the other folds, TAR at FAR.

Pairs are scored by cosine similarity of L2-normalised embeddings; a pair is predicted "same"
when its score is strictly greater than the threshold.

* ``kfold_accuracy``: the pairs are cut into ``n_folds`` contiguous folds (the first ``n % k`` folds
  get one extra pair, as InsightFace's unshuffled KFold) or into the folds given explicitly (CFP's
  ``Split/FP/01..10``). For each fold, the threshold maximising accuracy on the *other* folds is
  applied to it. Candidate thresholds are midpoints between consecutive distinct training scores
  plus one below the minimum and one above the maximum; ties in training accuracy go to the
  lowest threshold. Reported: mean and std of the fold accuracies, mean threshold.
* ``tar_at_far``: the threshold is the ``floor(far * n_neg) + 1``-th largest impostor score, so at
  most ``far * n_neg`` impostor pairs score strictly above it (pessimistic at ties). When
  ``far * n_neg < 1`` the FAR cannot be resolved; the threshold is then the largest impostor score
  (zero false accepts) and ``far_resolved`` is False.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _check_pairs(scores: Any, issame: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, np.float64)
    y = np.asarray(issame)
    if s.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"scores and issame must be 1-D of equal length, got {s.shape} and {y.shape}")
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise ValueError("issame must be booleans (or 0/1)")
        y = y.astype(bool)
    if not np.isfinite(s).all():
        raise ValueError("pair scores contain NaN or inf; check the embeddings")
    return s, y


def pair_scores(emb: np.ndarray) -> np.ndarray:
    """Cosine scores of consecutive pairs ``(emb[0], emb[1]), (emb[2], emb[3]), ...`` (``.bin`` layout)."""
    e = np.asarray(emb, np.float32)
    if e.ndim != 2 or e.shape[0] % 2:
        raise ValueError(f"pair embeddings must be (2N, d) with pairs on consecutive rows, got {e.shape}")
    return np.einsum("nd,nd->n", e[0::2], e[1::2]).astype(np.float64)


def best_threshold(scores: np.ndarray, issame: np.ndarray) -> tuple[float, float]:
    """Threshold maximising accuracy of ``score > t`` on these pairs; returns ``(threshold, accuracy)``."""
    s, y = _check_pairs(scores, issame)
    if s.size == 0:
        raise ValueError("best_threshold: no pairs")
    u = np.unique(s)
    cands = np.concatenate([[u[0] - 1.0], (u[:-1] + u[1:]) / 2.0, [u[-1] + 1.0]])
    pos = np.sort(s[y])
    neg = np.sort(s[~y])
    # predicted same iff s > t: true positives = #pos > t, true negatives = #neg <= t
    tp = pos.size - np.searchsorted(pos, cands, side="right")
    tn = np.searchsorted(neg, cands, side="right")
    acc = (tp + tn) / s.size
    j = int(np.argmax(acc))
    return float(cands[j]), float(acc[j])


def kfold_accuracy(
    scores: np.ndarray, issame: np.ndarray, n_folds: int = 10, folds: np.ndarray | None = None
) -> dict[str, Any]:
    """k-fold verification accuracy (see the module docstring). ``folds``: optional (N,) fold ids."""
    s, y = _check_pairs(scores, issame)
    if folds is None:
        if not 2 <= n_folds <= s.size:
            raise ValueError(f"n_folds={n_folds} needs 2 <= n_folds <= number of pairs ({s.size})")
        sizes = np.full(n_folds, s.size // n_folds)
        sizes[: s.size % n_folds] += 1
        folds = np.repeat(np.arange(n_folds), sizes)
    else:
        folds = np.asarray(folds)
        if folds.shape != s.shape:
            raise ValueError(f"folds must have one id per pair, shape {s.shape}, got {folds.shape}")
    accs, thrs = [], []
    for f in np.unique(folds):
        test = folds == f
        if test.all():
            raise ValueError("kfold_accuracy: a single fold leaves no training pairs")
        t, _ = best_threshold(s[~test], y[~test])
        accs.append(float(np.mean((s[test] > t) == y[test])))
        thrs.append(t)
    return {
        "acc": float(np.mean(accs)),
        "acc_std": float(np.std(accs)),
        "threshold": float(np.mean(thrs)),
        "num_folds": len(accs),
    }


def tar_at_far(scores: np.ndarray, issame: np.ndarray, far: float) -> dict[str, Any]:
    """True accept rate at a false accept rate (see the module docstring)."""
    s, y = _check_pairs(scores, issame)
    neg = np.sort(s[~y])[::-1]
    pos = s[y]
    if neg.size == 0 or pos.size == 0:
        raise ValueError(f"tar_at_far needs genuine and impostor pairs, got {pos.size} and {neg.size}")
    allowed = int(np.floor(far * neg.size))
    thr = neg[min(allowed, neg.size - 1)]
    return {
        "tar": float(np.mean(pos > thr)),
        "far_actual": float(np.mean(neg > thr)),
        "threshold": float(thr),
        "far_resolved": bool(far * neg.size >= 1),
    }


def verification_metrics(
    scores: np.ndarray,
    issame: np.ndarray,
    n_folds: int = 10,
    folds: np.ndarray | None = None,
    fars: Sequence[float] = (1e-3, 1e-4),
) -> dict[str, Any]:
    """``{'acc', 'acc_std', 'threshold', 'TAR@FAR=1e-03', ..., 'num_pairs'}`` for scored pairs.

    TAR values are NaN when the pairs hold no impostor or no genuine pair (a set of genuine pairs
    only, such as the 10-pair ``lfw_small.bin``, has no false-accept rate).
    """
    s, y = _check_pairs(scores, issame)
    n_folds = min(n_folds, s.size)
    out = kfold_accuracy(s, y, n_folds=n_folds, folds=folds)
    for far in fars:
        if y.all() or not y.any():
            out[f"TAR@FAR={far:.0e}"] = float("nan")
            out[f"FAR={far:.0e}_resolved"] = False
            continue
        r = tar_at_far(s, y, far)
        out[f"TAR@FAR={far:.0e}"] = r["tar"]
        out[f"FAR={far:.0e}_resolved"] = r["far_resolved"]
    out["num_pairs"] = int(s.size)
    out["num_genuine"] = int(y.sum())
    return out


def verify_bin(emb: np.ndarray, issame: np.ndarray, **kwargs: Any) -> dict[str, Any]:
    """Verification on a ``.bin`` set: ``emb`` (2N, d) with each pair on consecutive rows."""
    e = np.asarray(emb)
    y = np.asarray(issame)
    if e.shape[0] != 2 * y.shape[0]:
        raise ValueError(f"{e.shape[0]} embeddings for {y.shape[0]} pairs; a .bin set has 2 images per pair")
    return verification_metrics(pair_scores(e), y, **kwargs)


def verify_pairs(
    emb_a: np.ndarray, emb_b: np.ndarray, issame: np.ndarray, folds: np.ndarray | None = None, **kwargs: Any
) -> dict[str, Any]:
    """Verification of explicit pairs (e.g. CFP ``Split/FP``): row i of ``emb_a`` against row i of ``emb_b``."""
    a = np.asarray(emb_a, np.float32)
    b = np.asarray(emb_b, np.float32)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"emb_a and emb_b must be (N, d) of the same shape, got {a.shape} and {b.shape}")
    return verification_metrics(np.einsum("nd,nd->n", a, b), issame, folds=folds, **kwargs)
