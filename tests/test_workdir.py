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
    def to_json(self):
        return {"forget": ["a", "b"], "retain": ["c"], "seed": 3}


def _cfg(name="synthetic"):
    return ml_collections.ConfigDict(dict(
        model=dict(name="iresnet18", init="", embedding_size=32),
        data=dict(name=name, root="" if name == "synthetic" else "/data/x", num_identities=16),
        pretrain=dict(steps=2, lr=0.1), head=dict(kind="cosface", s=64.0, m=0.4),
        eval=dict(flip=True), cache_dir="/cache"))


def test_cache_keys_and_paths_are_those_of_earlier_runs():
    """The keys equal those of the runner before the move (caches of earlier runs stay valid)."""
    run = pathlib.Path("/runs/a")
    assert wd._cache_key(_cfg(), _Split(), data_version=1) == "8f20ff17fcac7e6c"
    assert wd._cache_key(_cfg(), _Split(), True, data_version=1) == "33fe72a27ce01d94"
    assert wd._cache_key(_cfg("folder"), _Split(), data_version=1) == "4c355f41400b953f"
    assert wd.base_model_path(_cfg(), _Split(), run, data_version=1) == pathlib.Path(
        "/cache/base_models/8f20ff17fcac7e6c")
    assert wd.embedding_path(_cfg(), _Split(), run, "original", "forget_test",
                             data_version=1) == pathlib.Path(
        "/cache/embeddings/33fe72a27ce01d94/forget_test.npz")
    assert wd.embedding_path(_cfg(), _Split(), run, "unlearned", "forget_test",
                             data_version=1) == run / "embeddings" / "unlearned_forget_test.npz"
    # A new synthetic generator is new data; the version does not matter for files on disk.
    assert wd._cache_key(_cfg(), _Split(), data_version=2) != "8f20ff17fcac7e6c"
    assert wd._cache_key(_cfg("folder"), _Split(), data_version=2) == "4c355f41400b953f"
    # Without cache_dir the cache sits beside the workdir.
    c = _cfg()
    c.cache_dir = ""
    assert wd.cache_root(c, run) == pathlib.Path("/runs/cache")


def test_cache_key_follows_a_reconverted_checkpoint(tmp_path):
    ckpt = tmp_path / "w.npz"
    ckpt.write_bytes(b"one")
    c = _cfg()
    c.model.init = str(ckpt)
    k1 = wd._cache_key(c, _Split(), data_version=1)
    ckpt.write_bytes(b"other weights")  # same path, other size: another base model
    assert wd._cache_key(c, _Split(), data_version=1) != k1


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
