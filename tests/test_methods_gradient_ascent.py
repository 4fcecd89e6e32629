"""Gradient Ascent (``jaxforget.methods.gradient_ascent``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxforget import losses
from jaxforget import methods as M
from tests.methods_fixtures import make_batch, rng_key, setup


def test_gradient_ascent_increases_cosface_loss_on_forget_batch():
    net, variables, head, ctx = setup()
    method = M.get_method("ga")
    cfg = {"lr": 0.05, "bn_mode": "frozen", "flip": False, "weight_decay": 0.0}
    state = M.init_state(method, cfg, variables, head, rng_key(0))
    batch = make_batch(method, cfg)

    def cosface(params):
        x = M.normalize_images(jnp.asarray(batch["forget"]["image"]), ctx)
        z = net.apply({"params": params, "batch_stats": state.batch_stats}, x, train=False)
        return float(losses.margin_loss(z, head, batch["forget"]["label"]))

    before = cosface(state.params)
    update = jax.jit(M.make_update_step(method, cfg, ctx))
    values = [before]
    for _ in range(5):
        state, metrics = update(state, batch)
        values.append(cosface(state.params))
    assert values[-1] > before + 1e-3, values
    assert all(b >= a - 1e-5 for a, b in zip(values, values[1:])), values
