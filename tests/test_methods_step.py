"""The update step (``jaxforget.methods.step``): batch checks, BatchNorm modes, sharded batches."""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest

from jaxforget import methods as M
from tests.methods_fixtures import FORGET, make_batch, make_part, rng_key, setup


def test_closed_form_method_has_no_update_step():
    with pytest.raises(ValueError, match="closed-form"):
        M.make_update_step(M.get_method("project"), {}, M.Context(apply_fn=None))


def test_missing_batch_key_is_a_clear_error():
    method = M.get_method("contrastive")
    _, variables, head, ctx = setup()
    state = M.init_state(method, {}, variables, head, rng_key(0))
    update = M.make_update_step(method, {}, ctx)
    with pytest.raises(ValueError, match=r"needs batch\['retain'\]"):
        update(state, {"forget": make_part(0, FORGET)})


def test_frozen_bn_mode_keeps_running_statistics():
    """bn_mode='frozen' (the 'train' case is checked for every method above)."""
    _, variables, head, ctx = setup()
    method = M.get_method("disp")
    cfg = {"bn_mode": "frozen", "lr": 1e-2}
    state = M.init_state(method, cfg, variables, head, rng_key(0))
    state, _ = jax.jit(M.make_update_step(method, cfg, ctx))(state, make_batch(method, cfg))
    chex.assert_trees_all_equal(state.batch_stats, variables["batch_stats"])


def test_batch_bn_mode_trains_like_train_mode_and_keeps_running_statistics():
    """bn_mode='batch': the parameters of 'train' mode, the original running statistics."""
    _, variables, head, ctx = setup()
    method = M.get_method("disp")
    out = {}
    for mode in ("train", "batch"):
        cfg = {"bn_mode": mode, "lr": 1e-2, "flip": False}
        state = M.init_state(method, cfg, variables, head, rng_key(0))
        step = jax.jit(M.make_update_step(method, cfg, ctx))
        for _ in range(2):  # the second step would see drifted statistics if they were kept
            state, _ = step(state, make_batch(method, cfg))
        out[mode] = state
    chex.assert_trees_all_close(out["batch"].params, out["train"].params, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_equal(out["batch"].batch_stats, variables["batch_stats"])
    with pytest.raises(AssertionError):
        chex.assert_trees_all_equal(out["train"].batch_stats, variables["batch_stats"])


def test_sharded_batch_update_matches_unsharded():
    from jax.sharding import NamedSharding, PartitionSpec as P

    if len(jax.devices()) < 4:
        pytest.skip("needs 4 (fake) devices from conftest")
    _, variables, head, ctx = setup()
    method = M.get_method("hard_disp")
    cfg = {"lr": 0.05, "flip": False}
    batch = make_batch(method, cfg)
    update = jax.jit(M.make_update_step(method, cfg, ctx))
    state = M.init_state(method, cfg, variables, head, rng_key(0))
    _, ref = update(state, batch)
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
    state = jax.device_put(M.init_state(method, cfg, variables, head, rng_key(0)),
                           NamedSharding(mesh, P()))
    _, out = update(state, sharded)
    np.testing.assert_allclose(float(out["loss"]), float(ref["loss"]), rtol=1e-5, atol=1e-6)
