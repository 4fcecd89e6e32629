"""Hyper-parameter sweep of hard dispersion on real faces: the CASIA MobileFaceNet forgets 5 ORL
identities.

The model, data, split, unlearning and metrics are those of :mod:`studies.orl_setup` (shared with
``tests/test_realface.py``); training is the product's recipe, :func:`jaxforget.trainer.unlearn`,
so a SalUn mask (``--salun``) is ranked with the loss and batch count the product uses.

Run from the repository root to sweep hyper-parameters and print a table (one training run per
row; metrics are taken at each step count of ``--eval_at``; ``s/step`` of a row's first segment
includes the compilation)::

    python -m studies.orl_sweep --lrs 0.02,0.05 --bn_modes frozen,train --margins 0,-0.3 \
        --views 0 --salun 0,0.5 --eval_at 10,20

``--views 1`` turns on ``augmented_views`` (dispersion across two augmented views per image),
``--salun F`` the SalUn mask (top fraction F of weights, ranked by the gradient of the method's
own SalUn loss over ``salun_batches`` forget batches: 8 unless ``--set salun_batches=N``; before
the sweep used the runner's recipe it ranked ``hard_disp`` by the hard-dispersion loss over 2
batches), ``--retain_weights W`` a distillation term on 2,000 CelebA-subset faces,
``--set FIELD=VALUE`` any other method field (``project=True`` projects first, as the runner
does; ``trainable=linear1/`` trains the output layer only), ``--method`` another method and
``--neighbours`` the nearest-neighbour cosines of the forget train / test images at every
evaluation. The measured tables and the values the test uses are in docs/RESULTS.md, sections 2
and 3e.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import pathlib
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from studies.orl_setup import (ORL, SHARED, WEIGHTS, OrlSetup, celeba_retain, embed_records,
                               evaluate, load_setup, method_config, unlearn)


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
