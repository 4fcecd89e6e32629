"""Margin heads: CosFace / ArcFace logits, the masked margin loss, the CosFace head module."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxforget.models import CosFaceHead, margin_logits, margin_loss


def _np_normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_cosface_and_arcface_logits_match_formulas():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 8)).astype(np.float32)
    w = rng.normal(size=(5, 8)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 4, 0])
    cos = _np_normalize(z) @ _np_normalize(w).T
    s, m = 30.0, 0.35
    onehot = np.eye(5, dtype=bool)[y]

    got = np.asarray(margin_logits(z, w, y, s, m, "cosface"))
    np.testing.assert_allclose(got, s * np.where(onehot, cos - m, cos), rtol=1e-5, atol=1e-5)

    got = np.asarray(margin_logits(z, w, y, s, 0.5, "arcface"))
    theta = np.arccos(np.clip(cos, -1, 1))
    want = np.where(theta + 0.5 <= np.pi, np.cos(theta + 0.5), cos - np.sin(np.pi - 0.5) * 0.5)
    np.testing.assert_allclose(got, s * np.where(onehot, want, cos), rtol=1e-4, atol=1e-4)

    np.testing.assert_allclose(np.asarray(margin_logits(z, w, None, s, m)), s * cos, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"kind must be one of .*got 'sphere'"):
        margin_logits(z, w, y, s, m, "sphere")
    with pytest.raises(ValueError, match=r"\(6, 8\) and \(5, 7\)"):
        margin_logits(z, w[:, :7], y, s, m)


def test_margin_loss_is_masked_cross_entropy_and_differentiable():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(4, 8)).astype(np.float32)
    w = rng.normal(size=(3, 8)).astype(np.float32)
    y = np.array([0, 2, 1, 2])
    mask = np.array([True, True, False, True])
    logits = np.asarray(margin_logits(z, w, y, 64.0, 0.4), np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    ce = -logp[np.arange(4), y]
    loss = margin_loss
    np.testing.assert_allclose(float(loss(z, w, y, 64.0, 0.4)), ce.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(loss(z, w, y, 64.0, 0.4, mask=mask)), ce[mask].mean(), rtol=1e-5)
    for kind in ("cosface", "arcface"):
        gz, gw = jax.grad(lambda a, b: margin_loss(a, b, y, 64.0, 0.5, kind), argnums=(0, 1))(z, w)
        assert np.all(np.isfinite(gz)) and np.all(np.isfinite(gw)) and np.abs(gz).sum() > 0
    # an embedding that already sits on its class weight gives a finite ArcFace gradient too
    g = jax.grad(lambda a: margin_loss(a, w, np.array([0]), 64.0, 0.5, "arcface"))(w[:1])
    assert np.all(np.isfinite(g))


def test_cosface_head_module():
    head = CosFaceHead(num_classes=7, s=64.0, m=0.4)
    z = jax.random.normal(jax.random.PRNGKey(0), (3, 16))
    labels = jnp.array([1, 6, 0])
    variables = head.init(jax.random.PRNGKey(1), z, labels)
    assert variables["params"]["weight"].shape == (7, 16)
    np.testing.assert_allclose(
        head.apply(variables, z, labels), margin_logits(z, variables["params"]["weight"], labels, 64.0, 0.4), rtol=1e-6
    )
    arc = CosFaceHead(num_classes=7, margin="arcface", m=0.5)
    np.testing.assert_allclose(
        arc.apply(variables, z, labels),
        margin_logits(z, variables["params"]["weight"], labels, 64.0, 0.5, "arcface"),
        rtol=1e-6,
    )
