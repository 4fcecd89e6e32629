"""The experiment runner: end-to-end run, resume after interruption, data parallelism, errors."""

import copy
import importlib.util
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxforget import config as config_lib
from jaxforget import experiment
from jaxforget import methods
from jaxforget import sharding as shd
from jaxforget import train as train_lib
from jaxforget.data import pipeline, splits, synthetic
from jaxforget.models import registry

ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(method="hard_disp"):
    c = config_lib.finalize(config_lib.base_config(method), "demo")
    c.model.width_mult = 0.125
    c.model.input_size = (16, 16)
    c.model.embedding_size = 32
    c.data.num_identities = 16
    c.data.images_per_identity = 6
    c.forget.num_identities = 4
    c.pretrain.steps = 2
    c.pretrain.batch_size = 16
    c.method.steps = 1
    c.method.batch_size = 8
    c.method.retain_batch_size = 8
    c.eval.batch_size = 32
    c.eval.tsne = False
    c.train.checkpoint_every = 1
    return c


def test_one_step_end_to_end(tmp_path):
    c = tiny_config()
    c.cache_dir = str(tmp_path / "cache")
    # The extended protocol with distractors drawn from the data set's people outside the split.
    c.retain.max_identities = 8
    c.data.distractors = "other_identities"
    c.data.num_distractors = 5
    c.evals = tuple(c.evals) + ("forget_extended",)
    out = experiment.run(c, tmp_path / "run")
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    for state in ("original", "unlearned"):
        assert res[state]["forget_extended"]["mAP"] <= res[state]["forget_base"]["mAP"] + 1e-9
        for proto in ("forget_base", "retain_search", "forget_extended"):
            m = res[state][proto]
            assert 0.0 <= m["mAP"] <= 1.0 and 0.0 <= m["R@1"] <= 1.0
            assert m["num_queries"] > 0
    assert res["meta"]["steps"] == 1
    assert (tmp_path / "run" / "results.md").read_text().startswith("# Results")
    assert (tmp_path / "run" / "unlearned_model").is_dir()
    lines = (tmp_path / "run" / "metrics_unlearn.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 1
    assert out["original"]["forget_base"]["num_queries"] == res["original"]["forget_base"]["num_queries"]
    # Protocols added afterwards from the stored embeddings equal those computed during the run.
    reevaluate = _load_tool("reevaluate")
    before = json.loads((tmp_path / "run" / "results.json").read_text())
    res2 = reevaluate.reevaluate(tmp_path / "run", ("retain_search", "retain_search:retain_all"))
    for state in ("original", "unlearned"):
        assert res2[state]["retain_search:retain_all"]["num_queries"] > 0
        assert res2[state]["retain_search"] == pytest.approx(before[state]["retain_search"])
        assert res2[state]["forget_extended"] == before[state]["forget_extended"]  # kept
    with pytest.raises(SystemExit, match="distractor gallery is not stored"):
        reevaluate.reevaluate(tmp_path / "run", ("forget_extended",))
    # The base model was cached and is reused by a second experiment.
    assert len(list((tmp_path / "cache" / "base_models").iterdir())) == 1
    assert len(list((tmp_path / "cache" / "embeddings").iterdir())) == 1
    # The same workdir with other settings is refused (it would report the old run's numbers);
    # settings that only change reporting are not.
    c2 = copy.deepcopy(c)
    c2.method.lr = 0.5
    with pytest.raises(experiment.UserError,
                       match=rf"other settings \(method.lr: {c.method.lr} -> 0.5\)"):
        experiment.run(c2, tmp_path / "run")
    c3 = copy.deepcopy(c)
    c3.eval.tsne, c3.train.log_every = True, 7
    experiment.check_workdir_config(c3, tmp_path / "run")
    # A deletion request: only the deliverables stay, and the shared cache forgets the split.
    purge = _load_tool("purge_run")
    assert purge.main([str(tmp_path / "run")]) == 0  # a dry run deletes nothing
    assert (tmp_path / "run" / "checkpoints").exists()
    assert purge.main([str(tmp_path / "run"), "--yes"]) == 0
    left = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert "unlearned_model" in left and "results.json" in left
    assert not {"checkpoints", "embeddings", "split.json"} & set(left)
    assert not list((tmp_path / "cache" / "embeddings").iterdir())
    assert not list((tmp_path / "cache" / "base_models").iterdir())


def test_closed_form_projection_run(tmp_path):
    """``project`` trains nothing; the unlearned embeddings are the original ones with the
    forget-train centroid directions removed (the fold, eval-time flip included, end to end)."""
    from jaxforget.eval.embed import Embeddings
    from jaxforget.methods import projection

    c = tiny_config("project")
    c.cache_dir = str(tmp_path / "cache")
    experiment.run(c, tmp_path / "run")
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["meta"]["steps"] == 0 and res["meta"]["method"] == "project"
    assert not (tmp_path / "run" / "metrics_unlearn.jsonl").exists()
    (key,) = list((tmp_path / "cache" / "embeddings").iterdir())
    orig = {n: Embeddings.load(key / f"{n}.npz") for n in ("forget_train", "retain_test")}
    new = {n: Embeddings.load(tmp_path / "run" / "embeddings" / f"unlearned_{n}.npz") for n in orig}
    q = projection.identity_basis(orig["forget_train"].emb, orig["forget_train"].labels)
    assert q.shape[1] == c.forget.num_identities
    np.testing.assert_allclose(new["forget_train"].emb @ q, 0.0, atol=1e-4)
    want = orig["retain_test"].emb @ projection.removal_matrix(q)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(new["retain_test"].emb, want, atol=1e-4)
    assert res["unlearned"]["forget_base"]["CS"] < res["original"]["forget_base"]["CS"]


def test_other_identity_distractors_are_outside_the_split():
    c = tiny_config()
    c.data.distractors, c.data.num_distractors = "other_identities", 7
    source = synthetic.SyntheticFaces(16, 6, size=c.model.input_size, seed=0)
    split = splits.make_split(source.identities, num_forget=4, min_images=4, num_retain=8, seed=0)
    d = experiment.build_distractors(c, source, split, c.model.input_size)
    assert len(d) == 7
    assert not set(d.identities.tolist()) & set(split.forget_ids + split.retain_ids)
    c.data.num_distractors = 0  # all of them: the 4 identities outside the split x 6 images
    assert len(experiment.build_distractors(c, source, split, c.model.input_size)) == 24
    full = splits.make_split(source.identities, num_forget=4, min_images=4, seed=0)
    with pytest.raises(experiment.UserError, match="every image of the data set belongs"):
        experiment.build_distractors(c, source, full, c.model.input_size)


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _phase_setup(tmp_path, method_name="hard_disp"):
    c = tiny_config(method_name)
    bundle, variables = registry.load_pretrained(c.model)
    source = synthetic.SyntheticFaces(12, 6, size=c.model.input_size, seed=0)
    split = splits.make_split(source.identities, num_forget=3, min_images=4, seed=0)
    return c, bundle, variables, source, split


def _iterators(source, split):
    def mk(idx, seed):
        return iter(pipeline.train_dataset(source, idx, identities_per_batch=2,
                                           images_per_identity=4, seed=seed,
                                           label_map=split.class_index, flip=False))
    return {"forget": mk(split.forget_train(), 0), "retain": mk(split.retain_train(), 1)}


def _run(c, bundle, variables, source, split, workdir, stop_after=None):
    method = methods.get_method(c.method.name)
    ctx = experiment._context(bundle, c, split.num_classes)
    head = np.eye(split.num_classes, bundle.embedding_size, dtype=np.float32)
    state = methods.init_state(method, c.method, variables, head, jax.random.PRNGKey(0))
    mesh = shd.make_mesh(jax.devices()[:1])
    update = jax.jit(methods.make_update_step(method, c.method, ctx), donate_argnums=0)
    its = _iterators(source, split)
    return train_lib.train_loop(
        phase="unlearn", state=shd.replicate(state, mesh), update_fn=update,
        iterators={k: its[k] for k in method.data_needs(c.method)}, workdir=workdir,
        steps=int(c.method.steps), mesh=mesh, checkpoint_every=2, log_every=1,
        stop_after=stop_after)


@pytest.mark.parametrize("method_name", ["hard_disp", "rl"])
def test_resume_after_interruption_matches_uninterrupted(tmp_path, method_name):
    c, bundle, variables, source, split = _phase_setup(tmp_path, method_name)
    c.method.steps = 5
    full = _run(c, bundle, variables, source, split, tmp_path / "a")
    # Killed after the checkpoint at step 2 (steps 3.. are lost), then re-run from scratch.
    _run(c, bundle, variables, source, split, tmp_path / "b", stop_after=3)
    assert train_lib.latest_checkpoint_step(tmp_path / "b", "unlearn") == 3
    resumed = _run(c, bundle, variables, source, split, tmp_path / "b")
    assert int(resumed.step) == 5
    # Every step is logged once, although step 3 ran twice (before and after the interruption).
    logged = [json.loads(s)["step"] for s in
              (tmp_path / "b" / "metrics_unlearn.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 5]
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(full.batch_stats), jax.tree.leaves(resumed.batch_stats)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_four_devices_step_equals_one_device(tmp_path):
    assert len(jax.devices()) >= 4, "conftest should provide 4 fake CPU devices"
    c, bundle, variables, source, split = _phase_setup(tmp_path)
    method = methods.get_method("hard_disp")
    ctx = experiment._context(bundle, c, split.num_classes)
    batch = {"forget": next(_iterators(source, split)["forget"])}
    outs = []
    for n in (1, 4):
        mesh = shd.make_mesh(jax.devices()[:n])
        state = methods.init_state(method, c.method, variables, None, jax.random.PRNGKey(0))
        state = shd.replicate(state, mesh)
        update = jax.jit(methods.make_update_step(method, c.method, ctx), donate_argnums=0)
        sharded = shd.shard_batch(batch, mesh)
        assert len(sharded["forget"]["image"].sharding.device_set) == n
        new, metrics = update(state, sharded)
        outs.append((jax.device_get(new.params), jax.device_get(metrics)))
    (p1, m1), (p4, m4) = outs
    np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-5)
    flat1 = np.concatenate([np.ravel(a) for a in jax.tree.leaves(p1)])
    flat4 = np.concatenate([np.ravel(a) for a in jax.tree.leaves(p4)])
    rel = np.linalg.norm(flat4 - flat1) / np.linalg.norm(flat1)
    print(f"4-device vs 1-device step: relative parameter difference {rel:.2e}")
    assert rel <= 1e-5


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
    c, bundle, variables, source, split = _phase_setup(tmp_path)
    mesh = shd.make_mesh(jax.devices()[:1])
    calls = {"n": 0}

    def update(state, batch):
        calls["n"] += 1
        bad = calls["n"] >= 3
        return state, {"loss": np.float32(np.nan if bad else 1.0), "grad_norm": np.float32(1.0)}

    its = _iterators(source, split)
    with pytest.raises(train_lib.NonFiniteError, match=r"step 3: non-finite loss=nan.*step 2"):
        train_lib.train_loop(phase="x", state={"w": np.zeros(2)}, update_fn=update,
                             iterators={"forget": its["forget"]}, workdir=tmp_path, steps=10,
                             mesh=mesh, checkpoint_every=1)
    assert train_lib.latest_checkpoint_step(tmp_path, "x") == 2
    calls["n"] = 0
    with pytest.raises(train_lib.NonFiniteError, match=r"no checkpoint had been written yet"):
        train_lib.train_loop(phase="y", state={"w": np.zeros(2)}, update_fn=update,
                             iterators={"forget": its["forget"]}, workdir=tmp_path, steps=10,
                             mesh=mesh, checkpoint_every=5)


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match="method.name='nope'"):
        config_lib.base_config("nope")
    c = tiny_config()
    c.method.name = "nope"
    with pytest.raises(experiment.UserError, match="method.name"):
        experiment.validate(c)


def test_config_mistakes_are_caught_before_any_work(tmp_path):
    c = tiny_config()
    c.method.name = "ga"  # the file's defaults (lr, steps) are hard dispersion's
    with pytest.raises(experiment.UserError, match=r"defaults of 'hard_disp'.*configs/ga.py"):
        experiment.validate(c)
    c = tiny_config()
    c.method.batch_size = 10  # not P x K with K = 4
    with pytest.raises(experiment.UserError, match=r"method.batch_size=10 must be a multiple of "
                                                   r"method.images_per_identity=4"):
        experiment.validate(c)
    c = tiny_config()
    c.pretrain.batch_size = 4 * (jax.device_count() + 1) + 2
    with pytest.raises(experiment.UserError, match=r"pretrain.batch_size"):
        experiment.validate(c)
    c = tiny_config()
    c.data.name = "celebA"
    with pytest.raises(experiment.UserError, match=r"data.name='celebA' is not a known data set"):
        experiment.validate(c)
    assert experiment.default_workdir(tiny_config()).name == "hard_disp_demo"
    assert experiment.default_workdir(config_lib.finalize(
        config_lib.base_config("ga"), "orl")).name == "ga_orl"


def test_split_of_another_data_set_is_a_clear_error(tmp_path):
    c = tiny_config()
    experiment.make_or_load_split(c, synthetic.SyntheticFaces(16, 6, (16, 16), seed=0), tmp_path)
    with pytest.raises(experiment.UserError, match=r"split.json was made for another data set"):
        experiment.make_or_load_split(c, synthetic.SyntheticFaces(12, 6, (16, 16)), tmp_path)


def test_missing_data_path_names_the_field(tmp_path):
    c = config_lib.base_config("hard_disp")
    c.data.root = str(tmp_path / "absent")
    with pytest.raises(experiment.UserError, match=r"data.root=.*does not exist.*CelebA"):
        experiment.build_source(c, (112, 112))
    c.data.root = ""
    with pytest.raises(experiment.UserError, match=r"config field data.root is empty"):
        experiment.build_source(c, (112, 112))


def test_cli_rejects_unknown_config_field(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "jaxforget.main", "--config=configs/hard_disp.py:demo",
         f"--workdir={tmp_path}", "--config.method.no_such_field=1"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2
    assert "no_such_field" in r.stderr and "Traceback" not in r.stderr


def test_cli_missing_data_is_a_one_line_error(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "jaxforget.main", "--config=configs/hard_disp.py",
         f"--workdir={tmp_path}", f"--config.data.root={tmp_path}/nothing"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2
    assert "error: data.root=" in r.stderr and "Traceback" not in r.stderr
