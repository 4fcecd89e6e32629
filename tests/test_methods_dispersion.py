"""The dispersion methods (``jaxforget.methods.dispersion``): training lowers the forget
positives' cosine; augmented views."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxforget import methods as M
from tests.methods_fixtures import make_batch, rng_key, setup


def test_hard_disp_lowers_forget_positive_cosine():
    _, variables, head, ctx = setup()
    method = M.get_method("hard_disp")
    cfg = {"lr": 0.05, "bn_mode": "frozen", "flip": False}
    state = M.init_state(method, cfg, variables, head, rng_key(0))
    update = jax.jit(M.make_update_step(method, cfg, ctx))
    batch = make_batch(method, cfg)
    _, first = update(state, batch)
    for _ in range(10):
        state, metrics = update(state, batch)
    assert float(metrics["loss"]) < float(first["loss"]), (first, metrics)


def test_augmented_views_respect_flip():
    from jaxforget.methods.dispersion import augment_views

    images = jax.random.randint(jax.random.key(0), (3, 8, 6, 3), 0, 256).astype(jnp.uint8)
    x = np.asarray(images, np.float32)
    # No translation, no jitter: every view is the image, or its mirror when flips are on.
    still = np.asarray(augment_views(jax.random.key(1), images, 8, 0.0, 0.0, flip=False))
    np.testing.assert_array_equal(still, np.broadcast_to(x, still.shape))
    views = np.asarray(augment_views(jax.random.key(1), images, 8, 0.0, 0.0, flip=True))
    mirrored = np.all(views == x[None, :, :, ::-1], axis=(2, 3, 4))
    same = np.all(views == x[None], axis=(2, 3, 4))
    assert np.all(mirrored | same) and mirrored.any() and same.any()
