"""A run's files (jaxforget/workdir.py): paths and cache keys, the config-change check, atomic
writes."""

import json
import pathlib

import ml_collections
import numpy as np
import pytest

from jaxforget import workdir as wd
from jaxforget.errors import UserError

from runner_fixtures import load_config, tiny_config


class _Split:
    def __init__(self, forget=("a", "b"), seed=3):
        self.forget, self.seed = list(forget), seed

    def training_set(self):  # what a base model is fine-tuned on: the same for every forget set
        return {"train": [["a", [0]], ["b", [1]], ["c", [2]]], "class_index": [["a", 0], ["b", 1], ["c", 2]]}

    def to_json(self):
        return {**self.training_set(), "forget": self.forget, "seed": self.seed}


def _cfg(name="synthetic", seed=3, base_seed=-1):
    return ml_collections.ConfigDict(dict(
        model=dict(name="iresnet18", init="", embedding_size=32),
        data=dict(name=name, root="" if name == "synthetic" else "/data/x", num_identities=16),
        pretrain=dict(steps=2, lr=0.1), head=dict(kind="cosface", s=64.0, m=0.4),
        eval=dict(flip=True), cache_dir="/cache", seed=seed, base_seed=base_seed))


def _base(cfg, split, version=1):
    return wd.base_model_path(cfg, split, pathlib.Path("/runs/a"), data_version=version)


def _emb(cfg, split, state="original", version=1):
    return wd.embedding_path(cfg, split, pathlib.Path("/runs/a"), state, "forget_test",
                             data_version=version)


def test_cache_paths_are_stable_and_named_by_their_inputs():
    run = pathlib.Path("/runs/a")
    # Pinned: a change of the key recipe makes every cached base model unreachable; change these
    # on purpose only.
    assert _base(_cfg(), _Split()) == pathlib.Path("/cache/base_models/f0540198d8d5036f")
    assert _emb(_cfg(), _Split()) == pathlib.Path("/cache/embeddings/9a3eb1b37c1c46ea/forget_test.npz")
    assert _emb(_cfg(), _Split(), "unlearned") == run / "embeddings" / "unlearned_forget_test.npz"
    # A new synthetic generator is new data; the version does not matter for files on disk.
    assert _base(_cfg(), _Split(), 2) != _base(_cfg(), _Split())
    assert _base(_cfg("folder"), _Split(), 2) == _base(_cfg("folder"), _Split())
    # Without cache_dir the cache sits beside the workdir.
    c = _cfg()
    c.cache_dir = ""
    assert wd.cache_root(c, run) == pathlib.Path("/runs/cache")


def test_a_fixed_base_seed_shares_one_base_model_across_forget_sets():
    one, other = _Split(("a", "b"), seed=0), _Split(("c",), seed=1)
    shared0, shared1 = _cfg(seed=0, base_seed=0), _cfg(seed=1, base_seed=0)
    assert _base(shared0, one) == _base(shared1, other)
    assert _emb(shared0, one) != _emb(shared1, other)  # other people's embeddings
    # Per-seed base models (base_seed -1) and another base seed are other models.
    assert _base(_cfg(seed=0), one) != _base(_cfg(seed=1), other)
    assert _base(_cfg(seed=0, base_seed=1), one) != _base(shared0, one)
    assert wd.base_seed(shared1) == 0 and wd.base_seed(_cfg(seed=1)) == 1


def test_cache_key_follows_a_reconverted_checkpoint(tmp_path):
    ckpt = tmp_path / "w.npz"
    ckpt.write_bytes(b"one")
    c = _cfg()
    c.model.init = str(ckpt)
    k1 = _base(c, _Split())
    ckpt.write_bytes(b"other weights")  # same path, other size: another base model
    assert _base(c, _Split()) != k1


def test_default_workdir_names_method_and_data():
    assert wd.default_workdir(tiny_config()).name == "hard_disp_demo"
    assert wd.default_workdir(load_config("ga", "orl")).name == "ga_orl"


def test_config_change_is_refused_and_reporting_fields_are_free(tmp_path):
    c = tiny_config()
    wd.check_workdir_config(c, tmp_path)  # no config.json yet
    wd.write_config(c, tmp_path)
    assert wd.read_config(tmp_path).to_dict() == wd.config_as_dict(c)
    wd.check_workdir_config(c, tmp_path)
    c2 = tiny_config()
    c2.method.lr = 0.5
    with pytest.raises(UserError, match=rf"other settings \(method.lr: {c.method.lr} -> 0.5\)"):
        wd.check_workdir_config(c2, tmp_path)
    c3 = tiny_config()
    c3.eval.tsne, c3.train.log_every, c3.evals = True, 7, ("forget_base",)
    c3.cache_dir = str(tmp_path / "elsewhere")
    wd.check_workdir_config(c3, tmp_path)  # RERUN_FREE_FIELDS
    c4 = tiny_config()
    c4.method.lr, c4.method.steps, c4.seed = 0.5, 9, 4
    c4.model.embedding_size, c4.data.num_identities, c4.forget.num_identities = 16, 20, 2
    with pytest.raises(UserError, match=r"and 1 more\); its split"):
        wd.check_workdir_config(c4, tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UserError, match=r"config.json is not valid JSON"):
        wd.check_workdir_config(c, tmp_path)


def test_atomic_write_leaves_the_old_file_or_the_new_one(tmp_path):
    path = tmp_path / "sub" / "results.json"
    assert wd.write_json(path, {"a": [1, 2]}) == path
    assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ]\n}\n'
    assert wd.read_json(path) == {"a": [1, 2]}

    def torn(tmp):  # dies half-way through writing
        tmp.write_text('{"a": [1,')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        wd.write_atomic(path, torn)
    assert wd.read_json(path) == {"a": [1, 2]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]
    wd.write_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    # The partial file keeps the suffix, so writers that add one (np.savez) write where expected.
    npz = tmp_path / "e.npz"
    seen = []
    wd.write_atomic(npz, lambda tmp: (seen.append(tmp.name), np.savez(tmp, x=np.arange(3))))
    assert seen == ["e.partial.npz"]
    np.testing.assert_array_equal(np.load(npz)["x"], np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npz", "sub"]


def test_flatten_joins_nested_keys():
    assert wd._flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}
    assert wd._flatten({}) == {}


def test_jsonable_makes_numpy_and_nan_plain_json():
    x = {1: np.float32(0.5), "a": (np.arange(2), [np.int64(3)]), "nan": float("nan"),
         "arr_nan": np.array([np.inf])}
    assert wd.jsonable(x) == {"1": 0.5, "a": [[0, 1], [3]], "nan": None, "arr_nan": [None]}
    json.dumps(wd.jsonable(x), allow_nan=False)


def test_unreadable_config_json_names_the_file(tmp_path):
    """Before (found by tests/test_fuzz_*.py): a config.json holding a JSON list escaped
    check_workdir_config as AttributeError, and read_config let json's and ConfigDict's own
    errors through (JSONDecodeError, RecursionError, ValueError for a key with a dot)."""
    path = tmp_path / "config.json"
    for text, message in [
        ("[1]", "holds a JSON list, not a run's settings"),
        ("{not json", r"is not valid JSON \(JSONDecodeError"),
        ("[" * 100_000, r"is not valid JSON \(RecursionError"),
        ('{"seed": 0, "a.b": 1}', r"does not hold a run's settings \(ConfigDict does not accept dots"),
    ]:
        path.write_text(text)
        with pytest.raises(UserError, match=rf"^{path}.*{message}"):
            wd.read_config(tmp_path)
    path.write_text("[1]")
    with pytest.raises(UserError, match=rf"^{path} holds a JSON list"):
        wd.check_workdir_config(tiny_config(), tmp_path)
