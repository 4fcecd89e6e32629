"""The experiment runner: end-to-end run, the tools on its workdir, data parallelism, errors.

Resuming after an interruption is tested with the recipe itself (tests/test_trainer.py).
"""

import copy
import importlib
import json
import pathlib
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxforget import config as config_lib
from jaxforget import experiment
from jaxforget import methods
from jaxforget import sharding as shd
from jaxforget import workdir as wd
from jaxforget.data import pipeline, splits, synthetic
from jaxforget.errors import UserError
from jaxforget.eval.embed import Embeddings
from jaxforget.methods import projection
from jaxforget.models import loading, onnx_export
from jaxforget.testing.payloads import CodeRunningPayload

from runner_fixtures import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_one_step_end_to_end(tmp_path):
    c = tiny_config()
    c.cache_dir = str(tmp_path / "cache")
    # The extended protocol with distractors drawn from the data set's people outside the split.
    c.retain.max_identities = 8
    c.data.distractors = "other_identities"
    c.data.num_distractors = 5
    c.evals = tuple(c.evals) + ("forget_extended",)
    c.export_onnx = True  # the deliverable InsightFace's loader runs
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
    bundle, unlearned = loading.load_pretrained({"init": str(tmp_path / "run" / "unlearned_model")})
    parity = onnx_export.onnx_parity(bundle, unlearned, tmp_path / "run" / "unlearned_backbone.onnx")
    assert parity["max_abs_raw"] <= 1e-4 and parity["max_abs_normalized"] <= 1e-4
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
    with pytest.raises(UserError,
                       match=rf"other settings \(method.lr: {c.method.lr} -> 0.5\)"):
        experiment.run(c2, tmp_path / "run")
    c3 = copy.deepcopy(c)
    c3.eval.tsne, c3.train.log_every = True, 7
    wd.check_workdir_config(c3, tmp_path / "run")
    # A deletion request: only the deliverables stay, and the shared cache forgets the split.
    purge = _load_tool("purge_run")
    assert purge.main([str(tmp_path / "run")]) == 0  # a dry run deletes nothing
    assert (tmp_path / "run" / "checkpoints").exists()
    assert purge.main([str(tmp_path / "run"), "--yes"]) == 0
    left = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert {"unlearned_model", "unlearned_backbone.onnx", "results.json"} <= set(left)
    assert not {"checkpoints", "embeddings", "split.json"} & set(left)
    assert not list((tmp_path / "cache" / "embeddings").iterdir())
    assert not list((tmp_path / "cache" / "base_models").iterdir())


def test_closed_form_projection_run(tmp_path):
    """``project`` trains nothing; the unlearned embeddings are the original ones with the
    forget-train centroid directions removed (the fold, eval-time flip included, end to end)."""
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


def test_seeds_share_one_base_model_under_a_fixed_base_seed(tmp_path, capsys):
    """``base_seed`` fixed: one Original fine-tuned once for every seed (each person's halves
    are the same), other forget people per seed; mean +- std written over the seeds."""
    c = tiny_config("project")  # trains nothing after the base model: seconds
    c.cache_dir = str(tmp_path / "cache")
    c.seeds, c.base_seed = (0, 1), 0
    experiment.run(c, tmp_path / "run")
    assert len(list((tmp_path / "cache" / "base_models").iterdir())) == 1
    assert len(list((tmp_path / "cache" / "embeddings").iterdir())) == 2
    assert capsys.readouterr().err.count("[pretrain] using the cached base model") == 1
    s0, s1 = (splits.Split.load(tmp_path / "run" / f"seed_{s}" / "split.json") for s in (0, 1))
    assert s0.forget_ids != s1.forget_ids and s0.training_set() == s1.training_set()
    assert " +- " in (tmp_path / "run" / "results.md").read_text()


def test_step_curve_rows_and_their_resume(tmp_path):
    """``train.curve_steps``: the model of each listed step is evaluated like the final one; a
    resumed run (here: past the last step) restores the rows from the stored embeddings."""
    c = tiny_config()
    c.cache_dir = str(tmp_path / "cache")
    c.method.steps, c.train.curve_steps = 3, (1, 2)
    experiment.run(c, tmp_path / "run")
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [k for k in res if k != "meta"] == ["original", "step_1", "step_2", "unlearned"]
    assert res["step_1"]["forget_base"] != res["unlearned"]["forget_base"]
    md = (tmp_path / "run" / "results.md").read_text()
    assert "| hard_disp @ 1 steps |" in md and "| hard_disp @ 2 steps |" in md
    (tmp_path / "run" / "results.json").unlink()
    for f in (tmp_path / "run" / "embeddings").glob("unlearned_*"):
        f.unlink()
    experiment.run(c, tmp_path / "run")  # resumes at step 3: the hooks of steps 1 and 2 never run
    again = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {k: again[k] for k in res if k != "meta"} == {k: res[k] for k in res if k != "meta"}


def _load_tool(name):
    return importlib.import_module(f"tools.{name}")


def _phase_setup(tmp_path, method_name="hard_disp"):
    c = tiny_config(method_name)
    bundle, variables = loading.load_pretrained(c.model)
    source = synthetic.SyntheticFaces(12, 6, size=c.model.input_size, seed=0)
    split = splits.make_split(source.identities, num_forget=3, min_images=4, seed=0)
    return c, bundle, variables, source, split


def _iterators(source, split):
    def mk(idx, seed):
        return iter(pipeline.train_dataset(source, idx, identities_per_batch=2,
                                           images_per_identity=4, seed=seed,
                                           label_map=split.class_index, flip=False))
    return {"forget": mk(split.forget_train(), 0), "retain": mk(split.retain_train(), 1)}


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


def test_hostile_model_init_and_corrupt_split_are_one_line_errors(tmp_path):
    """Before (found by tests/test_fuzz_*.py): a .pth whose pickle would run code escaped
    run_one as UnsafePickleError (not a ValueError), and a corrupt split.json escaped
    make_or_load_split as json's JSONDecodeError: tracebacks at the command line."""
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps(CodeRunningPayload(marker), protocol=2))
    c = tiny_config()
    c.model.init = str(evil)
    with pytest.raises(UserError, match=r"model.init.*evil.pth: refused to load"):
        experiment.run_one(c, tmp_path / "run")
    assert not marker.exists()
    (tmp_path / "split.json").write_text("{not json")
    with pytest.raises(UserError, match=r"split.json: not a JSON split file.*delete it to make the split again"):
        experiment.make_or_load_split(tiny_config(), synthetic.SyntheticFaces(16, 6, (16, 16), seed=0), tmp_path)


def test_split_of_another_data_set_is_a_clear_error(tmp_path):
    c = tiny_config()
    experiment.make_or_load_split(c, synthetic.SyntheticFaces(16, 6, (16, 16), seed=0), tmp_path)
    with pytest.raises(UserError, match=r"split.json was made for another data set"):
        experiment.make_or_load_split(c, synthetic.SyntheticFaces(12, 6, (16, 16)), tmp_path)


def test_missing_data_path_names_the_field(tmp_path):
    c = config_lib.base_config()  # the paper preset: CelebA
    c.data.root = str(tmp_path / "absent")
    with pytest.raises(UserError, match=r"data.root=.*does not exist.*CelebA"):
        experiment.build_source(c, (112, 112))
    c.data.root = ""
    with pytest.raises(UserError, match=r"config field data.root is empty"):
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


def _zoo_like_onnx(path: pathlib.Path) -> pathlib.Path:
    """A tiny arcface_torch mbf exported the way the zoo files were (BatchNorms folded), with the
    zoo file's generic tensor names for its input and output (``input.1`` / ``516``)."""
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    from jaxforget.testing import torch_reference as ref

    torch.manual_seed(0)
    model = ref.calibrate(ref.randomize(ref.TorchMbf(0.125, 16, (16, 16)), 3),
                          np.random.default_rng(0).normal(size=(16, 16, 16, 3)).astype(np.float32))
    ref.export_onnx_like_arcface_torch(model, path, (16, 16))
    graph = onnx.load(str(path))
    renames = {graph.graph.input[0].name: "input.1", graph.graph.output[0].name: "516"}
    for value in (*graph.graph.input, *graph.graph.output):
        value.name = renames.get(value.name, value.name)
    for node in graph.graph.node:
        node.input[:] = [renames.get(t, t) for t in node.input]
        node.output[:] = [renames.get(t, t) for t in node.output]
    onnx.save(graph, str(path))
    return path


def test_zoo_onnx_model_in_recalibrated_and_a_drop_in_out(tmp_path, capsys):
    """model.init = a folded ONNX graph: the run says what it read and re-creates the folded
    BatchNorms from its train photos (the default); the export keeps the graph's input / output
    names (the zoo file's replacement), also when made later from unlearned_model/. With
    model.folded_bn='keep' and a train-mode recipe the run warns."""
    init = _zoo_like_onnx(tmp_path / "w600k_like.onnx")
    c = tiny_config()
    c.cache_dir = str(tmp_path / "cache")
    c.model.name, c.model.init = "auto", str(init)
    c.model.width_mult = c.model.input_size = c.model.embedding_size = None
    c.pretrain.steps = 0
    c.export_onnx = True
    experiment.run(c, tmp_path / "run")
    err = capsys.readouterr().err
    assert f"model=mbf read from {init} (16x16 -> 16-d, RGB (x - 127.5) / 127.5)" in err
    folded = int(err.split("w600k_like.onnx: ")[1].split(" BatchNorms were folded")[0])
    assert folded == sum(1 for n in onnx_export.onnx_format.read_onnx(init).nodes if n.op_type == "Conv")
    assert "re-created them from the statistics of" in err
    exported = onnx_export.io_names(tmp_path / "run" / "unlearned_backbone.onnx")
    assert exported == {"input_name": "input.1", "output_name": "516"}
    again = loading.export_onnx_checkpoint(tmp_path / "run" / "unlearned_model", tmp_path / "again.onnx")
    assert onnx_export.io_names(tmp_path / "again.onnx") == exported
    assert again["parity"]["max_abs_normalized"] <= 1e-4

    keep = copy.deepcopy(validation_resolved(c))
    keep.model.folded_bn = "keep"
    bundle, variables = loading.load_pretrained(keep.model)
    source = experiment.build_source(keep, tuple(bundle.input_size))
    split = splits.Split.load(tmp_path / "run" / "split.json")
    same = experiment.restore_folded_batchnorms(keep, bundle, variables, source, split)
    assert same is variables
    assert "WARNING: method.bn_mode='train' normalises them by batch statistics" in capsys.readouterr().err


def validation_resolved(c):
    from jaxforget import validation

    return validation.validate(copy.deepcopy(c))
