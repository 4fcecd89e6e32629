"""Synthetic identities: contract, determinism, any size, pixels retrieve poorly, identity is present,
and identities independent of one another (many factors of their own, not a few shared ones)."""

import numpy as np
import pytest

from jaxforget.data import synthetic
from jaxforget.data.synthetic import SyntheticFaces, identity_parameters
from jaxforget.eval.metrics import retrieval_metrics


def leave_one_out_map(features, labels):
    """Leave-one-out retrieval with the library's metric: each item queries all others by cosine
    similarity of its mean-centred features. Returns ``(mAP, rank-1 accuracy, evaluated queries)``."""
    f = np.asarray(features, np.float64).reshape(len(features), -1)
    f = f - f.mean(0, keepdims=True) if f.shape[1] > 1 else f
    f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    ids = np.arange(len(f))
    res = retrieval_metrics(f, labels, f, labels, query_ids=ids, gallery_ids=ids, ks=(1,))
    return res["mAP"], res["R@1"], res["num_queries"]


@pytest.mark.parametrize("size", [(16, 16), (112, 96), (40, 56)])
def test_record_contract_any_size(size):
    src = SyntheticFaces(3, 2, size, seed=0)
    assert len(src) == 6 and src.identities.tolist() == [0, 0, 1, 1, 2, 2]
    rec = src[3]
    assert rec["image"].shape == size + (3,) and rec["image"].dtype == np.uint8
    assert rec["identity"] == 1 and rec["image_id"] == "syn00001_001" and rec["valid"]


def test_deterministic_and_batch_independent():
    a = SyntheticFaces(4, 3, (24, 24), seed=3)
    b = SyntheticFaces(4, 3, (24, 24), seed=3)
    np.testing.assert_array_equal(a.images(), b.images())
    np.testing.assert_array_equal(a[5]["image"], a.render([7, 5, 2])[1])  # same image alone or in a batch
    c = SyntheticFaces(4, 3, (24, 24), seed=4)
    assert not np.array_equal(a.images(), c.images())
    np.testing.assert_array_equal(identity_parameters(3, 2), a.identity_params[2])


def test_images_vary_within_identity():
    src = SyntheticFaces(2, 4, (32, 32), seed=0)
    x = src.images().astype(np.float32)
    within = np.abs(x[0] - x[1]).mean()
    assert within > 10  # pose / lighting / background change the pixels a lot
    assert x.std() > 30


def test_leave_one_out_map_small_cases():
    feats = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float64)
    m, r1, n = leave_one_out_map(feats, np.array([0, 0, 1, 1]))
    assert m == pytest.approx(1.0) and r1 == pytest.approx(1.0) and n == 4
    m, _, _ = leave_one_out_map(feats, np.array([0, 1, 0, 1]))
    assert m < 0.6
    m, _, n = leave_one_out_map(feats, np.arange(4))  # no query has a positive: none evaluated
    assert n == 0 and np.isnan(m)


def test_raw_pixels_retrieve_poorly_but_identity_is_encoded():
    src = SyntheticFaces(40, 6, (24, 24), seed=0)
    x = src.images().astype(np.float32)
    raw_map, _, _ = leave_one_out_map(x, src.identities)
    chance = 5 / (len(src) - 1)
    assert raw_map < 0.15, raw_map  # measured ~0.06 here; chance is ~0.02
    ident_map, _, _ = leave_one_out_map(src.identity_params[src.identities], src.identities)
    assert ident_map > 0.99 and raw_map > chance / 2


def _energy_kept(params, num_removed=10):
    """Mean fraction of each other identity's standardised parameter vector left after removing
    the span of the first ``num_removed`` identities' vectors (1 - num_removed / dims when
    identities are independent and isotropic)."""
    z = (params - params.mean(0)) / params.std(0)
    q, _ = np.linalg.qr(z[:num_removed].T)
    rest = z[num_removed:]
    return float(np.mean(1 - np.linalg.norm(rest @ q, axis=1) ** 2 / np.linalg.norm(rest, axis=1) ** 2))


def test_identities_have_many_independent_factors():
    """What the demo's projection result rests on, in the parameters themselves: removing ten
    identities' directions leaves the others most of theirs, where the shared shape and colour
    fields alone (the generator's first version) leave about two thirds."""
    params = SyntheticFaces(100, 1, (8, 8), seed=0).identity_params
    shape_fields = len(synthetic._ID_FIELDS)
    assert params.shape == (100, shape_fields + synthetic.PATTERN_SIZE)
    kept_all, kept_shape = _energy_kept(params), _energy_kept(params[:, :shape_fields])
    assert kept_all > 0.88, kept_all  # measured 0.92 (1 - 10/129 = 0.92)
    assert kept_shape < 0.7, kept_shape  # measured 0.63
    pattern = params[:, shape_fields:]
    corr = np.corrcoef(pattern)[np.triu_indices(100, 1)]
    assert np.abs(corr).mean() < 0.12  # independent draws: |r| ~ 0.08 for 96 values


def test_pattern_is_mirrored_so_a_flip_keeps_the_identity():
    params = SyntheticFaces(3, 1, (8, 8), seed=1).identity_params[:, len(synthetic._ID_FIELDS):]
    u, v = np.meshgrid(np.linspace(-1, 1, 9), np.linspace(-1, 1, 7))
    left = synthetic._pattern_field(params, u[None], v[None])
    right = synthetic._pattern_field(params, -u[None], v[None])
    np.testing.assert_allclose(left, right)
    assert left.shape == (3, 7, 9, 3) and left.std() > 0.5  # the pattern is there
