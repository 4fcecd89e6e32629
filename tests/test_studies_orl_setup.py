"""studies/orl_setup.py without the real data: its unlearning (the product's trainer on one device)
and evaluation on a tiny model over synthetic identities. tests/test_realface.py runs the same
functions on the real MobileFaceNet and ORL."""

import dataclasses

import jax
import numpy as np
import pytest

from jaxforget.data import splits
from jaxforget.data.synthetic import SyntheticFaces
from jaxforget.models import build_model, init_variables
from studies import orl_setup


@pytest.fixture(scope="module")
def setup():
    bundle = build_model(dict(name="iresnet18", input_size=(32, 32), embedding_size=16,
                              width_mult=0.125))
    # One block per stage: quick to compile.
    bundle = dataclasses.replace(bundle, module=bundle.module.clone(stage_blocks=(1, 1, 1, 1)))
    source = SyntheticFaces(8, 10, size=(32, 32), seed=0)
    split = splits.make_split(source.identities, num_forget=3, min_images=10, train_fraction=0.5,
                              seed=0, image_ids=source.image_ids)
    retain_all = np.sort(np.concatenate([split.retain_train(), split.retain_test()]))
    return orl_setup.OrlSetup(bundle, init_variables(bundle, 0), source, split,
                              split.forget_train(), split.forget_test(), retain_all)


def _same(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def test_unlearn_runs_the_steps_and_reports_them(setup):
    cfg = orl_setup.method_config(lr=0.05, bn_mode="train", steps=3)
    seen = []
    variables, log = orl_setup.unlearn(
        setup, cfg, identities_per_batch=3, images_per_identity=4, seed=0,
        callback=lambda step, v, record: seen.append((step, sorted(v), record["loss"])),
        callback_at=(1, 3))
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in log)
    assert [s for s, _, _ in seen] == [1, 3]
    assert seen[0][1] == ["batch_stats", "params"] and seen[1][2] == log[-1]["loss"]
    assert not _same(variables["params"], setup.variables["params"])  # it trained
    assert not _same(variables["batch_stats"], setup.variables["batch_stats"])  # bn_mode='train'
    after = orl_setup.evaluate(setup, variables)
    assert set(after) == {"forget", "retain"}
    assert all(set(m) == {"mAP", "R@1", "CS"} for m in after.values())
    forget_only = orl_setup.evaluate(setup, variables, retain=False)
    assert forget_only == {"forget": after["forget"]}


def test_unlearn_trains_only_what_trainable_names_and_needs_retain_data_for_a_retain_term(setup):
    cfg = orl_setup.method_config(lr=0.05, bn_mode="frozen", steps=2, trainable="fc/")
    variables, _ = orl_setup.unlearn(setup, cfg, identities_per_batch=3, images_per_identity=4)
    for name, params in setup.variables["params"].items():
        assert _same(variables["params"][name], params) == (name != "fc"), name
    assert _same(variables["batch_stats"], setup.variables["batch_stats"])  # BatchNorm frozen
    cfg = orl_setup.method_config(lr=0.05, bn_mode="train", steps=2, retain_weight=1.0,
                                  retain_loss="distill")
    with pytest.raises(ValueError, match="pass retain="):
        orl_setup.unlearn(setup, cfg, identities_per_batch=3, images_per_identity=4)
