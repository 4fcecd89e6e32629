"""The unlearning recipe (``jaxforget.trainer``): one real run end to end, no files without a
workdir, resume equal to an uninterrupted run, SalUn, non-finite stops, the loop itself."""

from __future__ import annotations

import dataclasses
import functools
import json

import jax
import numpy as np
import pytest

from jaxforget import methods, trainer
from jaxforget import sharding as shd
from jaxforget.data import pipeline, splits, synthetic
from jaxforget.models import build_model, init_variables
from tests import methods_fixtures

MODEL = {"name": "iresnet18", "width_mult": 0.125, "input_size": (16, 16), "embedding_size": 32}


@functools.cache
def _world(model="iresnet"):
    """Synthetic faces, a split and a model: a tiny IResNet (``model='iresnet'``, one block per
    stage) or, where only the recipe matters and compile time would dominate, the methods tests'
    TinyNet (``'tiny'``). Built once per model; unlearn never donates the caller's variables, so
    tests share them."""
    source = synthetic.SyntheticFaces(12, 6, size=MODEL["input_size"], seed=0)
    split = splits.make_split(source.identities, num_forget=3, min_images=4, seed=0)
    if model == "iresnet":
        # One block per stage instead of IResNet-18's two: the same layers, half the compile time.
        bundle = build_model(MODEL)
        bundle = dataclasses.replace(bundle, module=bundle.module.clone(stage_blocks=(1, 1, 1, 1)))
        variables = jax.device_get(init_variables(bundle, 0))
        ctx = methods.Context(apply_fn=bundle.module.apply, pixel_mean=bundle.pixel_mean,
                              pixel_std=bundle.pixel_std, num_classes=split.num_classes)
        dim = bundle.embedding_size
    else:
        _, variables, _, ctx = methods_fixtures.setup()
        ctx = ctx.replace(num_classes=split.num_classes)
        dim = methods_fixtures.D
    head = np.eye(split.num_classes, dim, dtype=np.float32)
    return variables, source, split, ctx, head


def _iterators(seed=0):
    _, source, split, _, _ = _world()

    def mk(idx, s):
        return iter(pipeline.train_dataset(source, idx, identities_per_batch=2,
                                           images_per_identity=4, seed=s,
                                           label_map=split.class_index, flip=False))
    return {"forget": mk(split.forget_train(), seed), "retain": mk(split.retain_train(), seed + 1)}


def _unlearn(name, hp, model="iresnet", **kw):
    variables, _, _, ctx, head = _world(model)
    its = kw.pop("iterators", None) or _iterators()
    return trainer.unlearn(name, hp, ctx, variables, its, head=head,
                           rng=jax.random.PRNGKey(0), **kw)


def _assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _files(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_one_step_without_workdir_writes_nothing_and_equals_the_step_by_hand(
        tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    hp = {"steps": 1, "lr": 0.05}
    seen = []

    def on_step(step, state, record):
        seen.append((step, int(state.step), sorted(methods.variables_of(state)), record))

    result = _unlearn("disp", hp, on_step=on_step, hook_every=1,
                      hook=lambda step, state: {"probe": float(step)})
    assert _files(tmp_path) == []
    assert capsys.readouterr().err == ""  # progress only when asked (or with a workdir)
    assert [r["step"] for r in result.metrics] == [1]
    assert seen == [(1, 1, ["batch_stats", "params"], result.metrics[0])]
    assert result.metrics[0]["probe"] == 1.0 and np.isfinite(result.metrics[0]["loss"])
    assert result.metrics[0]["lr"] == pytest.approx(0.05)
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(result.variables))
    variables, _, _, ctx, head = _world()
    assert any(not np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(variables["params"]), jax.tree.leaves(result.variables["params"])))
    # The recipe is exactly init_state -> jit(make_update_step) -> one step on the same batch.
    method = methods.get_method("disp")
    state = methods.init_state(method, hp, variables, head, jax.random.PRNGKey(0))
    batch = {"forget": next(_iterators()["forget"])}
    state, m = jax.jit(methods.make_update_step(method, hp, ctx))(state, batch)
    _assert_same(jax.device_get(methods.variables_of(state)), result.variables)
    assert float(m["loss"]) == result.metrics[0]["loss"]


def test_progress_without_workdir_goes_to_stderr_only(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _unlearn("hard_disp", {"steps": 2, "lr": 0.05, "trainable": "Dense_0/"}, model="tiny",
             progress=True, log_every=1)
    err = capsys.readouterr().err
    assert "[unlearn] step 2/2 " in err and "method.trainable='Dense_0/'" in err
    assert _files(tmp_path) == []


@pytest.mark.parametrize("name", ["hard_disp", "rl"])
def test_resume_after_interruption_matches_uninterrupted(tmp_path, name):
    hp = {"steps": 5, "lr": 0.05, "retain_weight": 1.0 if name == "rl" else 0.0}
    mesh = shd.make_mesh(jax.devices()[:1])
    run = functools.partial(_unlearn, name, hp, mesh=mesh, checkpoint_every=2, log_every=1)
    full = run(workdir=tmp_path / "a")
    # Killed after the checkpoint at step 2 (steps 3.. are lost), then re-run from scratch.
    run(workdir=tmp_path / "b", stop_after=3)
    assert trainer.latest_checkpoint_step(tmp_path / "b", "unlearn") == 3
    resumed = run(workdir=tmp_path / "b")
    assert [r["step"] for r in resumed.metrics] == [4, 5]
    # Every step is logged once, although step 3 ran twice (before and after the interruption).
    logged = [json.loads(s)["step"] for s in
              (tmp_path / "b" / "metrics_unlearn.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 5]
    _assert_same(full.variables, resumed.variables)
    _assert_same(full.head, resumed.head)


def test_salun_ranks_once_with_the_methods_loss_and_masks_the_update(tmp_path):
    variables, _, _, ctx, head = _world("tiny")
    method = methods.get_method("disp")
    hp = methods.resolve_hparams({"steps": 2, "lr": 0.05, "salun_fraction": 0.25}, method)
    ranked = []

    def salun_batches():
        ranked.append(1)
        it = _iterators(seed=2)["forget"]
        return [next(it) for _ in range(2)]

    with pytest.raises(ValueError, match="saliency_batches"):
        _unlearn("disp", hp, model="tiny")
    result = _unlearn("disp", hp, model="tiny", saliency_batches=salun_batches, workdir=tmp_path,
                      checkpoint_every=1, stop_after=1)
    assert ranked == [1]
    # The mask the trainer used: the method's own salun_loss (dispersion) over those batches.
    state = methods.init_state(method, hp, variables, head, jax.random.PRNGKey(0))
    mask = methods.compute_saliency_mask(method, ctx, state, salun_batches(), 0.25,
                                         loss="dispersion")["params"]
    moved = kept = 0
    for a, b, m in zip(jax.tree.leaves(variables["params"]),
                       jax.tree.leaves(result.variables["params"]), jax.tree.leaves(mask),
                       strict=True):
        changed = np.asarray(a) != np.asarray(b)
        assert not np.any(changed & ~np.asarray(m))
        moved, kept = moved + int(changed.sum()), kept + int(np.sum(m))
    assert moved > 0.5 * kept
    # Resuming restores the mask with the optimizer state: no second ranking.
    ranked.clear()
    _unlearn("disp", hp, model="tiny", saliency_batches=salun_batches, workdir=tmp_path)
    assert ranked == []


def test_non_finite_loss_stops_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(trainer.NonFiniteError, match=r"non-finite .*nothing was saved"):
        _unlearn("ga", {"steps": 6, "lr": 1e38, "momentum": 0.0, "weight_decay": 0.0},
                 model="tiny")
    assert _files(tmp_path) == []


def test_batches_must_split_over_the_mesh_and_closed_form_is_refused():
    mesh = shd.make_mesh(jax.devices()[:3])
    with pytest.raises(ValueError, match=r"unlearn batch size for 'forget'=8 is not divisible "
                                         r"by the 3 devices"):
        _unlearn("hard_disp", {"steps": 1}, mesh=mesh)
    with pytest.raises(ValueError, match="closed-form"):
        _unlearn("project", {"steps": 1})


def test_train_loop_non_finite_keeps_the_last_checkpoint(tmp_path):
    mesh = shd.make_mesh(jax.devices()[:1])
    calls = {"n": 0}

    def update(state, batch):
        calls["n"] += 1
        bad = calls["n"] >= 3
        return state, {"loss": np.float32(np.nan if bad else 1.0), "grad_norm": np.float32(1.0)}

    its = _iterators()
    with pytest.raises(trainer.NonFiniteError, match=r"step 3: non-finite loss=nan.*step 2"):
        trainer.train_loop(phase="x", state={"w": np.zeros(2)}, update_fn=update,
                           iterators={"forget": its["forget"]}, workdir=tmp_path, steps=10,
                           mesh=mesh, checkpoint_every=1)
    assert trainer.latest_checkpoint_step(tmp_path, "x") == 2
    calls["n"] = 0
    with pytest.raises(trainer.NonFiniteError, match=r"no checkpoint had been written yet"):
        trainer.train_loop(phase="y", state={"w": np.zeros(2)}, update_fn=update,
                           iterators={"forget": its["forget"]}, workdir=tmp_path, steps=10,
                           mesh=mesh, checkpoint_every=5)
