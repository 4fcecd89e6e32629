"""The train state (``jaxforget.methods.state``): ``init_state`` from the original model."""

from __future__ import annotations

import chex
import jax
import pytest

from jaxforget import methods as M
from tests.methods_fixtures import rng_key, setup


@pytest.mark.parametrize("pattern, message", [("Dense_0/(", "not a valid regular expression"),
                                              ("linear1/", "matches no backbone parameter")])
def test_bad_trainable_pattern_names_the_field(pattern, message):
    _, variables, head, _ = setup()
    with pytest.raises(ValueError, match=message) as err:
        M.init_state(M.get_method("hard_disp"), {"trainable": pattern}, variables, head, rng_key(0))
    assert "method.trainable" in str(err.value)


def test_init_state_copies_the_model_and_keeps_the_original_only_when_needed():
    _, variables, head, _ = setup()
    bs = M.init_state(M.get_method("bs"), {}, variables, head, rng_key(0))
    assert bs.frozen is not None
    chex.assert_trees_all_equal(bs.frozen["params"], variables["params"])
    disp = M.init_state(M.get_method("disp"), {}, variables, None, rng_key(0))
    assert disp.frozen is None and disp.head is None
    assert M.init_state(M.get_method("disp"), {"retain_weight": 1.0, "retain_loss": "distill"},
                        variables, None, rng_key(0)).frozen is not None
    leaf = jax.tree.leaves(variables["params"])[0]
    assert jax.tree.leaves(disp.params)[0] is not leaf  # a copy: the state can be donated
    chex.assert_trees_all_equal(M.variables_of(disp), variables)
    with pytest.raises(ValueError, match="head_weights is None"):
        M.init_state(M.get_method("ga"), {}, variables, None, rng_key(0))
