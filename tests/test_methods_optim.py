"""The optimiser (``jaxforget.methods.optim``): schedules, trainable masks, SalUn's mask
transform."""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest

from jaxforget import methods as M
from tests.methods_fixtures import FORGET, bits, make_batch, make_part, rng_key, setup


def test_schedules_follow_config():
    hp = M.resolve_hparams({"lr": 1.0, "schedule": "cosine", "steps": 100, "warmup_steps": 10})
    sched = M.make_schedule(hp)
    assert float(sched(0)) == 0.0
    np.testing.assert_allclose(float(sched(10)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(sched(100)), 0.0, atol=1e-6)
    hp = M.resolve_hparams({"lr": 1.0, "schedule": "step", "steps": 100,
                            "step_boundaries": (0.5,), "step_factor": 0.1})
    sched = M.make_schedule(hp)
    assert float(sched(49)) == 1.0
    np.testing.assert_allclose(float(sched(51)), 0.1, rtol=1e-6)
    # A boundary inside the warm-up applies from its end; the later one still applies.
    hp = M.resolve_hparams({"lr": 1.0, "schedule": "step", "steps": 100, "warmup_steps": 60,
                            "step_boundaries": (0.5, 0.75), "step_factor": 0.1})
    sched = M.make_schedule(hp)
    np.testing.assert_allclose([float(sched(s)) for s in (30, 60, 74, 75, 99)],
                               [0.5, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)
    # Boundaries that round to the same step multiply.
    hp = M.resolve_hparams({"lr": 1.0, "schedule": "step", "steps": 2,
                            "step_boundaries": (0.5, 0.6), "step_factor": 0.1})
    np.testing.assert_allclose(float(M.make_schedule(hp)(1)), 0.01, rtol=1e-6)


def test_salun_masked_elements_bit_identical_after_many_steps():
    """Weight decay + momentum + Adam-free SGD for 30 steps: masked-out weights never move."""
    _, variables, head, ctx = setup()
    method = M.get_method("hard_disp")
    cfg = {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.05, "salun_fraction": 0.3, "steps": 30}
    state = M.init_state(method, cfg, variables, head, rng_key(0))
    mask = M.compute_saliency_mask(method, ctx, state, [make_part(s, FORGET) for s in range(3)],
                                   0.3, loss="dispersion")
    n_kept = sum(int(np.sum(m)) for m in jax.tree.leaves(mask))
    n_all = sum(int(np.size(m)) for m in jax.tree.leaves(mask))
    assert n_kept == int(np.ceil(0.3 * n_all))
    state = M.init_state(method, cfg, variables, head, rng_key(0), saliency_mask=mask)
    # The mask is state, not a compile-time constant: it is an input leaf of the jitted step.
    stored = M.get_saliency_mask(state.opt_state)
    assert jax.tree.structure(stored) == jax.tree.structure(mask)
    update = jax.jit(M.make_update_step(method, cfg, ctx), donate_argnums=0)
    for step in range(30):
        state, metrics = update(state, make_batch(method, cfg, seed=step))
    start = jax.tree.leaves(variables["params"])
    end = jax.tree.leaves(state.params)
    masks = jax.tree.leaves(mask)
    moved_kept = 0
    for a, b, m in zip(start, end, masks):
        a, b, m = np.asarray(a), np.asarray(b), np.asarray(m)
        assert np.array_equal(a[~m].view(np.uint32), b[~m].view(np.uint32))
        moved_kept += int(np.sum(a[m] != b[m]))
    assert moved_kept > 0.5 * n_kept, "the unmasked elements should train"


@pytest.mark.parametrize("name", ["hard_disp", "finetune"])
def test_trainable_pattern_freezes_every_other_leaf_bit_identically(name):
    """method.trainable='Dense_0/': with weight decay, momentum and train-mode BatchNorm, the conv
    and BatchNorm leaves (parameters and running statistics) never move; the dense layer, and the
    head for head-training methods, do."""
    _, variables, head, ctx = setup()
    method = M.get_method(name)
    cfg = {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.05, "bn_mode": "train",
           "trainable": "Dense_0/"}
    state = M.init_state(method, cfg, variables, head, rng_key(0))
    update = jax.jit(M.make_update_step(method, cfg, ctx), donate_argnums=0)
    for step in range(10):
        state, _ = update(state, make_batch(method, cfg, seed=step))
    params = variables["params"]
    for frozen in ("Conv_0", "BatchNorm_0"):
        chex.assert_trees_all_equal(bits(state.params[frozen]), bits(params[frozen]))
    chex.assert_trees_all_equal(state.batch_stats, variables["batch_stats"])
    assert not np.allclose(state.params["Dense_0"]["kernel"], params["Dense_0"]["kernel"])
    assert (not np.allclose(state.head, head)) == method.trains_head


def test_trainable_pattern_leaves_the_trained_leaves_gradient_unchanged():
    """One plain-SGD step: the dense layer moves exactly as it does when everything trains."""
    _, variables, head, ctx = setup()
    method = M.get_method("hard_disp")
    base = {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "bn_mode": "frozen"}
    out = {}
    for pattern in ("", "Dense_0/"):
        cfg = dict(base, trainable=pattern)
        state = M.init_state(method, cfg, variables, head, rng_key(0))
        out[pattern], _ = jax.jit(M.make_update_step(method, cfg, ctx))(
            state, make_batch(method, cfg))
    chex.assert_trees_all_close(out["Dense_0/"].params["Dense_0"], out[""].params["Dense_0"],
                                rtol=1e-6, atol=1e-7)
    assert not np.allclose(out[""].params["Conv_0"]["kernel"],
                           variables["params"]["Conv_0"]["kernel"])


def test_salun_mask_swap_does_not_retrace():
    _, variables, head, ctx = setup()
    method = M.get_method("disp")
    cfg = {"salun_fraction": 0.5}
    state = M.init_state(method, cfg, variables, head, rng_key(0))
    update = jax.jit(M.make_update_step(method, cfg, ctx))
    batch = make_batch(method, cfg)
    update(state, batch)
    flipped = jax.tree.map(lambda m: ~m, M.get_saliency_mask(state.opt_state))
    state2 = state.replace(opt_state=M.set_saliency_mask(state.opt_state, flipped))
    update(state2, batch)
    assert update._cache_size() == 1
