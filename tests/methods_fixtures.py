"""A tiny flax model and batches shared by the method tests (``tests/test_methods*.py``).

A small conv net with BatchNorm stands in for the real backbones (same ``apply`` contract:
``train=True`` with ``mutable=['batch_stats']`` returns ``(emb, {'batch_stats': ...})``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxforget import methods as M

H = W = 8
D = 8
C = 6
FORGET = [0, 0, 1, 1, 2, 2, 3, 3]
RETAIN = [4, 4, 5, 5]


class TinyNet(nn.Module):
    """strided conv-BN-relu, global pool, dense: the smallest face-embedder stand-in."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(8, (3, 3), strides=(2, 2))(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(x)
        return nn.Dense(D)(jnp.mean(x, axis=(1, 2)))


def rng_key(seed: int) -> jax.Array:
    """Training-state keys use the 'rbg' PRNG: same semantics, much faster to compile on CPU."""
    return jax.random.key(seed, impl="rbg")


def setup(seed: int = 0):
    """``(net, variables, head, ctx)`` of a fresh TinyNet with a random ``(C, D)`` head."""
    net = TinyNet()
    variables = net.init(jax.random.key(seed), jnp.zeros((1, H, W, 3)), train=False)
    head = jax.random.normal(jax.random.key(seed + 1), (C, D))
    ctx = M.Context(apply_fn=net.apply, pixel_mean=127.5, pixel_std=127.5, num_classes=C)
    return net, variables, head, ctx


def make_part(seed: int, labels) -> dict:
    """A batch part of random uint8 images with ``labels``."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, np.int32)
    img = rng.integers(0, 256, (len(labels), H, W, 3), dtype=np.uint8)
    return {"image": img, "label": labels}


def make_batch(method, cfg, seed=0):
    """The forget / retain parts ``method`` reads under ``cfg``."""
    full = {"forget": make_part(seed, FORGET), "retain": make_part(seed + 100, RETAIN)}
    return {k: full[k] for k in method.data_needs(cfg)}


def bits(tree):
    """The leaves of ``tree`` as uint32 views (bit-exact comparisons)."""
    return [np.asarray(x).view(np.uint32) for x in jax.tree.leaves(tree)]
