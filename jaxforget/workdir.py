"""A run's files on disk: run and cache paths, the config-change check, atomic writes, JSON.

Layout (``python -m jaxforget.main`` writes it; ``tools/purge_run.py`` and ``tools/reevaluate.py``
read it through these functions)::

    <workdir>/                        default runs/<method>_<data> (default_workdir)
      config.json  split.json         the run's settings and its forget/retain split
      checkpoints/  metrics_*.jsonl   training states and logs (jaxforget.trainer)
      embeddings/<state>_<set>.npz    the unlearned model's embeddings (embedding_path)
      results.json  results.md  unlearned_model/ ...
    <cache_dir>/                      default <workdir>/../cache (cache_root)
      base_models/<key>/              a fine-tuned base model (base_model_path)
      embeddings/<key>/<set>.npz      the original model's embeddings, shared by every method run
                                      on the same base model and split (embedding_path)

A base model's ``<key>`` (:func:`base_model_path`) hashes everything it depends on: the model, the
data, the pretraining and head settings, the split's training set and the base seed; the original
embeddings' key adds the whole split (which people are forgotten) and the flip setting. Every
file is written with :func:`write_atomic`, so an interrupted run leaves no torn file behind.

The lowest layer of the package next to ``ops`` and ``errors``: it imports no other module of
``jaxforget``, so data, evaluation and the runner can all use it. The configs and splits it reads
are duck-typed (``cfg.to_dict()`` blocks, ``split.to_json()``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
import numpy as np

from jaxforget.errors import UserError

# Fields that change only what is reported, how often things are logged or saved, or where shared
# caches live -- not what a run computes. Re-running a workdir with other values of these goes on
# with its checkpoints and stored embeddings; any other change is refused (check_workdir_config).
RERUN_FREE_FIELDS = ("evals", "eval.tsne", "eval.tsne_identities", "eval.index", "train",
                     "export_torch", "export_onnx", "cache_dir", "seeds", "distributed", "label")


# --------------------------------------------------------------------------------------------
# Atomic writes and JSON
# --------------------------------------------------------------------------------------------


def write_atomic(path: str | os.PathLike, data: str | bytes | Callable[[pathlib.Path], Any]
                 ) -> pathlib.Path:
    """Writes ``path`` so that an interruption leaves the old file or the new one, never a torn one.

    ``data`` is the text or bytes to write, or a callback that writes the file it is given (e.g.
    ``lambda tmp: np.savez(tmp, ...)``). The content goes to ``<stem>.partial<suffix>`` beside
    ``path`` (same folder and suffix, so writers that add a suffix keep it) and is then renamed
    over ``path``; a failed write removes the partial file. Parent folders are created.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.partial{path.suffix}")
    try:
        if callable(data):
            data(tmp)
        elif isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def jsonable(x: Any) -> Any:
    """``x`` with numpy arrays and scalars as plain lists and numbers, mapping keys as strings and
    non-finite floats as ``None`` (JSON has no NaN; null means "not defined", e.g. a metric with no
    query evaluated)."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        return jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json(path: str | os.PathLike, obj: Any) -> pathlib.Path:
    """``obj`` as indented JSON (two spaces, one trailing newline), written atomically."""
    return write_atomic(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(pathlib.Path(path).read_text())


def config_as_dict(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as plain JSON values (what ``config.json`` holds)."""
    return json.loads(cfg.to_json_best_effort())


def write_config(cfg: ml_collections.ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
    """``<workdir>/config.json``: the settings of the run (read back by :func:`read_config`)."""
    return write_atomic(workdir / "config.json", cfg.to_json_best_effort(indent=2) + "\n")


def _read_config_json(path: pathlib.Path) -> dict[str, Any]:
    """A run's ``config.json`` as a dict; anything else is a :class:`UserError` naming it."""
    try:
        obj = read_json(path)
    except (ValueError, RecursionError) as e:  # JSON or UTF-8 errors, absurd nesting
        raise UserError(f"{path} is not valid JSON ({type(e).__name__}: {e}); delete the workdir or use "
                        "another --workdir") from e
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a JSON {type(obj).__name__}, not a run's settings; delete the "
                        "workdir or use another --workdir")
    return obj


def read_config(run: pathlib.Path) -> ml_collections.ConfigDict:
    """The settings a finished run stored in its ``config.json``."""
    path = run / "config.json"
    try:
        return ml_collections.ConfigDict(_read_config_json(path))
    except (ValueError, TypeError) as e:  # e.g. a key with a dot, which no config field has
        raise UserError(f"{path} does not hold a run's settings ({e}); delete the workdir or use "
                        "another --workdir") from e


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------


def default_workdir(cfg) -> pathlib.Path:
    """``runs/<method>_<data>`` (``_demo`` for the synthetic demo): runs on different data sets
    never share a workdir."""
    suffix = "demo" if cfg.data.name == "synthetic" else cfg.data.name
    return pathlib.Path("runs") / f"{cfg.method.name}_{suffix}"


def cache_root(cfg, workdir: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(cfg.cache_dir or (workdir.parent / "cache"))


def base_seed(cfg) -> int:
    """The seed of the base model: ``config.base_seed``, or the run's seed when it is -1."""
    base = int(cfg.get("base_seed", -1))  # absent in the config.json of runs before the field
    return base if base >= 0 else int(cfg.seed)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _base_model_key(cfg, split, *, data_version: int) -> str:
    """Everything the base model depends on: model, data, pretraining, head, the split's training
    set (not which people are forgotten) and the base seed.

    ``data_version`` is the synthetic generator's version (``data.synthetic.GENERATOR_VERSION``):
    for ``data.name='synthetic'`` the images are made by code, and a new generator is new data.
    """
    model = cfg.model.to_dict()
    if model.get("init"):
        init = pathlib.Path(model["init"]).expanduser().resolve()
        model["init"] = str(init)
        if init.is_file():  # re-converted weights at the same path are another base model
            st = init.stat()
            model["init_file"] = [st.st_size, st.st_mtime_ns]
    data = cfg.data.to_dict()
    for key in ("root", "annotations", "landmarks"):
        if data.get(key):
            data[key] = str(pathlib.Path(data[key]).expanduser().resolve())
    if data.get("name") == "synthetic":
        data["generator_version"] = data_version
    return _digest({
        "model": model,
        "data": data,
        "pretrain": cfg.pretrain.to_dict(),
        "head": cfg.head.to_dict(),
        "training_set": split.training_set(),
        "base_seed": base_seed(cfg),
    })


def base_model_path(cfg, split, workdir: pathlib.Path, *, data_version: int) -> pathlib.Path:
    """Where the fine-tuned base model of this config and split is cached."""
    key = _base_model_key(cfg, split, data_version=data_version)
    return (cache_root(cfg, workdir) / "base_models" / key).resolve()


def embedding_path(cfg, split, workdir: pathlib.Path, state: str, name: str, *,
                   data_version: int) -> pathlib.Path:
    """Where the embeddings of set ``name`` under model ``state`` are stored: the original
    model's in the shared cache (every method run on the same base model and split reuses them),
    the unlearned model's in the run's ``embeddings/``."""
    if state == "original":
        key = _digest([_base_model_key(cfg, split, data_version=data_version), split.to_json(),
                       bool(cfg.eval.flip)])
        return cache_root(cfg, workdir) / "embeddings" / key / f"{name}.npz"
    return workdir / "embeddings" / f"{state}_{name}.npz"


# --------------------------------------------------------------------------------------------
# Re-running a workdir
# --------------------------------------------------------------------------------------------


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_workdir_config(cfg, workdir: pathlib.Path) -> None:
    """Refuses to continue a workdir whose stored ``config.json`` has other settings.

    Its split, checkpoints and stored embeddings belong to those settings: going on would resume
    (or re-report) the old run under the new config's name.
    """
    path = workdir / "config.json"
    if not path.exists():
        return
    old = _flatten(_read_config_json(path))
    new = _flatten(config_as_dict(cfg))
    free = RERUN_FREE_FIELDS
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k, "<absent>") != new.get(k, "<absent>")
                     and not any(k == f or k.startswith(f + ".") for f in free))
    if changed:
        shown = "; ".join(f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}"
                          for k in changed[:5])
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        raise UserError(
            f"{workdir} holds a run with other settings ({shown}{more}); its split, checkpoints "
            "and embeddings belong to those. Use another --workdir, or delete this one to start "
            "over.")
