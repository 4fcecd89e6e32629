#!/usr/bin/env python3
"""How retrievable are the forget test photos to features that know nothing about faces?

The forgetting targets are relative to the original model (e.g. "forget mAP at least halves").
This tool puts them on a scale: it scores the same ``forget_base`` retrieval (each forget test
photo searches the other forget test photos) with

* the original model (the run's stored embeddings, or the real MobileFaceNet for ``--orl_seeds``);
* raw pixels: each photo as one vector, mean-centred per photo, cosine similarity;
* the same architecture at random initialisation (``--inits`` seeds): a network that has never
  seen a face, so whatever it retrieves is image similarity, not identity knowledge;
* random unit vectors (one draw per init seed): chance.

Usage, from the repository root::

    python -m studies.forget_floor runs/celeba/project/seed_0 runs/celeba/project/seed_1 ...
    python -m studies.forget_floor --orl_seeds 0,1,2   # the ORL split of studies.orl_setup

Run directories are finished ``jaxforget.main`` runs (their split and stored original
embeddings are read; the images are loaded again from the configured data). Prints one markdown
table, mean +- std over runs (random init: over runs x inits).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Iterable

import jax
import numpy as np

from jaxforget import experiment
from jaxforget.data import pipeline
from jaxforget.errors import UserError
from jaxforget.eval import embed_model, protocols
from jaxforget.eval.embed import Embeddings
from jaxforget.eval.sets import load_stored_sets
from jaxforget.models import build_model, init_variables
from studies import orl_setup


def pixel_features(source, indices: np.ndarray, labels: np.ndarray) -> Embeddings:
    """Mean-centred, L2-normalised pixel vectors of records ``indices``."""
    x = np.stack([source[int(i)]["image"] for i in indices]).reshape(len(indices), -1)
    x = x.astype(np.float64)
    x -= x.mean(1, keepdims=True)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return Embeddings(x, labels, indices)


def model_features(bundle, variables, source, indices: np.ndarray, labels: np.ndarray) -> Embeddings:
    """Single-view embeddings of records ``indices`` (labels replaced by ``labels``)."""
    e = embed_model(bundle, variables, pipeline.eval_dataset(source, indices, batch_size=64),
                    flip=False, progress=False, devices=jax.local_devices()[:1])
    if not np.array_equal(e.image_ids, indices):
        raise RuntimeError("the eval pipeline returned the records in another order")
    return Embeddings(e.emb, labels, indices)


def _score(e: Embeddings) -> tuple[float, float]:
    m = protocols.forget_base(e)
    return 100 * float(m["mAP"]), 100 * float(m["R@1"])


def floors(source, bundle, original: Embeddings, inits: Iterable[int]) -> dict[str, list]:
    """``{features: [(mAP %, R@1 %), ...]}`` for one forget test set (``original``: its
    embeddings under the original model; their ``image_ids`` are record indices of ``source``)."""
    idx = np.asarray(original.image_ids, np.int64)
    rows = {"original model": [_score(original)],
            "pixels (mean-centred)": [_score(pixel_features(source, idx, original.labels))]}
    for seed in inits:
        noise = np.random.default_rng(int(seed)).standard_normal(original.emb.shape)
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        rows.setdefault("random vectors (chance)", []).append(
            _score(Embeddings(noise, original.labels, idx)))
        v = init_variables(bundle, int(seed))
        rows.setdefault("same network, random init", []).append(
            _score(model_features(bundle, v, source, idx, original.labels)))
    return rows


def from_run(run: pathlib.Path, inits: Iterable[int]) -> tuple[str, dict[str, list]]:
    cfg, _, sets = load_stored_sets(run, ("forget_base",), "original")
    bundle = build_model(cfg.model)
    source = experiment.build_source(cfg, bundle.input_size)
    return cfg.data.name, floors(source, bundle, sets["forget_test"], inits)


def from_orl(seed: int, inits: Iterable[int]) -> tuple[str, dict[str, list]]:
    setup = orl_setup.load_setup(orl_setup.SHARED.joinpath(*orl_setup.WEIGHTS),
                                 orl_setup.SHARED.joinpath(*orl_setup.ORL), num_forget=5, seed=seed)
    original = orl_setup.embed_records(setup, setup.variables, setup.forget_test)
    return "orl (test_realface split)", floors(setup.source, setup.bundle, original, inits)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", type=pathlib.Path, help="finished run directories")
    ap.add_argument("--orl_seeds", default="", help="also the ORL split of tests/test_realface.py")
    ap.add_argument("--inits", default="0,1", help="random-initialisation seeds")
    args = ap.parse_args(argv)
    inits = [int(s) for s in args.inits.split(",") if s]
    jobs = [(str(r), lambda r=r: from_run(r, inits)) for r in args.runs]
    jobs += [(f"ORL seed {s}", lambda s=int(s): from_orl(s, inits))
             for s in args.orl_seeds.split(",") if s]
    if not jobs:
        ap.error("give run directories and/or --orl_seeds")
    rows: dict[tuple[str, str], list] = {}
    for name, job in jobs:
        try:
            data, result = job()
            for k, v in result.items():
                rows.setdefault((data, k), []).extend(v)
        except UserError as e:
            raise SystemExit(str(e)) from e
        print(f"{name}: done", file=sys.stderr)
    print(f"forget_base on the forget test photos, {len(jobs)} split(s)\n")
    print("| data | features | forget mAP | forget R@1 | n |")
    print("|---|---|---|---|---|")
    for (data, k), v in rows.items():
        v = np.asarray(v)
        print(f"| {data} | {k} | {v[:, 0].mean():.1f} +- {v[:, 0].std():.1f} | "
              f"{v[:, 1].mean():.1f} | {len(v)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
