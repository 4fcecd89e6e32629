"""Config mistakes are one-line errors raised before any work (jaxforget/validation.py)."""

import jax
import pytest

from jaxforget import validation
from jaxforget.errors import UserError

from runner_fixtures import tiny_config


def test_unknown_method_is_a_clear_error():
    c = tiny_config()
    c.method.name = "nope"
    with pytest.raises(UserError, match="method.name"):
        validation.validate(c)


def test_config_mistakes_are_caught_before_any_work(tmp_path):
    c = tiny_config()
    c.method.name = "ga"  # the file's defaults (lr, steps) are hard dispersion's
    with pytest.raises(UserError, match=r"hyper-parameters of 'hard_disp'.*configs/ga.py"):
        validation.validate(c)
    c = tiny_config()
    c.method.batch_size = 10  # not P x K with K = 4
    with pytest.raises(UserError, match=r"method.batch_size=10 must be a multiple of "
                                        r"method.images_per_identity=4"):
        validation.validate(c)
    c = tiny_config()
    c.pretrain.batch_size = 4 * (jax.device_count() + 1) + 2
    with pytest.raises(UserError, match=r"pretrain.batch_size"):
        validation.validate(c)
    c = tiny_config()
    c.data.name = "celebA"
    with pytest.raises(UserError, match=r"data.name='celebA' is not a known data set"):
        validation.validate(c)
    c = tiny_config()
    c.data.distractors = str(tmp_path / "absent")
    with pytest.raises(UserError, match=r"data.distractors=.* is not a folder of images"):
        validation.validate(c)
    validation.validate(tiny_config())  # the tiny config itself is fine


def test_require_path_names_the_field_and_the_data_set(tmp_path):
    with pytest.raises(UserError, match=r"config field data.root is empty.*CelebA"):
        validation.require_path("", "data.root", "celeba")
    with pytest.raises(UserError, match=r"data.root=.*does not exist.*ORL"):
        validation.require_path(str(tmp_path / "absent"), "data.root", "orl")
    assert validation.require_path(str(tmp_path), "data.root", "orl") == str(tmp_path)
