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

import flax.linen as nn
import jax
import jax.numpy as jnp

# The math lives in jaxforget.losses.margin (pure jitted functions); the head module owns weights.
from jaxforget.losses.margin import MarginKind, cosine_logits, margin_logits, margin_loss

__all__ = ["CosFaceHead", "MarginKind", "cosine_logits", "margin_logits", "margin_loss"]


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
