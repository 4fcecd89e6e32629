"""Hyper-parameters (``jaxforget.methods.hparams``): reading a config, refusing bad values."""

from __future__ import annotations

import pytest

from jaxforget import methods as M


def test_bad_config_value_names_field():
    with pytest.raises(ValueError, match="method.optimizer"):
        M.resolve_hparams({"optimizer": "rmsprop"})
    with pytest.raises(ValueError, match="method.salun_fraction"):
        M.resolve_hparams({"salun_fraction": 1.5})


def test_retain_loss_is_refused_where_the_method_has_its_own_retain_term():
    with pytest.raises(ValueError, match=r"method.retain_loss='distill'.*'contrastive'"):
        M.resolve_hparams({"retain_loss": "distill"}, M.get_method("contrastive"))
    assert M.resolve_hparams({"retain_loss": "distill"},
                             M.get_method("hard_disp")).retain_loss == "distill"


def test_resolving_resolved_hparams_is_the_identity():
    """The trainer resolves what it is given: an HParams goes through unchanged."""
    hp = M.resolve_hparams({"lr": "0.5", "steps": 7.0, "step_boundaries": [0.25], "flip": 0})
    assert (hp.lr, hp.steps, hp.step_boundaries, hp.flip) == (0.5, 7, (0.25,), False)
    assert M.resolve_hparams(hp, M.get_method("hard_disp")) == hp
    with pytest.raises(ValueError, match="method.steps"):
        M.resolve_hparams({"steps": 1.5})
