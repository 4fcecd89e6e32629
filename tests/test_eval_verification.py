"""1:1 verification: k-fold accuracy with thresholds from the other folds, TAR@FAR."""

import numpy as np
import pytest

from jaxforget.eval import verification as V


def brute_kfold(scores, issame, folds):
    """Reference: try every midpoint threshold on the training folds (lowest on ties)."""
    accs = []
    for f in np.unique(folds):
        tr, te = folds != f, folds == f
        u = np.unique(scores[tr])
        cands = [u[0] - 1.0] + [(a + b) / 2 for a, b in zip(u[:-1], u[1:])] + [u[-1] + 1.0]
        best_t, best_a = None, -1.0
        for t in cands:
            a = np.mean((scores[tr] > t) == issame[tr])
            if a > best_a:
                best_t, best_a = t, a
        accs.append(np.mean((scores[te] > best_t) == issame[te]))
    return float(np.mean(accs))


def test_separable_pairs_are_perfect():
    rng = np.random.default_rng(0)
    issame = rng.random(200) < 0.5
    scores = np.where(issame, rng.uniform(0.5, 1.0, 200), rng.uniform(-0.2, 0.4, 200))
    out = V.verification_metrics(scores, issame)
    assert out["acc"] == 1.0 and out["num_pairs"] == 200 and out["num_folds"] == 10
    assert 0.4 <= out["threshold"] <= 0.5


@pytest.mark.parametrize("seed", [1, 2])
def test_kfold_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    issame = rng.random(123) < 0.5
    scores = np.round(np.where(issame, rng.normal(0.5, 0.25, 123), rng.normal(0.1, 0.25, 123)), 2)  # ties
    out = V.kfold_accuracy(scores, issame, n_folds=10)
    sizes = [13, 13, 13, 12, 12, 12, 12, 12, 12, 12]  # 123 = 3 * 13 + 7 * 12, contiguous folds
    folds = np.repeat(np.arange(10), sizes)
    assert out["acc"] == pytest.approx(brute_kfold(scores, issame, folds))
    given = rng.integers(0, 4, 123)
    assert V.kfold_accuracy(scores, issame, folds=given)["acc"] == pytest.approx(brute_kfold(scores, issame, given))


def test_tar_at_far_hand_case():
    # 2000 impostors at scores 0.000, 0.001, ..., 1.999 (largest 1.999, 1.998, 1.997 ...).
    # FAR 1e-3 allows floor(2) = 2 false accepts: threshold = 3rd largest impostor = 1.997.
    neg = np.arange(2000) / 1000.0
    pos = np.array([2.5, 1.9985, 1.997, 0.3])  # above, above, equal (rejected), below
    scores = np.concatenate([neg, pos])
    issame = np.concatenate([np.zeros(2000, bool), np.ones(4, bool)])
    r = V.tar_at_far(scores, issame, 1e-3)
    assert r["threshold"] == pytest.approx(1.997)
    assert r["tar"] == pytest.approx(2 / 4)
    assert r["far_actual"] == pytest.approx(2 / 2000)
    assert r["far_resolved"]
    r4 = V.tar_at_far(scores, issame, 1e-4)  # 0.2 false accepts allowed: none; unresolved
    assert r4["threshold"] == pytest.approx(1.999) and r4["tar"] == pytest.approx(1 / 4)
    assert not r4["far_resolved"]


def test_bin_layout_and_pairs():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(20, 8))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    same = rng.random(20) < 0.5
    b = np.where(same[:, None], a + 0.05 * rng.normal(size=(20, 8)), rng.normal(size=(20, 8)))
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    inter = np.empty((40, 8), np.float32)
    inter[0::2], inter[1::2] = a, b
    r1 = V.verify_bin(inter, same)
    r2 = V.verify_pairs(a, b, same)
    assert r1["acc"] == r2["acc"] == 1.0
    with pytest.raises(ValueError, match="2 images per pair"):
        V.verify_bin(inter[:-2], same)
