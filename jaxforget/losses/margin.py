"""Margin-based softmax losses (CosFace, ArcFace) over L2-normalised embeddings and class weights.

With ``z`` the L2-normalised embedding, ``w_c`` the L2-normalised row ``c`` of the class-weight
matrix ``W`` (``(C, d)``, one row per identity) and ``cos_c = w_c . z``:

* CosFace: target logit ``s * (cos_y - m)``, other logits ``s * cos_c`` (InsightFace: s=64, m=0.4).
* ArcFace: target logit ``s * cos(theta_y + m)``; where ``theta_y + m`` would pass pi the target
  becomes ``s * (cos_y - m * sin(m))`` (InsightFace's non-easy-margin rule, keeps it monotone).

The loss is the mean softmax cross-entropy of those logits. Both sides are normalised inside (the
normalisation is idempotent), so raw embeddings and raw head weights may be passed. Everything is
jitted (``s`` and ``m`` are traced, ``kind`` is static), so a sweep over
margins does not recompile.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp

from jaxforget.ops import l2_normalize

Array = jax.Array
MarginKind = Literal["cosface", "arcface"]
MARGIN_KINDS = ("cosface", "arcface")


@jax.jit
def cosine_logits(z: Array, weights: Array) -> Array:
    """Margin-free cosines ``(B, C)`` between embeddings ``(B, d)`` and class weights ``(C, d)``."""
    if z.ndim != 2 or weights.ndim != 2 or z.shape[-1] != weights.shape[-1]:
        raise ValueError(
            "jaxforget.losses.cosine_logits: need embeddings (B, d) and class weights (C, d) with "
            f"the same d; got {tuple(z.shape)} and {tuple(weights.shape)}.")
    return l2_normalize(z.astype(jnp.float32)) @ l2_normalize(weights.astype(jnp.float32)).T


@partial(jax.jit, static_argnames=("kind",))
def margin_logits(z: Array, weights: Array, labels: Array | None, s: float = 64.0,
                  m: float = 0.4, kind: MarginKind = "cosface") -> Array:
    """Scaled margin logits ``(B, C)``.

    ``labels=None`` (or a negative label in a row) applies no margin to that row: plain ``s * cos``.
    """
    cos = cosine_logits(z, weights)
    if labels is None:
        return s * cos
    labels = jnp.asarray(labels, jnp.int32)
    target_mask = jax.nn.one_hot(labels, cos.shape[-1], dtype=bool)  # all False for labels < 0
    if kind == "cosface":
        target = cos - m
    elif kind == "arcface":
        c = jnp.clip(cos, -1.0, 1.0)
        # sin(theta) from cos; the floor keeps the sqrt's gradient finite at |cos| = 1.
        sin = jnp.sqrt(jnp.clip(1.0 - c * c, 1e-12, 1.0))
        m_arr = jnp.asarray(m, jnp.float32)
        shifted = c * jnp.cos(m_arr) - sin * jnp.sin(m_arr)
        # theta + m <= pi  <=>  cos(theta) >= cos(pi - m) = -cos(m)
        target = jnp.where(c > -jnp.cos(m_arr), shifted, c - m_arr * jnp.sin(m_arr))
    else:
        raise ValueError(
            f"jaxforget.losses.margin_logits: kind must be one of {MARGIN_KINDS}, got {kind!r}.")
    return s * jnp.where(target_mask, target, cos)


@jax.jit
def softmax_cross_entropy(logits: Array, labels: Array, mask: Array | None = None) -> Array:
    """Mean cross-entropy of integer ``labels``; rows with ``mask=False`` are ignored."""
    labels = jnp.asarray(labels, jnp.int32)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    per_example = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
    if mask is None:
        return jnp.mean(per_example)
    w = jnp.asarray(mask, jnp.float32)
    return jnp.sum(per_example * w) / jnp.maximum(jnp.sum(w), 1.0)


@partial(jax.jit, static_argnames=("kind",))
def margin_loss(z: Array, weights: Array, labels: Array, s: float = 64.0, m: float = 0.4,
                kind: MarginKind = "cosface", mask: Array | None = None) -> Array:
    """Mean CosFace/ArcFace cross-entropy over the valid rows (``mask``) of the batch."""
    if labels is None or jnp.ndim(labels) != 1 or jnp.shape(labels)[0] != z.shape[0]:
        raise ValueError(
            "jaxforget.losses.margin_loss: labels must be (B,) int for embeddings "
            f"{tuple(z.shape)}, got {None if labels is None else jnp.shape(labels)}.")
    return softmax_cross_entropy(margin_logits(z, weights, labels, s, m, kind), labels, mask)


def cosface_loss(z: Array, weights: Array, labels: Array, s: float = 64.0, m: float = 0.4,
                 mask: Array | None = None) -> Array:
    """CosFace loss: ``margin_loss(..., kind='cosface')``."""
    return margin_loss(z, weights, labels, s, m, "cosface", mask)


def arcface_loss(z: Array, weights: Array, labels: Array, s: float = 64.0, m: float = 0.5,
                 mask: Array | None = None) -> Array:
    """ArcFace loss: ``margin_loss(..., kind='arcface')``."""
    return margin_loss(z, weights, labels, s, m, "arcface", mask)
