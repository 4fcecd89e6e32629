"""Array operations every layer shares: pixel normalisation and L2 normalisation.

The lowest layer of the package (imports jax only). Each formula lives here once; models, losses,
methods, data pipelines and evaluation call these.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

# Squared-norm floor for ``l2_normalize``: below it the vector is treated as zero.
NORM_EPS = 1e-12


def normalize_images(images: jax.Array, mean: float | Sequence[float] = 127.5,
                     std: float | Sequence[float] = 127.5, dtype=jnp.float32) -> jax.Array:
    """uint8 (or float 0..255) NHWC images to a model's input, ``(x - mean) / std`` as ``dtype``.

    IResNet uses ``mean=127.5, std=127.5``, MobileFaceNet ``127.5, 128``; ``mean`` / ``std`` may be
    per-channel sequences. Jittable: run it on the device, inside the jitted step.
    """
    x = jnp.asarray(images).astype(jnp.float32)
    return ((x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)).astype(dtype)


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = NORM_EPS) -> jax.Array:
    """``x / ||x||`` along ``axis``, NaN-free: a zero vector stays zero (finite gradient)."""
    x = jnp.asarray(x)
    sq = jnp.sum(jnp.square(x.astype(jnp.float32)), axis=axis, keepdims=True)
    return (x * jax.lax.rsqrt(jnp.maximum(sq, eps))).astype(x.dtype)
