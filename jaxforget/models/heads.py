"""Margin-based classification heads (CosFace, ArcFace) over L2-normalised embeddings.

With ``z`` the L2-normalised embedding, ``W_c`` the L2-normalised row of class ``c`` and
``cos_c = <z, W_c>``, the logits are ``s * cos_c`` for every class except the target ``y``, whose
logit is ``s * (cos_y - m)`` (CosFace, arcface_torch's ``margin_list=(1.0, 0.0, m)``) or
``s * cos(theta_y + m)`` (ArcFace, ``margin_list=(1.0, m, 0.0)``). ArcFace follows arcface_torch's
non-easy-margin rule: where ``theta_y + m`` would pass pi, the target logit becomes
``s * (cos_y - m * sin(m))`` so it stays monotone in ``theta_y``.

The pure functions take row-normalised or raw class weights (they normalise both sides) and are
safe to jit; the :class:`CosFaceHead` module owns the weight matrix ``weight`` of shape
``(num_classes, d)`` (one row per class, as in PyTorch).
"""

from __future__ import annotations

import math
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

MarginKind = Literal["cosface", "arcface"]


def _l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))


def cosine_logits(z: jax.Array, weights: jax.Array) -> jax.Array:
    """``cos(z_i, W_c)`` for embeddings ``(B, d)`` and class weights ``(C, d)``; returns ``(B, C)``."""
    if z.ndim != 2 or weights.ndim != 2 or z.shape[-1] != weights.shape[-1]:
        raise ValueError(
            f"cosine_logits needs embeddings (B, d) and class weights (C, d) with the same d; got "
            f"{tuple(z.shape)} and {tuple(weights.shape)}"
        )
    return _l2_normalize(z) @ _l2_normalize(weights).T


def margin_logits(
    z: jax.Array,
    weights: jax.Array,
    labels: jax.Array | None,
    s: float = 64.0,
    m: float = 0.4,
    kind: MarginKind = "cosface",
) -> jax.Array:
    """Scaled margin logits ``(B, C)``; ``labels=None`` (or a label < 0) applies no margin to that row."""
    cos = cosine_logits(z, weights)
    if labels is None:
        return s * cos
    labels = jnp.asarray(labels, jnp.int32)
    onehot = jax.nn.one_hot(labels, cos.shape[-1], dtype=bool)  # all False for labels < 0
    if kind == "cosface":
        target = cos - m
    elif kind == "arcface":
        c = jnp.clip(cos, -1.0, 1.0)
        sin = jnp.sqrt(jnp.clip(1.0 - c * c, 1e-12, 1.0))
        shifted = c * math.cos(m) - sin * math.sin(m)  # cos(theta + m)
        # theta + m <= pi  <=>  cos(theta) >= cos(pi - m)
        target = jnp.where(c > math.cos(math.pi - m), shifted, c - math.sin(math.pi - m) * m)
    else:
        raise ValueError(f"margin kind {kind!r} is not supported; use 'cosface' or 'arcface'")
    return s * jnp.where(onehot, target, cos)


def margin_loss(
    z: jax.Array,
    weights: jax.Array,
    labels: jax.Array,
    s: float = 64.0,
    m: float = 0.4,
    kind: MarginKind = "cosface",
    mask: jax.Array | None = None,
) -> jax.Array:
    """Mean softmax cross-entropy of :func:`margin_logits` (rows with ``mask=False`` are ignored)."""
    logits = margin_logits(z, weights, labels, s, m, kind)
    labels = jnp.asarray(labels, jnp.int32)
    per_example = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), labels[:, None], axis=-1)[:, 0]
    if mask is None:
        return jnp.mean(per_example)
    w = jnp.asarray(mask, jnp.float32)
    return jnp.sum(per_example * w) / jnp.maximum(jnp.sum(w), 1.0)


class CosFaceHead(nn.Module):
    """Class-weight matrix ``weight (num_classes, d)`` giving margin logits for embeddings ``(B, d)``.

    ``head.apply(variables, z, labels)`` returns the margin logits; ``labels=None`` gives plain scaled
    cosines (no margin), e.g. for prediction. The loss is
    ``margin_loss(z, variables['params']['weight'], labels, head.s, head.m, head.margin)``.
    """

    num_classes: int
    s: float = 64.0
    m: float = 0.4
    margin: MarginKind = "cosface"

    @nn.compact
    def __call__(self, z: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        weight = self.param("weight", nn.initializers.normal(0.01), (self.num_classes, z.shape[-1]), jnp.float32)
        return margin_logits(z, weight, labels, self.s, self.m, self.margin)
