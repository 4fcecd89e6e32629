"""One experiment: split -> base model -> evaluate -> unlearn -> evaluate -> report.

:func:`run` is what ``python -m jaxforget.main`` calls. For each seed it

1. builds the dataset source (``config.data``) and makes or reloads the forget/retain split
      (``<workdir>/split.json``);
2. loads the base model (``config.model.init``: a converted checkpoint, or a PyTorch ``.pth`` /
      ``.ckpt`` converted on the fly), or fine-tunes one first with CosFace when
      ``config.pretrain.steps > 0`` (cached and reused across runs);
3. embeds the evaluation sets with the original model and runs every protocol of
      ``config.evals``;
4. runs the unlearning method (``config.method``) through the shared training loop
      (:mod:`jaxforget.train`: checkpoints, automatic resume, JSONL metrics, forget-set CS);
5. embeds and evaluates again, then writes ``results.json``, ``results.md``, ``tsne.png`` and the
      unlearned backbone (``unlearned_model/``, plus ``unlearned_backbone.pth`` when
      ``config.export_torch``). The classifier head is not exported: its rows would still describe
      the forgotten identities.

Everything written goes under the workdir, which is printed first. Re-running on the same workdir
resumes: the split, the cached embeddings of the original model and the training checkpoints
are reused.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import pathlib
import sys
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxforget import config as config_lib
from jaxforget import sharding as shd
from jaxforget import train as train_lib

STATES = ("original", "unlearned")
# Sets every run embeds (head imprinting, centroid accuracy, t-SNE, forget CS during training).
OTHER_IDENTITIES = "other_identities"  # data.distractors: the data set's people outside the split
CORE_SETS = ("forget_train", "forget_test", "retain_train", "retain_test")


class UserError(Exception):
    """A problem the user can fix from the command line (a path, a field, a value)."""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def _require_path(value: str, field: str, data_name: str) -> str:
    where = config_lib.DATA_HELP.get(data_name, "")
    if not value:
        raise UserError(
            f"config field {field} is empty: set --config.{field}=/path/to/data ({where})."
        )
    if not os.path.exists(value):
        raise UserError(
            f"{field}={value!r} does not exist: set --config.{field} to the dataset"
            f" folder ({where})."
        )
    return value


def build_source(cfg: ml_collections.ConfigDict, input_size: tuple[int, int]):
    """The face source named by ``config.data`` at the model's input size."""
    from jaxforget.data import sources  # pylint: disable=import-outside-toplevel

    if cfg.data.name != "synthetic":
        _require_path(cfg.data.root, "data.root", cfg.data.name)
    try:
        return sources.source_from_config(cfg.data, input_size, seed=0)
    except (sources.DataError, ValueError) as e:
        raise UserError(f"config data.* ({cfg.data.name}): {e}") from e


def make_or_load_split(cfg, source, workdir: pathlib.Path):
    from jaxforget.data import splits  # pylint: disable=import-outside-toplevel

    path = workdir / "split.json"
    if path.exists():
        split = splits.Split.load(path)
        try:
            split.check_source(source)
        except splits.DataError as e:
            raise UserError(f"{path} was made for another data set: {e}. Use another --workdir "
                            "for this data, or delete the folder to start over.") from e
        _log(f"split: reloaded {path}")
        return split
    f = cfg.forget
    kwargs = dict(
        min_images=int(f.min_images),
        train_fraction=float(f.train_fraction),
        retain_min_images=int(cfg.retain.min_images),
        retain_train_fraction=float(cfg.retain.train_fraction),
        num_retain=int(cfg.retain.max_identities) or None,
        seed=int(cfg.seed),
        image_ids=source.image_ids,
    )
    if f.identities:
        kwargs["forget_ids"] = list(f.identities)
    else:
        kwargs["num_forget"] = int(f.num_identities)
    try:
        split = splits.make_split(source.identities, **kwargs)
    except splits.DataError as e:
        raise UserError(f"cannot split {source.name} with forget.*={f.to_dict()}: {e}") from e
    if shd.is_primary():  # every process draws the same split from the same seed
        split.save(path)
    _log(
        f"split: {len(split.forget_ids)} forget identities "
        f"({len(split.forget_train())} train / {len(split.forget_test())} test images), "
        f"{len(split.retain_ids)} retain identities; written to {path}"
    )
    return split


def _all_images(source, indices: np.ndarray) -> np.ndarray:
    """Decoded uint8 images of ``indices`` (small sets only: the forget test set)."""
    return np.stack([source[int(i)]["image"] for i in indices])


# --------------------------------------------------------------------------------------------
# Model state and training phases
# --------------------------------------------------------------------------------------------


def _context(bundle, cfg, num_classes: int):
    from jaxforget.methods import base  # pylint: disable=import-outside-toplevel

    return base.Context(
        apply_fn=bundle.module.apply,
        pixel_mean=bundle.pixel_mean,
        pixel_std=bundle.pixel_std,
        num_classes=num_classes,
        head_kind=cfg.head.kind,
        head_s=float(cfg.head.s),
        head_m=float(cfg.head.m),
    )


def _variables_of(state) -> dict[str, Any]:
    v = {"params": state.params}
    if state.batch_stats is not None:
        v["batch_stats"] = state.batch_stats
    return v


def _train_iterator(source, indices, split, batch_size: int, k: int, seed: int, what: str):
    from jaxforget.data import pipeline  # pylint: disable=import-outside-toplevel

    if batch_size % k:
        raise UserError(
            f"{what}.batch_size={batch_size} must be a multiple of "
            f"{what}.images_per_identity={k} (batches are P identities x K images)."
        )
    ds = pipeline.train_dataset(
        source,
        indices,
        identities_per_batch=batch_size // k,
        images_per_identity=k,
        seed=seed,
        label_map=split.class_index,
        flip=False,
    )  # the update step flips on device
    return iter(ds)


def run_phase(
    *,
    phase: str,
    method_name: str,
    method_cfg,
    cfg,
    bundle,
    variables,
    head,
    iterators: Mapping[str, Any],
    workdir: pathlib.Path,
    num_classes: int,
    mesh,
    saliency_batches=None,
    hook=None,
) -> tuple[dict[str, Any], Any]:
    """Trains ``variables`` with a method for ``method_cfg.steps`` steps; returns (variables, head)."""
    from jaxforget import methods  # pylint: disable=import-outside-toplevel

    method = methods.get_method(method_name)
    ctx = _context(bundle, cfg, num_classes)
    rng = jax.random.PRNGKey(int(cfg.seed) + 1000 * (phase == "pretrain"))
    state = methods.init_state(method, method_cfg, variables, head, rng)
    hp = methods.resolve_hparams(method_cfg, method)
    if hp.trainable:
        sizes = jax.tree.map(np.size, state.params)
        kept = methods.trainable_mask(hp.trainable, sizes)
        n_train = sum(n for n, k in zip(jax.tree.leaves(sizes), jax.tree.leaves(kept)) if k)
        _log(f"[{phase}] method.trainable={hp.trainable!r}: training {n_train:,} of "
             f"{sum(jax.tree.leaves(sizes)):,} backbone parameters")
    start = train_lib.latest_checkpoint_step(workdir, phase)
    if hp.salun_fraction > 0 and start is None:
        # The mask is computed once from the original model; a resumed run restores it with the
        # optimizer state from the checkpoint.
        _log(
            f"[{phase}] SalUn: ranking weights by the forget-loss gradient "
            f"(keeping {hp.salun_fraction:.0%})"
        )
        loss = "cosface" if method.uses_head else "dispersion"
        mask = methods.compute_saliency_mask(
            method,
            ctx,
            state,
            saliency_batches(),
            hp.salun_fraction,
            loss=loss,
            method_cfg=method_cfg,
        )
        state = methods.init_state(method, method_cfg, variables, head, rng, saliency_mask=mask)
    for key in method.data_needs(method_cfg):
        shd.check_divisible(
            int(
                method_cfg.batch_size
                if key == "forget"
                else method_cfg.get("retain_batch_size", method_cfg.batch_size)
            ),
            mesh,
            f"{phase} batch size for '{key}'",
        )
    state = shd.replicate(state, mesh)
    update = jax.jit(methods.make_update_step(method, method_cfg, ctx), donate_argnums=0)
    state = train_lib.train_loop(
        phase=phase,
        state=state,
        update_fn=update,
        iterators={k: iterators[k] for k in method.data_needs(method_cfg)},
        workdir=workdir,
        steps=int(method_cfg.steps),
        mesh=mesh,
        checkpoint_every=int(cfg.train.checkpoint_every),
        log_every=int(cfg.train.log_every),
        config_dict=json.loads(cfg.to_json_best_effort()),
        hook=hook,
        hook_every=int(cfg.train.cs_every) if hook else 0,
    )
    return jax.device_get(_variables_of(state)), jax.device_get(state.head)


def cache_root(cfg, workdir: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(cfg.cache_dir or (workdir.parent / "cache"))


def _cache_key(cfg, split, *extra) -> str:
    """Everything the base model (and so the original embeddings) depends on."""
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
        from jaxforget.data import synthetic  # pylint: disable=import-outside-toplevel

        data["generator_version"] = synthetic.GENERATOR_VERSION
    blob = json.dumps(
        {
            "model": model,
            "data": data,
            "pretrain": cfg.pretrain.to_dict(),
            "head": cfg.head.to_dict(),
            "split": split.to_json(),
            "extra": extra,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def base_model_path(cfg, split, workdir: pathlib.Path) -> pathlib.Path:
    """Where the fine-tuned base model of this config and split is cached."""
    return (cache_root(cfg, workdir) / "base_models" / _cache_key(cfg, split)).resolve()


def pretrain(cfg, bundle, variables, source, split, workdir: pathlib.Path, mesh):
    """CosFace fine-tuning on every train image of the split (forget and retain identities).

    The result (backbone and head) is cached under ``<cache_dir>/base_models`` keyed by the
    model, data, split and settings, so the demo trains its base model once.
    """
    from jaxforget import checkpoint  # pylint: disable=import-outside-toplevel

    path = base_model_path(cfg, split, workdir)
    if checkpoint.is_variables_checkpoint(path):
        stored, meta = checkpoint.load_variables(path)
        _log(f"[pretrain] using the cached base model {path}")
        head = stored.pop("head")
        return stored, head
    p = cfg.pretrain
    method_cfg = ml_collections.ConfigDict(
        dict(
            name="finetune",
            steps=int(p.steps),
            lr=float(p.lr),
            optimizer=p.optimizer,
            momentum=float(p.momentum),
            weight_decay=float(p.weight_decay),
            schedule=p.schedule,
            warmup_steps=int(p.warmup_steps),
            batch_size=int(p.batch_size),
            retain_batch_size=int(p.batch_size),
        )
    )
    train_idx = np.concatenate([split.forget_train(), split.retain_train()])
    it = _train_iterator(
        source,
        train_idx,
        split,
        int(p.batch_size),
        int(p.images_per_identity),
        int(cfg.seed) + 7,
        "pretrain",
    )
    rng = np.random.default_rng(int(cfg.seed))
    head = rng.standard_normal((split.num_classes, bundle.embedding_size)).astype(np.float32)
    head /= np.linalg.norm(head, axis=1, keepdims=True)
    _log(
        f"[pretrain] CosFace fine-tuning of the base model: {p.steps} steps on "
        f"{len(train_idx)} images of {split.num_classes} identities"
    )
    variables, head = run_phase(
        phase="pretrain",
        method_name="finetune",
        method_cfg=method_cfg,
        cfg=cfg,
        bundle=bundle,
        variables=variables,
        head=head,
        iterators={"retain": it},
        workdir=workdir,
        num_classes=split.num_classes,
        mesh=mesh,
    )
    checkpoint.save_variables(
        path,
        {**variables, "head": np.asarray(head)},
        {"model": bundle.config(), "head": cfg.head.to_dict(), "classes": split.num_classes},
    )
    _log(f"[pretrain] base model cached in {path}")
    return variables, head


def imprint_head(train_sets, num_classes: int, dim: int) -> np.ndarray:
    """Class weights = normalised mean embedding of each identity's train images."""
    w = np.zeros((num_classes, dim), np.float32)
    for e in train_sets:
        np.add.at(w, e.labels, e.emb)
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    missing = np.nonzero(norms[:, 0] == 0)[0]
    if missing.size:  # identities without train images get a random direction
        w[missing] = np.random.default_rng(0).standard_normal((missing.size, dim))
        norms = np.linalg.norm(w, axis=1, keepdims=True)
    return w / norms


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def embedding_path(cfg, split, workdir: pathlib.Path, state: str, name: str) -> pathlib.Path:
    """Where the embeddings of set ``name`` under model ``state`` are stored: the original
    model's in the shared cache (every method run on the same base model and split reuses them),
    the unlearned model's in the run's ``embeddings/``."""
    if state == "original":
        key = _cache_key(cfg, split, bool(cfg.eval.flip))
        return cache_root(cfg, workdir) / "embeddings" / key / f"{name}.npz"
    return workdir / "embeddings" / f"{state}_{name}.npz"


def load_stored_sets(run: pathlib.Path, evals: tuple[str, ...], state: str):
    """The sets that protocols ``evals`` need, as stored by the finished run in ``run`` under
    model ``state``; returns ``(cfg, split, sets)``. No model is run: a missing file is a
    :class:`UserError` naming it (distractor galleries are never stored with a run)."""
    for name in ("config.json", "split.json"):
        if not (run / name).exists():
            raise UserError(f"{run}: no {name}; is this a finished jaxforget run directory?")
    cfg = ml_collections.ConfigDict(json.loads((run / "config.json").read_text()))
    from jaxforget.data import splits  # pylint: disable=import-outside-toplevel

    cfg.evals = tuple(evals)
    split = splits.Split.load(run / "split.json")
    names = _needed_sets(cfg)
    if "distractors" in names:
        raise UserError(f"{evals}: the distractor gallery is not stored with a run; re-run the "
                        "experiment with data.distractors and these evals")
    for name in names:
        path = embedding_path(cfg, split, run, state, name)
        if name != "retain_all" and not path.exists():
            raise UserError(f"{run}: the {state} embeddings of {name} are not stored ({path}); "
                            "re-run the experiment with these evals")
    return cfg, split, embed_sets(cfg, None, None, None, split, names, None, run, state)


def embed_sets(cfg, bundle, variables, source, split, names, distractors, workdir, state: str):
    """Embeds every named set (cached as ``embeddings/<state>_<name>.npz``)."""
    from jaxforget.data import pipeline  # pylint: disable=import-outside-toplevel
    import jaxforget.eval as embed_lib  # pylint: disable=import-outside-toplevel

    out = {}
    for name in names:
        if name == "retain_all":  # every image of the retain identities (train and test)
            out[name] = embed_lib.Embeddings.concatenate([out["retain_train"], out["retain_test"]])
            continue
        path = embedding_path(cfg, split, workdir, state, name)
        if path.exists():
            out[name] = embed_lib.Embeddings.load(path)
            continue
        if name == "distractors":
            src, idx, labels = distractors, None, np.full(len(distractors), -1, np.int32)
            batches = pipeline.eval_dataset(src, batch_size=int(cfg.eval.batch_size), labels=labels)
        else:
            idx = getattr(split, name)()
            batches = pipeline.eval_dataset(
                source, idx, batch_size=int(cfg.eval.batch_size), label_map=split.class_index
            )
        out[name] = embed_lib.embed_model(
            bundle,
            variables,
            batches,
            flip=bool(cfg.eval.flip),
            progress=f"[{state}] embed {name}",
            total=batches.num_images,
        )
        if shd.is_primary():
            tmp = path.with_name(path.stem + ".partial.npz")  # an interruption leaves no torn file
            out[name].save(tmp)
            os.replace(tmp, path)
    return out


def evaluate(cfg, sets) -> dict[str, dict[str, Any]]:
    from jaxforget.eval import protocols  # pylint: disable=import-outside-toplevel

    return protocols.run_protocols(tuple(cfg.evals), sets, seed=int(cfg.seed))


def _needed_sets(cfg) -> tuple[str, ...]:
    from jaxforget.eval import protocols  # pylint: disable=import-outside-toplevel

    try:
        need = protocols.required_sets(tuple(cfg.evals))
    except KeyError as e:
        raise UserError(f"config field evals: {e.args[0]}") from e
    unsupported = sorted(need - set(CORE_SETS) - {"distractors", "retain_all"})
    if unsupported:
        raise UserError(
            f"evals={tuple(cfg.evals)} need the sets {unsupported}, which this runner "
            "does not build; use forget_base, forget_extended and retain_search."
        )
    extra = tuple(n for n in ("distractors", "retain_all") if n in need)
    return tuple(CORE_SETS) + extra


# --------------------------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------------------------


def validate(cfg) -> None:
    from jaxforget import methods  # pylint: disable=import-outside-toplevel

    try:
        methods.get_method(cfg.method.name)
    except (KeyError, ValueError) as e:
        raise UserError(e.args[0]) from e
    if cfg.method.name != cfg.config_method:
        raise UserError(
            f"method.name={cfg.method.name!r}, but this config holds the defaults of "
            f"{cfg.config_method!r} (learning rate, steps, data needs); use the config of "
            f"{cfg.method.name!r} instead (configs/{cfg.method.name}.py in this repository, or "
            f"jaxforget.config.base_config({cfg.method.name!r}) in your own config file).")
    try:
        methods.resolve_hparams(cfg.method, methods.get_method(cfg.method.name))
    except ValueError as e:
        raise UserError(str(e)) from e
    if cfg.model.init and not os.path.exists(os.path.expanduser(cfg.model.init)):
        raise UserError(
            f"model.init={cfg.model.init!r} does not exist: give a checkpoint converted"
            " by tools/convert_insightface.py, an InsightFace .pth or a MobileFaceNet"
            " .ckpt (or leave it empty for random weights / config.pretrain)."
        )
    if cfg.data.name not in config_lib.DATA_HELP:
        raise UserError(f"config field data.name={cfg.data.name!r} is not a known data set; use "
                        f"one of {', '.join(config_lib.DATA_HELP)} ('folder': one sub-folder of "
                        "images per identity).")
    if cfg.data.name != "synthetic":
        _require_path(cfg.data.root, "data.root", cfg.data.name)
    if (cfg.data.distractors and cfg.data.distractors != OTHER_IDENTITIES
            and not os.path.isdir(cfg.data.distractors)):
        raise UserError(
            f"data.distractors={cfg.data.distractors!r} is not a folder of images; give one, or "
            f"'{OTHER_IDENTITIES}' for the dataset's images of people outside the split."
        )
    _check_batch_sizes(cfg)


def _check_batch_sizes(cfg) -> None:
    """Batch sizes must be P x K and split evenly over the devices: checked before any work
    (pretraining and embedding take minutes) rather than when the first batch is drawn."""
    from jaxforget import methods  # pylint: disable=import-outside-toplevel

    m = cfg.method
    method = methods.get_method(m.name)
    k = ("method.images_per_identity", int(m.images_per_identity))
    fields = {"forget": ("method.batch_size", int(m.batch_size)),
              "retain": ("method.retain_batch_size", int(m.get("retain_batch_size", m.batch_size)))}
    todo = [] if method.closed_form else [fields[key] + k for key in method.data_needs(m)]
    if int(cfg.pretrain.steps) > 0:
        todo.append(("pretrain.batch_size", int(cfg.pretrain.batch_size),
                     "pretrain.images_per_identity", int(cfg.pretrain.images_per_identity)))
    n = jax.device_count()
    for field, size, k_field, k_value in todo:
        if k_value < 1 or size % k_value:
            raise UserError(f"{field}={size} must be a multiple of {k_field}={k_value} (batches "
                            "are P identities x K images).")
        if size % n:
            raise UserError(f"{field}={size} is not divisible by the {n} devices of the "
                            f"data-parallel mesh; set it to a multiple of {n}.")


def build_distractors(cfg, source, split, input_size: tuple[int, int]):
    """The distractor gallery of the extended protocols (``config.data.distractors``).

    A folder of images (identity-less), or ``'other_identities'``: the dataset's own images of
    people who are neither forget nor retain identities (e.g. CelebA identities with too few
    images), ``data.num_distractors`` of them drawn with ``seed`` (0: all).
    """
    from jaxforget.data import sources  # pylint: disable=import-outside-toplevel

    if cfg.data.distractors != OTHER_IDENTITIES:
        return sources.FolderSource(cfg.data.distractors, input_size, unlabelled=True)
    used = np.asarray(list(split.forget_ids) + list(split.retain_ids), dtype=source.identities.dtype)
    idx = np.flatnonzero(~np.isin(source.identities, used))
    n = int(cfg.data.num_distractors)
    if n and n < len(idx):
        idx = np.sort(np.random.default_rng(int(cfg.seed)).choice(idx, n, replace=False))
    if not len(idx):
        raise UserError(
            "data.distractors='other_identities': every image of the data set belongs to a forget "
            "or retain identity; lower retain.max_identities or give a folder of distractors."
        )
    _log(f"distractors: {len(idx)} images of people outside the split")
    return sources.SubsetSource(source, idx)


def default_workdir(cfg) -> pathlib.Path:
    """``runs/<method>_<data>`` (``_demo`` for the synthetic demo): runs on different data sets
    never share a workdir."""
    suffix = "demo" if cfg.data.name == "synthetic" else cfg.data.name
    return pathlib.Path("runs") / f"{cfg.method.name}_{suffix}"


# Fields that change only what is reported, how often things are logged or saved, or where shared
# caches live -- not what a run computes. Re-running a workdir with other values of these goes on
# with its checkpoints and stored embeddings; any other change is refused (check_workdir_config).
RERUN_FREE_FIELDS = ("evals", "eval.tsne", "eval.tsne_identities", "eval.index", "train",
                     "export_torch", "cache_dir", "seeds", "distributed")


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
    try:
        old = _flatten(json.loads(path.read_text()))
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON ({e}); delete the workdir or use another "
                        "--workdir") from e
    new = _flatten(json.loads(cfg.to_json_best_effort()))
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


def run(cfg: ml_collections.ConfigDict, workdir: str | os.PathLike | None = None) -> dict:
    """Runs the configured experiment (every seed of ``cfg.seeds``, or ``cfg.seed``)."""
    shd.maybe_initialize_distributed(**cfg.distributed.to_dict())
    validate(cfg)
    workdir = pathlib.Path(workdir or default_workdir(cfg)).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    _log(
        f"jaxforget: method={cfg.method.name} model={cfg.model.name} data={cfg.data.name}; "
        f"writing to {workdir}"
    )
    seeds = tuple(int(s) for s in cfg.seeds)
    if not seeds:
        return run_one(cfg, workdir)
    from jaxforget.eval import report  # pylint: disable=import-outside-toplevel

    runs = []
    for s in seeds:
        c = copy.deepcopy(cfg)
        with c.unlocked():
            c.seed = s
            c.seeds = ()
        _log(f"=== seed {s} ===")
        runs.append(run_one(c, workdir / f"seed_{s}"))
    if not shd.is_primary():
        return {"runs": runs}
    table = report.aggregate_markdown(report.aggregate(runs))
    (workdir / "results.md").write_text(table + "\n")
    (workdir / "results.json").write_text(json.dumps(report.aggregate(runs), indent=2) + "\n")
    print(table)
    _log(f"mean +- std over seeds {seeds} written to {workdir / 'results.md'}")
    return {"runs": runs}


def run_one(cfg, workdir: pathlib.Path) -> dict:
    from jaxforget import checkpoint  # pylint: disable=import-outside-toplevel
    from jaxforget.eval import report  # pylint: disable=import-outside-toplevel
    from jaxforget.models import registry  # pylint: disable=import-outside-toplevel

    t_start = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    check_workdir_config(cfg, workdir)
    if shd.is_primary():
        (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2) + "\n")
    mesh = shd.make_mesh()

    try:
        bundle, variables = registry.load_pretrained(cfg.model)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"model.init / model.name: {e}") from e
    source = build_source(cfg, tuple(bundle.input_size))
    split = make_or_load_split(cfg, source, workdir)
    distractors = None
    names = _needed_sets(cfg)
    if "distractors" in names:
        distractors = build_distractors(cfg, source, split, tuple(bundle.input_size))

    head = None
    if int(cfg.pretrain.steps) > 0:
        variables, head = pretrain(cfg, bundle, variables, source, split, workdir, mesh)

    sets0 = embed_sets(
        cfg, bundle, variables, source, split, names, distractors, workdir, "original"
    )
    if head is None:
        head = imprint_head(
            [sets0["forget_train"], sets0["retain_train"]], split.num_classes, bundle.embedding_size
        )
    results = {"original": evaluate(cfg, sets0)}

    # Unlearning.
    from jaxforget import methods  # pylint: disable=import-outside-toplevel
    from jaxforget.methods import projection  # pylint: disable=import-outside-toplevel

    m = cfg.method
    method = methods.get_method(m.name)
    if methods.resolve_hparams(m, method).project:
        ft = sets0["forget_train"]
        if ft.dim != bundle.embedding_size:
            raise UserError(
                f"method.project: the forget-train embeddings have {ft.dim} dims, the model "
                f"{bundle.embedding_size} (eval.flip='concat'); use eval.flip=True or False."
            )
        variables, info = projection.project_identities(bundle.family, variables, ft.emb, ft.labels)
        _log(
            f"[unlearn] projection: removed {info['removed_dims']} centroid directions of "
            f"{info['identities']} forget identities from the embedding"
        )
    if method.closed_form:
        variables1 = variables
    else:
        variables1 = _train_method(cfg, bundle, variables, head, source, split, workdir, mesh)

    sets1 = embed_sets(
        cfg, bundle, variables1, source, split, names, distractors, workdir, "unlearned"
    )
    results["unlearned"] = evaluate(cfg, sets1)
    meta = {
        "method": m.name,
        "seed": int(cfg.seed),
        "model": cfg.model.name,
        "data": cfg.data.name,
        "steps": 0 if method.closed_form else int(m.steps),
        "forget_identities": [str(i) for i in split.forget_ids],
        "wall_time_s": round(time.perf_counter() - t_start, 1),
    }
    # The model first: a later failure (the t-SNE figure, say) must not lose it.
    out_dir = workdir / "unlearned_model"
    checkpoint.save_variables(
        out_dir,
        variables1,
        {"model": bundle.config(), "method": m.name, "forgotten": meta["forget_identities"]},
    )
    if cfg.export_torch and shd.is_primary():
        from jaxforget import convert  # pylint: disable=import-outside-toplevel

        sd = convert.flax_to_torch(
            variables1, bundle.fixed_parameters(), registry.module_order(bundle)
        )
        convert.save_torch_state_dict(sd, workdir / "unlearned_backbone.pth")
    results["meta"] = meta
    if not shd.is_primary():
        return results
    json_path, md_path = report.write_results(workdir, results, meta)

    if cfg.eval.tsne:
        from jaxforget.eval import plots  # pylint: disable=import-outside-toplevel

        forget_labels = sorted({int(v) for v in sets0["forget_test"].labels})
        before = _concat(sets0["forget_test"], sets0["retain_test"])
        after = _concat(sets1["forget_test"], sets1["retain_test"])
        plots.tsne_before_after(
            before,
            after,
            forget_labels,
            workdir / "tsne.png",
            num_retain_ids=int(cfg.eval.tsne_identities),
            seed=int(cfg.seed),
            title=f"{m.name}: forget vs retain identities",
            perplexity=min(30.0, max(5.0, (len(before) - 1) / 4)),
        )
    print(md_path.read_text())
    _log(f"wrote {json_path}, {md_path}, {out_dir} in {meta['wall_time_s']:.0f}s")
    return results


def _train_method(cfg, bundle, variables, head, source, split, workdir: pathlib.Path, mesh):
    """Runs the configured (trained) method on the forget / retain train images; returns the
    unlearned variables."""
    m = cfg.method
    k = int(m.images_per_identity)
    iterators = {
        "forget": _train_iterator(
            source, split.forget_train(), split, int(m.batch_size), k, int(cfg.seed), "method"
        ),
        "retain": _train_iterator(
            source,
            split.retain_train(),
            split,
            int(m.get("retain_batch_size", m.batch_size)),
            k,
            int(cfg.seed) + 1,
            "method",
        ),
    }

    def saliency_batches():
        it = _train_iterator(
            source, split.forget_train(), split, int(m.batch_size), k, int(cfg.seed) + 2, "method"
        )
        return [next(it) for _ in range(int(m.salun_batches))]

    forget_test_images = _all_images(source, split.forget_test())
    forget_test_labels = split.labels(np.asarray(source.identities)[split.forget_test()])
    cs_fn = _make_cs_hook(bundle, forget_test_images, forget_test_labels)
    variables1, _ = run_phase(
        phase="unlearn",
        method_name=m.name,
        method_cfg=m,
        cfg=cfg,
        bundle=bundle,
        variables=variables,
        head=head,
        iterators=iterators,
        workdir=workdir,
        num_classes=split.num_classes,
        mesh=mesh,
        saliency_batches=saliency_batches,
        hook=lambda step, state: cs_fn(_variables_of(state)),
    )
    return variables1


def _concat(a, b):
    from jaxforget.eval.embed import Embeddings  # pylint: disable=import-outside-toplevel

    return Embeddings.concatenate([a, b])


def _make_cs_hook(bundle, images: np.ndarray, labels: np.ndarray):
    """Forget-test compactness (CS) of the model being trained, for the metrics log."""
    import jaxforget.eval as embed_lib  # pylint: disable=import-outside-toplevel
    from jaxforget.eval import metrics  # pylint: disable=import-outside-toplevel

    fn = jax.jit(
        embed_lib.make_embed_fn(
            functools.partial(bundle.module.apply, train=False),
            bundle.pixel_mean,
            bundle.pixel_std,
            flip=False,
        )
    )

    def hook(variables) -> dict[str, float]:
        z = np.concatenate(
            [
                np.asarray(fn(variables, jnp.asarray(images[i : i + 256])))
                for i in range(0, len(images), 256)
            ]
        )
        return {"forget_cs": float(metrics.compactness_score(z, labels)["CS"])}

    return hook
