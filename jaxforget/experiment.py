"""One experiment: split -> base model -> evaluate -> unlearn -> evaluate -> report.

:func:`run` is what ``python -m jaxforget.main`` calls. For each seed it

1. builds the dataset source (``config.data``) and makes or reloads the forget/retain split
      (``<workdir>/split.json``);
2. loads the base model (``config.model.init``: a converted checkpoint, or a PyTorch ``.pth`` /
      ``.ckpt`` converted on the fly), or fine-tunes one first with CosFace when
      ``config.pretrain.steps > 0`` (cached and reused across runs, and across seeds when
      ``config.base_seed`` fixes it);
3. embeds the evaluation sets with the original model (:mod:`jaxforget.eval.sets`: the sets the
      protocols need, stored and reused) and runs every protocol of ``config.evals``;
4. runs the unlearning method (``config.method``) through the one recipe
      (:func:`jaxforget.trainer.unlearn`: checkpoints, automatic resume, JSONL metrics,
      forget-set CS), evaluating the models of ``config.train.curve_steps`` on the way;
5. embeds and evaluates again, then writes ``results.json``, ``results.md``, ``tsne.png`` and the
      unlearned backbone (``unlearned_model/``, plus ``unlearned_backbone.pth`` when
      ``config.export_torch``, ``unlearned_backbone.onnx`` when ``config.export_onnx``). The
      classifier head is not exported: its rows would still describe the forgotten identities.

Everything written goes under the workdir, which is printed first (its layout, the caches and
the atomic writes: :mod:`jaxforget.workdir`; the config checks made before any work:
:mod:`jaxforget.validation`). Re-running on the same workdir resumes: the split, the cached
embeddings of the original model and the training checkpoints are reused.
"""

from __future__ import annotations

import copy
import os
import pathlib
import sys
import time
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np

from jaxforget import methods
from jaxforget import sharding as shd
from jaxforget import trainer, validation
from jaxforget import workdir as wd
from jaxforget.data import factory, pipeline, splits, synthetic
from jaxforget.data import source as source_lib
from jaxforget.errors import UserError
from jaxforget.eval import plots, protocols, report
from jaxforget.eval import sets as eval_sets
from jaxforget.eval.embed import Embeddings, embed_model
from jaxforget.io import checkpoint
from jaxforget.methods import projection
from jaxforget.models import folded_bn, loading, onnx_export
from jaxforget.models.registry import family_of


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def build_source(cfg: ml_collections.ConfigDict, input_size: tuple[int, int]):
    """The face source named by ``config.data`` at the model's input size."""
    if cfg.data.name != "synthetic":
        validation.require_path(cfg.data.root, "data.root", cfg.data.name)
    try:
        return factory.source_from_config(cfg.data, input_size, seed=0)
    except (source_lib.DataError, ValueError) as e:
        raise UserError(f"config data.* ({cfg.data.name}): {e}") from e


def make_or_load_split(cfg, source, workdir: pathlib.Path):
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
        halves_seed=int(cfg.base_seed) if int(cfg.base_seed) >= 0 else None,
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


# --------------------------------------------------------------------------------------------
# Model state and training phases
# --------------------------------------------------------------------------------------------


def _context(bundle, cfg, num_classes: int) -> methods.Context:
    return methods.Context(apply_fn=bundle.module.apply, pixel_mean=bundle.pixel_mean,
                           pixel_std=bundle.pixel_std, num_classes=num_classes,
                           head_kind=cfg.head.kind, head_s=float(cfg.head.s),
                           head_m=float(cfg.head.m))


def fit_batches(cfg, source, split) -> dict[str, int]:
    """The size of each P x K batch the run draws, by config field: the configured one, or with
    P lowered to the identities of its set when they are fewer (:func:`validation.fit_batch`),
    said in a log line. Made once the split is known, before any training or embedding."""
    m, p = cfg.method, cfg.pretrain
    train = np.concatenate([split.forget_train(), split.retain_train()])
    todo = []  # (field, batch size, K, indices, what)
    if int(p.steps) > 0:
        todo.append(("pretrain.batch_size", int(p.batch_size), int(p.images_per_identity), train,
                     "train"))
    method = methods.get_method(m.name)
    if not method.closed_form:
        k = int(m.images_per_identity)
        todo.append(("method.batch_size", int(m.batch_size), k, split.forget_train(), "forget train"))
        todo.append(("method.retain_batch_size", int(m.get("retain_batch_size", m.batch_size)), k,
                     split.retain_train(), "retain train"))
    out = {}
    for field, size, k, indices, what in todo:
        identities = len(np.unique(np.asarray(source.identities)[np.asarray(indices)]))
        out[field] = validation.fit_batch(field, size, k, identities)
        if out[field] != size:
            _log(f"{field}={size} is P={size // k} identities x K={k} images, but the {what} set "
                 f"has {identities}: batches of P={out[field] // k} x K={k} = {out[field]}")
    return out


def _train_iterator(source, indices, split, batch_size: int, k: int, seed: int):
    ds = pipeline.train_dataset(source, indices, identities_per_batch=batch_size // k,
                                images_per_identity=k, seed=seed, label_map=split.class_index,
                                flip=False)  # the update step flips on device
    return iter(ds)


def run_phase(*, phase: str, method_name: str, method_cfg, cfg, bundle, variables, head,
              iterators: Mapping[str, Any], workdir: pathlib.Path, num_classes: int, mesh, seed: int,
              saliency_batches=None, hook=None, hook_every: int = 0) -> tuple[dict[str, Any], Any]:
    """Trains ``variables`` with a method for ``method_cfg.steps`` steps; returns (variables, head)."""
    result = trainer.unlearn(
        method_name, method_cfg, _context(bundle, cfg, num_classes), variables, iterators,
        rng=jax.random.PRNGKey(seed + 1000 * (phase == "pretrain")), head=head,
        workdir=workdir, phase=phase, mesh=mesh, saliency_batches=saliency_batches, hook=hook,
        hook_every=hook_every if hook else 0,
        checkpoint_every=int(cfg.train.checkpoint_every), log_every=int(cfg.train.log_every),
        config=wd.config_as_dict(cfg),
    )
    return result.variables, result.head


def pretrain(cfg, bundle, variables, source, split, workdir: pathlib.Path, mesh, batch: int):
    """CosFace fine-tuning on every train image of the split (forget and retain identities).

    The result (backbone and head) is cached under ``<cache_dir>/base_models`` keyed by the
    model, data, the split's training set and settings, so the demo trains its base model once
    (and with a fixed ``base_seed`` every seed reuses one).
    """
    seed = wd.base_seed(cfg)
    path = wd.base_model_path(cfg, split, workdir, data_version=synthetic.GENERATOR_VERSION)
    if checkpoint.is_variables_checkpoint(path):
        stored, meta = checkpoint.load_variables(path)
        _log(f"[pretrain] using the cached base model {path}")
        head = stored.pop("head")
        return stored, head
    p = cfg.pretrain
    method_cfg = ml_collections.ConfigDict(dict(
        name="finetune", steps=int(p.steps), lr=float(p.lr), optimizer=p.optimizer,
        momentum=float(p.momentum), weight_decay=float(p.weight_decay), schedule=p.schedule,
        warmup_steps=int(p.warmup_steps), batch_size=int(p.batch_size),
        retain_batch_size=int(p.batch_size), bn_mode=str(p.bn_mode),
    ))
    train_idx = np.concatenate([split.forget_train(), split.retain_train()])
    it = _train_iterator(source, train_idx, split, batch, int(p.images_per_identity), seed + 7)
    if p.head_init == "imprint":
        batches = pipeline.eval_dataset(source, train_idx, batch_size=int(cfg.eval.batch_size),
                                        label_map=split.class_index)
        train = embed_model(bundle, variables, batches, flip=bool(cfg.eval.flip),
                            progress="[pretrain] imprint the head", total=batches.num_images)
        head = eval_sets.imprint_head([train], split.num_classes, bundle.embedding_size)
    elif p.head_init == "random":
        rng = np.random.default_rng(seed)
        head = rng.standard_normal((split.num_classes, bundle.embedding_size)).astype(np.float32)
        head /= np.linalg.norm(head, axis=1, keepdims=True)
    else:
        raise UserError(f"pretrain.head_init={p.head_init!r}: use 'random' or 'imprint'")
    _log(
        f"[pretrain] CosFace fine-tuning of the base model: {p.steps} steps on "
        f"{len(train_idx)} images of {split.num_classes} identities"
    )
    variables, head = run_phase(
        phase="pretrain", method_name="finetune", method_cfg=method_cfg, cfg=cfg, bundle=bundle,
        variables=variables, head=head, iterators={"retain": it}, workdir=workdir,
        num_classes=split.num_classes, mesh=mesh, seed=seed,
    )
    checkpoint.save_variables(
        path,
        {**variables, "head": np.asarray(head)},
        {"model": bundle.config(), "head": cfg.head.to_dict(), "classes": split.num_classes},
    )
    _log(f"[pretrain] base model cached in {path}")
    return variables, head


def restore_folded_batchnorms(cfg, bundle, variables, source, split):
    """BatchNorms an ONNX export folded away (a zoo file's): re-created from the split's train
    photos or kept, as ``model.folded_bn`` says (:func:`folded_bn.restore`), said in a log line."""
    modes = [f"{b}.bn_mode={cfg[b].bn_mode!r}" for b in ("method", "pretrain") if cfg[b].get("bn_mode", "frozen") !=
             "frozen" and (b == "method" or int(cfg.pretrain.steps) > 0)]
    train_idx = np.concatenate([split.forget_train(), split.retain_train()])
    batches = lambda: ((b["image"], b["mask"]) for b in pipeline.eval_dataset(  # noqa: E731
        source, train_idx, batch_size=int(cfg.eval.batch_size)))
    variables, message = folded_bn.restore(bundle, variables, cfg.model.folded_bn, batches,
                                           pathlib.Path(str(cfg.model.init)).name, modes)
    if message:
        _log(message)
    return variables


def curve_state(step: int) -> str:
    """The results key (and embeddings prefix) of the model after ``step`` training steps."""
    return f"{report.CURVE_PREFIX}{step}"


def _train_method(cfg, bundle, variables, head, source, split, workdir: pathlib.Path, mesh,
                  batches: Mapping[str, int], curve: dict[str, Any], eval_fn):
    """Runs the configured (trained) method on the forget / retain train images (batch sizes
    from :func:`fit_batches`); returns the unlearned variables.

    At each step of ``train.curve_steps`` the model of that step is evaluated with ``eval_fn``
    (variables, state name) -> results and stored in ``curve`` under :func:`curve_state`.
    """
    m = cfg.method
    k = int(m.images_per_identity)
    forget_batch, retain_batch = batches["method.batch_size"], batches["method.retain_batch_size"]
    iterators = {
        "forget": _train_iterator(source, split.forget_train(), split, forget_batch, k, int(cfg.seed)),
        "retain": _train_iterator(source, split.retain_train(), split, retain_batch, k,
                                  int(cfg.seed) + 1),
    }

    def saliency_batches():
        it = _train_iterator(source, split.forget_train(), split, forget_batch, k, int(cfg.seed) + 2)
        return [next(it) for _ in range(int(m.salun_batches))]

    cs_fn = eval_sets.forget_cs_hook(bundle, source, split)
    cs_every, curve_steps = int(cfg.train.cs_every), {int(s) for s in cfg.train.curve_steps}

    def hook(step, state):
        out = {}
        if cs_every and step % cs_every == 0:
            out.update(cs_fn(methods.variables_of(state)))
        if step in curve_steps:
            name = curve_state(step)
            curve[name] = eval_fn(methods.variables_of(state), name)
            out.update({f"{p}_mAP": curve[name][p]["mAP"] for p in ("forget_base", "retain_search")
                        if "mAP" in curve[name].get(p, {})})
        return out

    variables1, _ = run_phase(
        phase="unlearn", method_name=m.name, method_cfg=m, cfg=cfg, bundle=bundle,
        variables=variables, head=head, iterators=iterators, workdir=workdir,
        num_classes=split.num_classes, mesh=mesh, seed=int(cfg.seed), saliency_batches=saliency_batches,
        hook=hook, hook_every=1 if curve_steps else cs_every,
    )
    return variables1


# --------------------------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------------------------


def evaluate(cfg, sets) -> dict[str, dict[str, Any]]:
    return protocols.run_protocols(tuple(cfg.evals), sets, seed=int(cfg.seed))


def run(cfg: ml_collections.ConfigDict, workdir: str | os.PathLike | None = None) -> dict:
    """Runs the configured experiment (every seed of ``cfg.seeds``, or ``cfg.seed``)."""
    shd.maybe_initialize_distributed(**cfg.distributed.to_dict())
    cfg = validation.validate(cfg)  # the model fields as model.init fixes them
    workdir = pathlib.Path(workdir or wd.default_workdir(cfg)).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    h, w = cfg.model.input_size
    family = family_of(cfg.model.name)
    source = f" read from {cfg.model.init}" if cfg.model.init else ""
    _log(
        f"jaxforget: method={cfg.method.name} model={cfg.model.name}{source} ({h}x{w} -> "
        f"{cfg.model.embedding_size}-d, RGB (x - {family.pixel_mean:g}) / {family.pixel_std:g}) "
        f"data={cfg.data.name}; writing to {workdir}"
    )
    seeds = tuple(int(s) for s in cfg.seeds)
    if not seeds:
        return run_one(cfg, workdir)
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
    agg = report.aggregate(runs)
    table = report.aggregate_markdown(agg)
    wd.write_atomic(workdir / "results.md", table + "\n")
    wd.write_json(workdir / "results.json", agg)
    print(table)
    _log(f"mean +- std over seeds {seeds} written to {workdir / 'results.md'}")
    return {"runs": runs}


def run_one(cfg, workdir: pathlib.Path) -> dict:
    t_start = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    wd.check_workdir_config(cfg, workdir)
    if shd.is_primary():
        wd.write_config(cfg, workdir)
    mesh = shd.make_mesh()

    try:
        bundle, variables = loading.load_pretrained(cfg.model)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"model.init / model.name: {e}") from e
    source = build_source(cfg, tuple(bundle.input_size))
    split = make_or_load_split(cfg, source, workdir)
    batches = fit_batches(cfg, source, split)
    variables = restore_folded_batchnorms(cfg, bundle, variables, source, split)
    distractors = None
    names = eval_sets.needed_sets(tuple(cfg.evals), eval_sets.set_builders(cfg))
    if "distractors" in names:
        distractors = eval_sets.build_distractors(cfg, source, split, tuple(bundle.input_size))

    head = None
    if int(cfg.pretrain.steps) > 0:
        variables, head = pretrain(cfg, bundle, variables, source, split, workdir, mesh,
                                   batches["pretrain.batch_size"])

    def embed_and_evaluate(params, state: str):
        """The sets embedded by model ``state`` (stored ones reloaded) and every protocol on them."""
        sets = eval_sets.embed_sets(cfg, bundle, params, source, split, names, distractors,
                                    workdir, state)
        return sets, evaluate(cfg, sets)

    sets0, original = embed_and_evaluate(variables, "original")
    if head is None:
        head = eval_sets.imprint_head(
            [sets0["forget_train"], sets0["retain_train"]], split.num_classes, bundle.embedding_size
        )

    # Unlearning.
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
    curve: dict[str, Any] = {}
    if method.closed_form:
        variables1 = variables
    else:
        variables1 = _train_method(cfg, bundle, variables, head, source, split, workdir, mesh,
                                   batches, curve, lambda v, state: embed_and_evaluate(v, state)[1])
    # The curve's models, in step order between the original and the unlearned one.
    results = {"original": original}
    for step in sorted(int(s) for s in cfg.train.curve_steps):
        name = curve_state(step)
        if name in curve:
            results[name] = curve[name]
        elif eval_sets.is_stored(cfg, split, workdir, name, names):  # evaluated before a resume
            results[name] = embed_and_evaluate(None, name)[1]
        else:
            _log(f"train.curve_steps: step {step} was not evaluated (this workdir's training had "
                 "passed it before the field was set); use a new --workdir for the whole curve")
    sets1, results["unlearned"] = embed_and_evaluate(variables1, "unlearned")
    meta = {
        "method": m.name,
        **({"label": str(cfg.label)} if cfg.get("label") else {}),
        "seed": int(cfg.seed),
        "model": cfg.model.name,
        "data": cfg.data.name,
        "steps": 0 if method.closed_form else int(m.steps),
        "forget_identities": [str(i) for i in split.forget_ids],
        "wall_time_s": round(time.perf_counter() - t_start, 1),
    }
    # The model first: a later failure (the t-SNE figure, say) must not lose it.
    out_dir = workdir / "unlearned_model"
    io = loading.onnx_io(cfg.model.init)  # an ONNX model in keeps its input / output names out
    checkpoint.save_variables(
        out_dir,
        variables1,
        {"model": bundle.config(), "method": m.name, "forgotten": meta["forget_identities"],
         **({"onnx_io": io} if io else {})},
    )
    if cfg.export_torch and shd.is_primary():
        loading.save_torch_backbone(bundle, variables1, workdir / "unlearned_backbone.pth")
    if cfg.get("export_onnx") and shd.is_primary():
        onnx_export.save_onnx_backbone(bundle, variables1, workdir / "unlearned_backbone.onnx", **io)
    results["meta"] = meta
    if not shd.is_primary():
        return results
    json_path, md_path = report.write_results(workdir, results, meta)

    if cfg.eval.tsne:
        forget_labels = sorted({int(v) for v in sets0["forget_test"].labels})
        before = Embeddings.concatenate([sets0["forget_test"], sets0["retain_test"]])
        after = Embeddings.concatenate([sets1["forget_test"], sets1["retain_test"]])
        plots.tsne_before_after(
            before, after, forget_labels, workdir / "tsne.png",
            num_retain_ids=int(cfg.eval.tsne_identities), seed=int(cfg.seed),
            title=f"{m.name}: forget vs retain identities",
            perplexity=min(30.0, max(5.0, (len(before) - 1) / 4)),
        )
    print(md_path.read_text())
    _log(f"wrote {json_path}, {md_path}, {out_dir} in {meta['wall_time_s']:.0f}s")
    return results
