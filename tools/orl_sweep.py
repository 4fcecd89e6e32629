"""Real-face check of hard dispersion: the CASIA MobileFaceNet forgets 5 ORL identities.

The set-up (shared with ``tests/test_realface.py``, which imports this file):

* model: the real MobileFaceNet (``../shared/weights/mobilefacenet_casia/068.ckpt``, converted on
  the fly by :func:`jaxforget.models.load_pretrained`; 112x96 inputs, 128-d embeddings);
* data: ORL faces (``../shared/data/orl_faces``, 40 identities x 10 greyscale images, resized whole
  to 112x96 by :class:`jaxforget.data.sources.FolderSource`);
* split: :func:`jaxforget.data.splits.make_split` draws ``num_forget`` forget identities with a
  seed; each has a train half (5 images, the unlearning data) and a test half (5 images, the
  queries); the other identities are the retain set;
* unlearning: ``hard_disp`` on P x K batches of the forget train images
  (:func:`jaxforget.data.pipeline.train_dataset`, flips on device), jitted
  :func:`jaxforget.methods.make_update_step`;
* evaluation (single view, no flip-averaging, to keep CPU time down):

  - forget: ``forget_base`` on the forget test images (each query searches the other forget test
    images: mAP, R@1) and their leave-one-out Cluster Compactness ``CS``;
  - retain: leave-one-out retrieval over **every** image of the retain identities (35 x 10 = 350
    queries, each against the other 349 images; the same self-search as ``forget_base``), plus
    its ``CS``. Every retain image is unseen by the unlearning, so train/test halves do not matter
    there, and 350 queries measure the change more finely than a query/gallery half split.

Run as a script to sweep hyper-parameters and print a table (one training run per row; metrics are
taken at each step count of ``--eval_at``; ``s/step`` of a row's first segment includes the
compilation)::

    python tools/orl_sweep.py --lrs 0.02,0.05 --bn_modes frozen,train --margins 0,-0.3 \
        --views 0 --salun 0,0.5 --eval_at 10,20

``--views 1`` turns on ``augmented_views`` (dispersion across two augmented views per image),
``--salun F`` the SalUn mask (top fraction F of weights by the hard-dispersion gradient over two
forget batches), ``--retain_weights W`` a distillation term on 2,000 CelebA-subset faces,
``--set FIELD=VALUE`` any other method field (``project=True`` projects first, as the runner
does; ``trainable=linear1/`` trains the output layer only), ``--method`` another method and
``--neighbours`` the nearest-neighbour cosines of the forget train / test images at every
evaluation. The measured tables and the values the test uses are in docs/RESULTS.md, sections 2
and 3e.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import itertools
import os
import pathlib
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np

from jaxforget import methods
from jaxforget.data import pipeline, sources, splits
from jaxforget.eval import embed_model, protocols
from jaxforget.eval.embed import Embeddings
from jaxforget.models import registry

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
WEIGHTS = ("weights", "mobilefacenet_casia", "068.ckpt")
ORL = ("data", "orl_faces")


@dataclasses.dataclass
class OrlSetup:
    """Everything a run needs: the model, ORL, the split and its record index sets."""

    bundle: registry.ModelBundle
    variables: dict[str, Any]
    source: sources.FolderSource
    split: splits.Split
    forget_train: np.ndarray   # record indices of the forget identities' train images
    forget_test: np.ndarray    # record indices of their test images
    retain_all: np.ndarray     # record indices of every image of the retain identities


@dataclasses.dataclass
class RetainData:
    """Images for the retain term (distillation needs no labels that match the model's head)."""

    source: Any
    indices: np.ndarray
    identities_per_batch: int = 8
    images_per_identity: int = 2

    def batches(self, seed: int):
        return iter(pipeline.train_dataset(
            self.source, self.indices, identities_per_batch=self.identities_per_batch,
            images_per_identity=self.images_per_identity, seed=seed + 1, flip=False))


def celeba_retain(celeba_root: str | os.PathLike, input_size: tuple[int, int], *,
                  num_images: int = 2000) -> RetainData:
    """Generic faces for the retain term: the first ``num_images`` images of the CelebA subset
    (other people than ORL's, another camera and colour), aligned to ``input_size``."""
    source = sources.CelebASource(celeba_root, input_size, limit=num_images)
    return RetainData(source, np.arange(len(source)))


def load_setup(weights: str | os.PathLike, orl_root: str | os.PathLike, *, num_forget: int = 5,
               seed: int = 0) -> OrlSetup:
    """Loads the MobileFaceNet checkpoint and ORL, and draws the seeded forget / retain split."""
    bundle, variables = registry.load_pretrained(dict(
        name="mobilefacenet", input_size=(112, 96), embedding_size=128, init=str(weights)))
    source = sources.FolderSource(orl_root, bundle.input_size)
    split = splits.make_split(source.identities, num_forget=num_forget, min_images=10,
                              train_fraction=0.5, seed=seed, image_ids=source.image_ids)
    retain_all = np.sort(np.concatenate([split.retain_train(), split.retain_test()]))
    return OrlSetup(bundle, variables, source, split, split.forget_train(), split.forget_test(),
                    retain_all)


def embed_records(setup: OrlSetup, variables: Mapping[str, Any], indices: np.ndarray,
                  batch_size: int = 64) -> Embeddings:
    """L2-normalised single-view embeddings of the given records (labels = split classes)."""
    batches = pipeline.eval_dataset(setup.source, indices, batch_size=batch_size,
                                    label_map=setup.split.class_index)
    return embed_model(setup.bundle, variables, batches, flip=False, progress=False,
                       devices=jax.local_devices()[:1])


def evaluate(setup: OrlSetup, variables: Mapping[str, Any], *, retain: bool = True
             ) -> dict[str, dict[str, float]]:
    """``{'forget': {mAP, R@1, CS}, 'retain': {mAP, R@1, CS}}`` (see the module docstring).

    One embedding pass covers both sets; ``retain=False`` embeds and scores the forget test images
    only (25 images instead of 375).
    """
    nf = len(setup.forget_test)
    idx = np.concatenate([setup.forget_test, setup.retain_all]) if retain else setup.forget_test
    emb = embed_records(setup, variables, idx)
    if not np.array_equal(emb.image_ids, idx):  # the eval pipeline keeps order; make sure
        raise RuntimeError("embed_records returned the records in another order than requested")
    keys = ("mAP", "R@1", "CS")
    out = {"forget": protocols.forget_base(emb.subset(np.arange(nf)))}
    if retain:
        out["retain"] = protocols.forget_base(emb.subset(np.arange(nf, len(idx))))
    return {part: {k: float(m[k]) for k in keys} for part, m in out.items()}


def neighbour_stats(setup: OrlSetup, variables: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Per half of the forget images (``train``: unlearned on, ``test``: unseen): the mean cosine
    of same-person pairs, the mean over images of the nearest same-person and nearest
    other-person cosine, and the fraction of images whose nearest neighbour is the same person."""
    out = {}
    for half, idx in (("train", setup.forget_train), ("test", setup.forget_test)):
        e = embed_records(setup, variables, idx)
        z = e.emb / np.linalg.norm(e.emb, axis=1, keepdims=True)
        same = e.labels[:, None] == e.labels[None]
        off_diag = ~np.eye(len(z), dtype=bool)
        cos = z @ z.T
        nearest_same = np.where(same & off_diag, cos, -np.inf).max(1)
        nearest_other = np.where(~same, cos, -np.inf).max(1)
        out[half] = {"positive_cos": float(cos[same & off_diag].mean()),
                     "nearest_same": float(nearest_same.mean()),
                     "nearest_other": float(nearest_other.mean()),
                     "nn_correct": float(np.mean(nearest_same > nearest_other))}
    return out


def _print_neighbours(tag: str, stats: Mapping[str, Mapping[str, float]]) -> None:
    for half, m in stats.items():
        print(f"  neighbours {tag} {half}: positive cos {m['positive_cos']:.3f}, nearest same "
              f"{m['nearest_same']:.3f}, nearest other {m['nearest_other']:.3f}, 1-NN correct "
              f"{m['nn_correct']:.2f}", flush=True)


def method_config(*, lr: float, bn_mode: str, steps: int, margin: float = 0.0,
                  augmented_views: bool = False, salun_fraction: float = 0.0,
                  optimizer: str = "sgd", momentum: float = 0.9, weight_decay: float = 5e-4,
                  name: str = "hard_disp", **extra: Any) -> dict[str, Any]:
    """``config.method`` fields of the run (``extra``: any other method field; everything else:
    the method's defaults)."""
    return dict(name=name, lr=lr, bn_mode=bn_mode, steps=steps, margin=margin,
                augmented_views=augmented_views, salun_fraction=salun_fraction,
                optimizer=optimizer, momentum=momentum, weight_decay=weight_decay,
                schedule="constant", flip=True, **extra)


def unlearn(setup: OrlSetup, method_cfg: Mapping[str, Any], *, identities_per_batch: int = 5,
            images_per_identity: int = 4, seed: int = 0, retain: RetainData | None = None,
            callback: Callable[[int, dict[str, Any], dict[str, float]], None] | None = None,
            callback_at: Iterable[int] = ()) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """Runs ``method_cfg['steps']`` steps of the configured method on the forget train images.

    ``retain``: the images of the retain term, needed when ``method_cfg['retain_weight'] > 0``.
    Returns the unlearned variables and the per-step training metrics. ``callback(step,
    variables, metrics)`` is called after each step listed in ``callback_at``.
    """
    method = methods.get_method(method_cfg["name"])
    ctx = methods.Context(apply_fn=setup.bundle.module.apply, pixel_mean=setup.bundle.pixel_mean,
                          pixel_std=setup.bundle.pixel_std, num_classes=setup.split.num_classes)
    rng = jax.random.PRNGKey(seed)
    start = setup.variables
    if methods.resolve_hparams(method_cfg, method).project:  # as the runner does
        from jaxforget.methods import projection  # pylint: disable=import-outside-toplevel
        train = embed_records(setup, start, setup.forget_train)
        start, _ = projection.project_identities(setup.bundle.family, start, train.emb,
                                                 train.labels)
    state = methods.init_state(method, method_cfg, start, None, rng)

    def forget_batches(s):
        return iter(pipeline.train_dataset(
            setup.source, setup.forget_train, identities_per_batch=identities_per_batch,
            images_per_identity=images_per_identity, seed=s, label_map=setup.split.class_index,
            flip=False))  # the update step flips on device

    if float(method_cfg.get("salun_fraction", 0.0)) > 0:
        it = forget_batches(seed + 2)
        mask = methods.compute_saliency_mask(
            method, ctx, state, [next(it) for _ in range(2)], float(method_cfg["salun_fraction"]),
            loss="hard_dispersion", method_cfg=method_cfg)
        state = methods.init_state(method, method_cfg, start, None, rng, saliency_mask=mask)
    update = jax.jit(methods.make_update_step(method, method_cfg, ctx), donate_argnums=0)
    batches = forget_batches(seed)
    needs_retain = "retain" in method.data_needs(method_cfg)
    if needs_retain and retain is None:
        raise ValueError("method_cfg asks for a retain term (retain_weight > 0): pass retain=")
    retain_batches = retain.batches(seed) if needs_retain else None
    at = set(int(s) for s in callback_at)
    log = []
    for step in range(1, int(method_cfg["steps"]) + 1):
        b = next(batches)
        batch = {"forget": {"image": b["image"], "label": b["label"]}}
        if retain_batches is not None:
            r = next(retain_batches)
            batch["retain"] = {"image": r["image"], "label": r["label"]}
        state, m = update(state, batch)
        m = {k: float(v) for k, v in jax.device_get(m).items()}
        if not np.isfinite(m["loss"]):
            raise FloatingPointError(f"step {step}: non-finite loss {m['loss']} ({m})")
        log.append(m)
        if callback is not None and step in at:
            callback(step, _variables(state), m)
    return _variables(state), log


def _variables(state: methods.TrainState) -> dict[str, Any]:
    v = {"params": state.params}
    if state.batch_stats is not None:
        v["batch_stats"] = state.batch_stats
    return v


def format_row(cells: Iterable[Any], widths: Iterable[int]) -> str:
    return " | ".join(str(c).rjust(w) for c, w in zip(cells, widths))


HEADER = ("bn_mode", "lr", "margin", "K", "views", "salun", "ret_w", "step", "loss", "F mAP", "F R@1",
          "F CS",
          "R mAP",
          "R R@1", "R CS", "dR mAP", "s/step")
WIDTHS = (7, 6, 6, 2, 5, 5, 5, 4, 7, 6, 6, 6, 6, 6, 6, 7, 6)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shared", default=str(SHARED), help="the project's shared folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lrs", default="0.01,0.05")
    p.add_argument("--bn_modes", default="frozen,train")
    p.add_argument("--margins", default="0.0")
    p.add_argument("--images_per_identity", default="4", help="K values (P = 5 identities)")
    p.add_argument("--views", default="0", help="augmented_views values (0 / 1)")
    p.add_argument("--salun", default="0", help="salun_fraction values (0: off)")
    p.add_argument("--eval_at", default="10,20,30", help="step counts to evaluate at")
    p.add_argument("--method", default="hard_disp", help="hard_disp | disp | hard_disp_aug | ...")
    p.add_argument("--retain_weights", default="0",
                   help="retain_weight values; > 0 distils to the original on CelebA-subset faces")
    p.add_argument("--neighbours", action="store_true",
                   help="also print nearest-neighbour cosines of the forget train / test images")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="fixed method field for every row (Python literal), e.g. view_crop=0.15")
    args = p.parse_args(argv)
    extra = {}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            extra[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            extra[key] = value
    print(f"method {args.method}, fixed fields {extra}", flush=True)
    shared = pathlib.Path(args.shared)
    setup = load_setup(shared.joinpath(*WEIGHTS), shared.joinpath(*ORL), seed=args.seed)
    eval_at = sorted(int(s) for s in args.eval_at.split(","))
    print(f"forget identities {setup.split.forget_ids}: {len(setup.forget_train)} train / "
          f"{len(setup.forget_test)} test images; {len(setup.retain_all)} retain images",
          flush=True)
    t = time.perf_counter()
    base = evaluate(setup, setup.variables)
    print(f"original ({time.perf_counter() - t:.1f}s): {base}", flush=True)
    if args.neighbours:
        _print_neighbours("original", neighbour_stats(setup, setup.variables))
    retain_data = None
    if any(float(w) > 0 for w in args.retain_weights.split(",")):
        retain_data = celeba_retain(shared / "data" / "celeba_subset", setup.bundle.input_size)
        extra.setdefault("retain_loss", "distill")
    print(format_row(HEADER, WIDTHS))
    print(format_row(["-" * w for w in WIDTHS], WIDTHS), flush=True)
    grid = itertools.product(args.bn_modes.split(","), [float(v) for v in args.lrs.split(",")],
                             [float(v) for v in args.margins.split(",")],
                             [int(v) for v in args.images_per_identity.split(",")],
                             [bool(int(v)) for v in args.views.split(",")],
                             [float(v) for v in args.salun.split(",")],
                             [float(v) for v in args.retain_weights.split(",")])
    for bn_mode, lr, margin, k, views, salun, rw in grid:
        cfg = method_config(lr=lr, bn_mode=bn_mode, steps=eval_at[-1], margin=margin,
                            augmented_views=views, salun_fraction=salun, name=args.method,
                            retain_weight=rw, **extra)
        clock = {"t": time.perf_counter(), "step": 0}

        def report(step, variables, m, bn_mode=bn_mode, lr=lr, margin=margin, k=k, views=views,
                   salun=salun, rw=rw, clock=clock):
            per_step = (time.perf_counter() - clock["t"]) / (step - clock["step"])
            r = evaluate(setup, variables)
            f, rt = r["forget"], r["retain"]
            print(format_row([bn_mode, lr, margin, k, int(views), salun, rw, step,
                              f"{m['loss']:.3f}",
                              f"{f['mAP']:.3f}",
                              f"{f['R@1']:.3f}", f"{f['CS']:.3f}", f"{rt['mAP']:.3f}",
                              f"{rt['R@1']:.3f}", f"{rt['CS']:.3f}",
                              f"{rt['mAP'] - base['retain']['mAP']:+.3f}", f"{per_step:.2f}"],
                             WIDTHS), flush=True)
            if args.neighbours:
                _print_neighbours(f"step {step}", neighbour_stats(setup, variables))
            clock["t"], clock["step"] = time.perf_counter(), step

        unlearn(setup, cfg, images_per_identity=k, seed=args.seed, retain=retain_data,
                callback=report, callback_at=eval_at)


if __name__ == "__main__":
    sys.exit(main())
