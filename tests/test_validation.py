"""Config mistakes are one-line errors raised before any work (jaxforget/validation.py)."""

import sys

import jax
import pytest

from jaxforget import validation
from jaxforget.errors import UserError

from jaxforget.models.registry import FAMILIES
from runner_fixtures import load_config, tiny_config


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
    c = tiny_config()
    c.data.distractors = f"celeba:{tmp_path / 'absent'}"
    with pytest.raises(UserError, match=r"data.distractors='celeba:.*absent' is not a folder of "):
        validation.validate(c)
    c = tiny_config()
    c.evals = ("forget_base", "cfp_fp_verification")
    with pytest.raises(UserError, match=r"config field data.cfp_root='' is empty: the protocols in "
                                        r"evals read CFP's frontal images"):
        validation.validate(c)
    c.data.cfp_root = str(tmp_path / "absent")
    with pytest.raises(UserError, match=r"data.cfp_root=.*absent' does not exist"):
        validation.validate(c)
    c = tiny_config()
    c.method.steps, c.train.curve_steps = 4, (2, 4)
    with pytest.raises(UserError, match=r"train.curve_steps=\(2, 4\): 4 is not a step between 1 "
                                        r"and method.steps - 1 = 3"):
        validation.validate(c)
    c = tiny_config()
    c.base_seed = -2
    with pytest.raises(UserError, match=r"base_seed=-2: use a seed >= 0"):
        validation.validate(c)
    validation.validate(tiny_config())  # the tiny config itself is fine


def test_require_path_names_the_field_and_the_data_set(tmp_path):
    with pytest.raises(UserError, match=r"config field data.root is empty.*CelebA"):
        validation.require_path("", "data.root", "celeba")
    with pytest.raises(UserError, match=r"data.root=.*does not exist.*ORL"):
        validation.require_path(str(tmp_path / "absent"), "data.root", "orl")
    assert validation.require_path(str(tmp_path), "data.root", "orl") == str(tmp_path)


def test_model_fields_come_from_the_checkpoint_unless_set(shared):
    """The issue's command: the paper's config with the real MobileFaceNet .ckpt and only
    model.name set; the checkpoint fixes the input and embedding sizes. A size set otherwise is
    one line naming the value to use."""
    c = load_config("hard_disp")
    c.model.name = "mobilefacenet"
    c.model.init = str(shared("weights", "mobilefacenet_casia", "068.ckpt"))
    c.data.name, c.data.root = "folder", str(shared("data", "orl_faces"))
    c.forget.num_identities = 5
    out = validation.validate(c)
    assert (out.model.name, tuple(out.model.input_size), out.model.embedding_size) == (
        "mobilefacenet", FAMILIES["mobilefacenet"].input_size, FAMILIES["mobilefacenet"].embedding_size)
    assert c.model.input_size is None  # the caller's config is left as it was
    c.model.input_size, c.model.embedding_size = (112, 112), 512
    with pytest.raises(UserError) as e:
        validation.validate(c)
    assert "\n" not in str(e.value)
    assert "--config.model.input_size='(112, 96)' --config.model.embedding_size=128" in str(e.value)


def test_a_batch_the_identities_cannot_fill_is_fitted_or_refused_before_any_work():
    n = jax.device_count()
    for batch, k, ids in ((32, 4, 5), (32, 4, 100), (8 * 3 * n, 3, 5), (4 * n, 2, 3)):
        got = validation.fit_batch("method.batch_size", batch, k, ids)
        assert got % k == 0 and got % n == 0
        if ids >= batch // k:
            assert got == batch
        else:  # the most identities (at most ids) whose P x K batch splits over the devices
            assert got // k == max(q for q in range(1, ids + 1) if (q * k) % n == 0)
    c = tiny_config()
    c.method.images_per_identity = 3
    c.method.batch_size = c.method.retain_batch_size = 3 * n
    c.forget.num_identities = 1  # 1 x 3 images never splits over the devices
    with pytest.raises(UserError, match=rf"method.batch_size={3 * n} draws P={n} identities x "
                                        rf"K=3 images, but there are only 1 identities"):
        validation.validate(c)


def test_verification_packs_must_exist_and_have_distinct_names(tmp_path):
    c = tiny_config()
    c.data.verification_bins = (str(tmp_path / "lfw.bin"),)
    with pytest.raises(UserError, match=r"data.verification_bins: '.*lfw.bin' is not a file"):
        validation.validate(c)
    (tmp_path / "a").mkdir()
    for p in (tmp_path / "lfw.bin", tmp_path / "a" / "lfw.bin"):
        p.write_bytes(b"")
    c.data.verification_bins = (str(tmp_path / "lfw.bin"), str(tmp_path / "a" / "lfw.bin"))
    with pytest.raises(UserError, match=r"is named 'lfw' \(its file stem\) like '.*lfw.bin'"):
        validation.validate(c)
    c.data.verification_bins = (str(tmp_path / "lfw.bin"),)
    c.evals = ("verification:agedb_30",)
    with pytest.raises(UserError, match=r"protocol 'verification:agedb_30' needs the set 'agedb_30'"):
        validation.validate(c)
    c.evals = ("verification", "verification:lfw")
    validation.validate(c)  # both read the pack lfw.bin


def test_export_onnx_without_onnx_is_refused_before_any_work(monkeypatch):
    c = tiny_config()
    c.export_onnx = True
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    with pytest.raises(UserError, match=r"export_onnx=True needs the optional package onnx"):
        validation.validate(c)
