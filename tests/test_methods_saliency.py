"""SalUn's ranking (``jaxforget.methods.saliency``): which weights may change."""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest

from jaxforget import methods as M
from tests.methods_fixtures import FORGET, make_part, rng_key, setup


def test_salun_with_trainable_ranks_only_the_trainable_leaves():
    """salun_fraction is a fraction of the trainable elements; frozen leaves are never kept."""
    _, variables, head, ctx = setup()
    method = M.get_method("hard_disp")
    cfg = {"trainable": "Dense_0/", "salun_fraction": 0.5}
    state = M.init_state(method, cfg, variables, head, rng_key(0))
    mask = M.compute_saliency_mask(method, ctx, state, [make_part(0, FORGET)], 0.5,
                                   loss="dispersion", method_cfg=cfg)["params"]
    n_dense = sum(int(np.size(x)) for x in jax.tree.leaves(variables["params"]["Dense_0"]))
    n_kept = sum(int(np.sum(m)) for m in jax.tree.leaves(mask["Dense_0"]))
    assert n_kept == int(np.ceil(0.5 * n_dense))
    for frozen in ("Conv_0", "BatchNorm_0"):
        assert not any(bool(np.any(m)) for m in jax.tree.leaves(mask[frozen]))


@pytest.mark.parametrize("name", ["hard_disp", "ga"])
def test_default_ranking_loss_is_the_methods_own(name):
    """Without ``loss`` the ranking uses ``method.salun_loss`` (what the trainer relies on), and
    the two losses rank differently (so the choice is visible)."""
    _, variables, head, ctx = setup()
    method = M.get_method(name)
    state = M.init_state(method, {"salun_fraction": 0.3}, variables, head, rng_key(0))
    batches = [make_part(0, FORGET)]
    default = M.compute_saliency_mask(method, ctx, state, batches, 0.3)
    own = M.compute_saliency_mask(method, ctx, state, batches, 0.3, loss=method.salun_loss)
    other = M.compute_saliency_mask(method, ctx, state, batches, 0.3,
                                    loss="cosface" if method.salun_loss != "cosface"
                                    else "dispersion")
    chex.assert_trees_all_equal(default, own)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(default),
                                                        jax.tree.leaves(other)))
