"""The method registry and every registered method: names, one jitted run each, no hidden
per-method hyper-parameters."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxforget import methods as M
from tests.methods_fixtures import make_batch, rng_key, setup


def test_unknown_method_lists_known_names():
    with pytest.raises(ValueError, match="hard_disp") as err:
        M.get_method("hard_dispersion_typo")
    assert "unknown method" in str(err.value)


@pytest.mark.parametrize("name", sorted(n for n, m in M.METHODS.items() if not m.closed_form))
def test_every_method_runs_jitted_steps(name):
    """Two donated jitted steps: finite metrics, the backbone and BN statistics move (default
    bn_mode='train'), the head moves only for the methods that train it."""
    method = M.get_method(name)
    _, variables, head, ctx = setup()
    cfg = {"lr": 1e-2, "steps": 10, "lipschitz_draws": 2, "salun_fraction": 0.0}
    if name == "rl":
        cfg["retain_weight"] = 0.5
    state = M.init_state(method, cfg, variables, head, rng_key(1))
    update = jax.jit(M.make_update_step(method, cfg, ctx), donate_argnums=0)
    for step in range(2):
        state, metrics = update(state, make_batch(method, cfg, seed=step))
        for key in ("loss", "grad_norm", "lr"):
            assert key in metrics, (name, sorted(metrics))
        assert all(np.isfinite(float(v)) for v in metrics.values()), (name, metrics)
    assert int(state.step) == 2

    def changed(a, b):
        return any(not np.array_equal(np.asarray(x), np.asarray(y))
                   for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    assert changed(variables["params"], state.params), f"{name}: no parameter changed"
    assert changed(variables["batch_stats"], state.batch_stats), f"{name}: BN stats frozen"
    assert changed(head, state.head) == method.trains_head, name


@pytest.mark.parametrize("name", sorted(M.METHODS))
def test_records_hold_no_hyper_parameters(name):
    """A method's values live in its config: an empty config resolves to the library defaults for
    every method, and the record's SalUn loss follows the one rule (CosFace with a head)."""
    method = M.get_method(name)
    assert M.resolve_hparams({}, method) == M.HParams()
    assert not hasattr(method, "defaults")
    assert method.salun_loss == ("cosface" if method.uses_head else "dispersion")
