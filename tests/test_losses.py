"""Property tests of the losses (chex + hypothesis): dispersion invariants, margin logits, baselines."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxforget import losses as L

DISPERSIONS = {"mean": L.dispersion_loss, "hard": L.hard_dispersion_loss}
# Few examples and one fixed set of shapes: every example reuses one compiled function.
SETTINGS = settings(max_examples=10, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
B, DIM = 10, 6


def _naive(z, labels, margin, valid=None, hard=False):
    """Double loop over anchors and positives, float64, straight from Eq. 5 / 6."""
    z = np.asarray(z, np.float64)
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-6)
    n = len(labels)
    valid = np.ones(n, bool) if valid is None else np.asarray(valid)
    per_anchor = []
    for i in range(n):
        if not valid[i]:
            continue
        cos = [float(z[i] @ z[p]) for p in range(n)
               if p != i and valid[p] and labels[p] == labels[i]]
        if not cos:
            continue
        if hard:
            per_anchor.append(max(max(cos), margin))
        else:
            per_anchor.append(sum(max(c, margin) for c in cos) / len(cos))
    return sum(per_anchor) / len(per_anchor) if per_anchor else 0.0


def _batch(seed, n=B, d=DIM, num_ids=4):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d)).astype(np.float32)
    labels = rng.integers(0, num_ids, n).astype(np.int32)
    return z, labels


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), margin=st.floats(-0.5, 0.5),
       with_valid=st.booleans(), kind=st.sampled_from(["mean", "hard"]))
def test_matches_naive_double_loop(seed, margin, with_valid, kind):
    z, labels = _batch(seed)
    valid = np.random.default_rng(seed + 1).random(B) > 0.2 if with_valid else None
    got = float(DISPERSIONS[kind](z, labels, margin, valid))
    want = _naive(z, labels, margin, valid, hard=kind == "hard")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(["mean", "hard"]))
def test_permutation_invariant(seed, kind):
    z, labels = _batch(seed)
    perm = np.random.default_rng(seed).permutation(B)
    fn = DISPERSIONS[kind]
    chex.assert_trees_all_close(fn(z, labels, 0.1), fn(z[perm], labels[perm], 0.1),
                                rtol=1e-5, atol=1e-6)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(["mean", "hard"]),
       log_scale=st.lists(st.floats(-3, 3), min_size=B, max_size=B))
def test_positive_rescaling_invariant(seed, kind, log_scale):
    z, labels = _batch(seed)
    scale = np.exp(np.asarray(log_scale, np.float32))[:, None]
    fn = DISPERSIONS[kind]
    chex.assert_trees_all_close(fn(z, labels, 0.0), fn(z * scale, labels, 0.0),
                                rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["mean", "hard"])
@pytest.mark.parametrize("n", [1, 5])
def test_zero_with_zero_grad_without_positives(kind, n):
    fn = DISPERSIONS[kind]
    z = jax.random.normal(jax.random.key(n), (n, DIM))
    labels = jnp.arange(n, dtype=jnp.int32)  # all distinct: no anchor has a positive
    loss, grad = jax.value_and_grad(fn)(z, labels, 0.0)
    assert float(loss) == 0.0
    chex.assert_trees_all_equal(grad, jnp.zeros_like(z))
    # The same when the only positives are padding.
    labels = jnp.zeros((n,), jnp.int32)
    valid = jnp.arange(n) == 0
    loss, grad = jax.value_and_grad(fn)(z, labels, 0.0, valid)
    assert float(loss) == 0.0
    chex.assert_trees_all_equal(grad, jnp.zeros_like(z))


@pytest.mark.parametrize("kind", ["mean", "hard"])
def test_finite_when_embeddings_coincide(kind):
    fn = DISPERSIONS[kind]
    z = jnp.ones((6, DIM))
    labels = jnp.array([0, 0, 0, 1, 1, 2], jnp.int32)
    loss, grad = jax.value_and_grad(fn)(z, labels, 0.0)
    np.testing.assert_allclose(float(loss), 1.0, rtol=1e-6)
    chex.assert_tree_all_finite(grad)
    # Zero vectors too (normalisation at zero).
    loss, grad = jax.value_and_grad(fn)(jnp.zeros((4, DIM)), labels[:4], 0.0)
    chex.assert_tree_all_finite((loss, grad))


@pytest.mark.parametrize("kind", ["mean", "hard"])
def test_pair_below_margin_has_no_gradient(kind):
    fn = DISPERSIONS[kind]
    # Pair (0, 1) has cosine 0.6 > margin 0.3, pair (2, 3) has cosine -0.8 < margin.
    z = jnp.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0], [0.0, 0.6, -0.8]])
    labels = jnp.array([0, 0, 1, 1], jnp.int32)
    grad = jax.grad(fn)(z, labels, 0.3)
    chex.assert_trees_all_equal(grad[2:], jnp.zeros((2, 3)))
    assert float(jnp.abs(grad[:2]).sum()) > 0


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), margin=st.floats(-0.5, 0.5))
def test_hard_at_least_mean(seed, margin):
    z, labels = _batch(seed)
    hard = float(L.hard_dispersion_loss(z, labels, margin))
    mean = float(L.dispersion_loss(z, labels, margin))
    assert hard >= mean - 1e-6


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), margin=st.floats(-0.5, 0.5))
def test_hard_equals_mean_with_one_positive_each(seed, margin):
    z, _ = _batch(seed)
    labels = np.repeat(np.arange(B // 2), 2).astype(np.int32)
    labels = labels[np.random.default_rng(seed).permutation(B)]
    chex.assert_trees_all_close(L.hard_dispersion_loss(z, labels, margin),
                                L.dispersion_loss(z, labels, margin), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["mean", "hard"])
def test_samples_without_positives_get_zero_gradient(kind):
    z, _ = _batch(3)
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 4, 5, 6], np.int32)  # indices 5..9 have no positive
    grad = np.asarray(jax.grad(DISPERSIONS[kind])(z, labels, -1.0))
    assert np.all(grad[5:] == 0.0)
    assert np.all(np.abs(grad[:5]).sum(axis=1) > 0)


def test_one_trace_per_input_shape():
    rng = np.random.default_rng(0)
    shape = (13, 7)  # a shape no other test uses
    for fn in DISPERSIONS.values():
        before = fn._cache_size()
        for i in range(4):
            z = rng.normal(size=shape).astype(np.float32)
            labels = rng.integers(0, 3, shape[0]).astype(np.int32)
            fn(z, labels, 0.1 * i)  # new values and margins: no retrace
        assert fn._cache_size() == before + 1
        fn(rng.normal(size=(14, 7)).astype(np.float32), np.zeros(14, np.int32), 0.0)
        assert fn._cache_size() == before + 2


def test_multiview_identity_positives_equal_flat_dispersion():
    z, labels = _batch(5, n=6)
    views = np.stack([z, z[::-1] + 0.5, -z])
    flat = views.reshape(-1, DIM)
    for hard, fn in ((False, L.dispersion_loss), (True, L.hard_dispersion_loss)):
        got = L.multiview_dispersion_loss(views, labels, 0.0, positives="identity", hard=hard)
        chex.assert_trees_all_close(got, fn(flat, np.tile(labels, 3), 0.0), rtol=1e-6)
        image_level = L.multiview_dispersion_loss(views, labels, 0.0, positives="image",
                                                  hard=hard)
        chex.assert_trees_all_close(image_level, fn(flat, np.tile(np.arange(6), 3), 0.0),
                                    rtol=1e-6)


def test_multiview_gives_singletons_positives():
    z = jax.random.normal(jax.random.key(0), (2, 3, DIM))
    labels = jnp.array([0, 1, 2], jnp.int32)  # no identity repeats: plain dispersion is 0
    assert float(L.dispersion_loss(z[0], labels)) == 0.0
    grad = jax.grad(L.multiview_dispersion_loss)(z, labels, -1.0)
    assert np.all(np.abs(np.asarray(grad)).sum(-1) > 0)


# ------------------------------------------------------------------------------------------
# Margin losses
# ------------------------------------------------------------------------------------------


def _np_normalize(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("kind", ["cosface", "arcface"])
def test_margin_logits_match_formula(kind):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, DIM)).astype(np.float32)
    w = rng.normal(size=(7, DIM)).astype(np.float32)
    y = rng.integers(0, 7, 5).astype(np.int32)
    s, m = 30.0, 0.35
    cos = _np_normalize(z) @ _np_normalize(w).T
    want = s * cos.copy()
    for i, c in enumerate(y):
        if kind == "cosface":
            want[i, c] = s * (cos[i, c] - m)
        else:
            theta = math.acos(cos[i, c])
            want[i, c] = s * (math.cos(theta + m) if theta + m <= math.pi
                              else cos[i, c] - m * math.sin(m))
    got = L.margin_logits(z, w, y, s, m, kind)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
    logp = want - want.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    ce = -logp[np.arange(5), y].mean()
    np.testing.assert_allclose(float(L.margin_loss(z, w, y, s, m, kind)), ce, rtol=1e-4)


def test_margin_loss_mask_ignores_rows():
    rng = np.random.default_rng(1)
    z, w = rng.normal(size=(4, DIM)), rng.normal(size=(3, DIM))
    y = np.array([0, 1, 2, 0], np.int32)
    mask = np.array([True, True, False, False])
    chex.assert_trees_all_close(L.margin_loss(z, w, y, mask=mask),
                                L.margin_loss(z[:2], w, y[:2]), rtol=1e-6)


def test_gradient_ascent_is_negated_cosface():
    rng = np.random.default_rng(2)
    z, w = rng.normal(size=(4, DIM)), rng.normal(size=(3, DIM))
    y = np.array([0, 1, 2, 0], np.int32)
    chex.assert_trees_all_close(L.gradient_ascent_loss(z, w, y), -L.margin_loss(z, w, y))


def test_random_labels_range_and_exclusion():
    labels = jnp.arange(200, dtype=jnp.int32) % 5
    drawn = np.asarray(L.random_labels(jax.random.key(0), labels, 5))
    assert drawn.min() >= 0 and drawn.max() < 5 and len(set(drawn.tolist())) == 5
    other = np.asarray(L.random_labels(jax.random.key(0), labels, 5, exclude_true=True))
    assert not np.any(other == np.asarray(labels)) and other.max() < 5


def test_nearest_wrong_class_ignores_true_class():
    w = np.eye(4, dtype=np.float32)
    z = np.array([[1.0, 0.5, 0.2, 0.0], [1.0, 0.5, 0.2, 0.0]], np.float32)
    got = np.asarray(L.nearest_wrong_class(z, w, np.array([0, 1], np.int32)))
    np.testing.assert_array_equal(got, [1, 0])


# ------------------------------------------------------------------------------------------
# Lipschitz, contrastive, distillation
# ------------------------------------------------------------------------------------------


def test_lipschitz_loss_matches_reference():
    rng = jax.random.key(3)
    x = jax.random.normal(jax.random.key(4), (3, 2, 2, 3))
    proj = jax.random.normal(jax.random.key(5), (12, 5))
    embed = lambda v: v.reshape(v.shape[0], -1) @ proj  # noqa: E731
    got = float(jax.jit(lambda v, r: L.lipschitz_loss(embed, v, r, 4, 0.2))(x, rng))
    noise = 0.2 * np.asarray(jax.random.normal(rng, (4,) + x.shape))
    zx = _np_normalize(np.asarray(embed(x)))
    ratios = []
    for k in range(4):
        zn = _np_normalize(np.asarray(embed(x + noise[k])))
        ratios.append(np.linalg.norm(zn - zx, axis=1)
                      / np.linalg.norm(noise[k].reshape(3, -1), axis=1))
    np.testing.assert_allclose(got, np.mean(ratios), rtol=1e-4)
    # A constant network: zero loss, finite (zero) gradient through the norms.
    const = lambda u: jnp.ones((u.shape[0], 4)) + 0 * u.sum()  # noqa: E731
    loss, grad = jax.jit(jax.value_and_grad(lambda v: L.lipschitz_loss(const, v, rng, 2, 0.1)))(x)
    assert float(loss) == 0.0
    chex.assert_tree_all_finite(grad)
    # bfloat16 images: the ratio divides by the perturbation the network saw (x + e rounds to
    # bfloat16), not by the drawn noise e.
    # Pixels in [-1, 1] and a small sigma, where the rounding is a large part of the noise.
    xb = jax.random.uniform(jax.random.key(6), x.shape, minval=-1, maxval=1).astype(jnp.bfloat16)
    got = float(L.lipschitz_loss(embed, xb, rng, 4, 0.01))  # eager: same roundings as below
    xb32 = np.asarray(xb, np.float32)
    zx = _np_normalize(np.asarray(embed(xb32)))
    noisy = np.asarray(xb + 0.01 * jax.random.normal(rng, (4,) + x.shape, jnp.bfloat16), np.float32)
    ratios = [np.linalg.norm(_np_normalize(np.asarray(embed(noisy[k]))) - zx, axis=1)
              / np.linalg.norm((noisy[k] - xb32).reshape(3, -1), axis=1) for k in range(4)]
    np.testing.assert_allclose(got, np.mean(ratios), rtol=1e-4)


def _naive_contrastive(zf, yf, zr, yr, t):
    zf, zr = _np_normalize(zf), _np_normalize(zr)
    out = []
    for i in range(len(yf)):
        cands = [(zr[j], yr[j], True) for j in range(len(yr))]
        cands += [(zf[j], yf[j], False) for j in range(len(yf)) if j != i]
        pos = [float(zf[i] @ c) / t for c, y, r in cands if r and y != yf[i]]
        den = [float(zf[i] @ c) / t for c, y, r in cands if (r and y != yf[i]) or y == yf[i]]
        if not pos:
            continue
        lse = np.log(np.sum(np.exp(den)))
        out.append(np.mean([lse - p for p in pos]))
    return np.mean(out) if out else 0.0


def test_contrastive_unlearning_matches_reference():
    rng = np.random.default_rng(6)
    zf, zr = rng.normal(size=(5, DIM)), rng.normal(size=(4, DIM))
    yf = np.array([0, 0, 1, 1, 1], np.int32)
    yr = np.array([2, 3, 3, 1], np.int32)  # one retain sample shares an identity with forget
    got = float(L.contrastive_unlearning_loss(zf, yf, zr, yr, 0.5))
    np.testing.assert_allclose(got, _naive_contrastive(zf, yf, zr, yr, 0.5), rtol=1e-5)
    # Minimising it pushes same-identity forget embeddings apart.
    grad = jax.grad(L.contrastive_unlearning_loss)(jnp.asarray(zf), yf, jnp.asarray(zr), yr, 0.5)
    chex.assert_tree_all_finite(grad)


def test_distillation_zero_at_reference():
    z = np.random.default_rng(7).normal(size=(4, DIM))
    assert abs(float(L.embedding_distillation_loss(z, 3.0 * z))) < 1e-6
    assert float(L.embedding_distillation_loss(z, -z)) == pytest.approx(2.0, rel=1e-5)
