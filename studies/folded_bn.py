#!/usr/bin/env python3
"""What train-mode BatchNorm does to a zoo model whose export folded its BatchNorms away.

The choice behind ``model.folded_bn`` (:mod:`jaxforget.models.folded_bn`), measured on real faces:
InsightFace's ``w600k_mbf.onnx`` on CelebA-wild. Each person's photos are halved (the first half
measures the re-created statistics, as a run's train photos do; the second half is searched); the
second halves are embedded

* in eval mode (the model as deployed: the reference),
* in train mode, in P x K batches as a training step forwards them (8 people x 4 photos), with the
  folded BatchNorms kept as identities (``model.folded_bn='keep'``, ``bn_mode='train'``),
* the same with the BatchNorms re-created from the first halves (``'recalibrate'``, the default),

and scored by the cosine of each train-mode embedding to its eval-mode one and by retrieval
(each photo searches the others; mAP and R@1). What the recipe trains on at its first step is
the train-mode function, so a model far from the eval one there is damaged before any update.

Usage, from the repository root::

    python -m studies.folded_bn [--people 40] [--model ../shared/weights/insightface_buffalo_s/w600k_mbf.onnx]
"""

from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np

from jaxforget.data import factory, pipeline
from jaxforget.eval import metrics
from jaxforget.models import folded_bn, load_pretrained

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"


def _train_mode_embeddings(bundle, variables, images: np.ndarray, labels: np.ndarray, p: int, k: int) -> np.ndarray:
    """Each image embedded in train mode inside a P x K batch of its own and other people's."""
    import jax

    forward = jax.jit(lambda v, x: bundle.module.apply(v, bundle.normalize(x), train=True,
                                                       mutable=["batch_stats"])[0])
    out = np.zeros((len(images), bundle.embedding_size), np.float32)
    people = np.unique(labels)
    rng = np.random.default_rng(0)
    order = rng.permutation(people)
    for start in range(0, len(order), p):
        real = order[start:start + p]
        group = np.concatenate([real, rng.choice(people[~np.isin(people, real)], p - len(real), replace=False)])
        for person in real:
            rows = np.flatnonzero(labels == person)
            for chunk in range(0, len(rows), k):
                mine = rows[chunk:chunk + k]
                others = [rng.choice(np.flatnonzero(labels == q), k) for q in group if q != person]
                batch = np.concatenate([mine, *others])
                out[mine] = np.asarray(forward(variables, images[batch]))[: len(mine)]
    return out


def _unit(e: np.ndarray) -> np.ndarray:
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(SHARED / "weights" / "insightface_buffalo_s" / "w600k_mbf.onnx"))
    ap.add_argument("--data", default=str(SHARED / "data" / "celeba_wild"))
    ap.add_argument("--people", type=int, default=40, help="CelebA-wild people (with >= 8 photos) to use")
    args = ap.parse_args(argv)

    bundle, variables = load_pretrained({"name": "auto", "init": args.model})
    source = factory.source_from_config({"name": "celeba_wild", "root": args.data}, bundle.input_size)
    ids = np.asarray(source.identities)
    people = [p for p in sorted(set(ids.tolist()), key=str) if (ids == p).sum() >= 8][: args.people]
    first, second = [], []
    for person in people:
        rows = np.flatnonzero(ids == person)
        first.extend(rows[: len(rows) // 2])
        second.extend(rows[len(rows) // 2:])

    def load(rows):
        batches = pipeline.eval_dataset(source, np.asarray(rows), batch_size=64)
        return np.concatenate([b["image"][b["mask"]] for b in batches])

    t0 = time.perf_counter()
    measure, test = load(first), load(second)
    labels = np.searchsorted(np.asarray(people, dtype=object).astype(str), ids[second].astype(str))
    recal, info = folded_bn.recalibrate(bundle, variables, [(measure[i:i + 64], np.ones(len(measure[i:i + 64]), bool))
                                                            for i in range(0, len(measure), 64)])
    import jax

    embed = jax.jit(lambda v, x: bundle.module.apply(v, bundle.normalize(x), train=False))
    reference = _unit(np.concatenate([np.asarray(embed(variables, test[i:i + 64])) for i in range(0, len(test), 64)]))
    rows = {"eval mode (deployed)": reference}
    for name, v in (("train mode, folded BatchNorms kept", variables),
                    ("train mode, BatchNorms re-created", recal)):
        rows[name] = _unit(_train_mode_embeddings(bundle, v, test, labels, 8, 4))
    print(f"{pathlib.Path(args.model).name} on {len(people)} CelebA-wild people: {info['layers']} folded "
          f"BatchNorms re-created from {info['images']} photos (eval-mode change {info['max_abs_change']:.1e}); "
          f"{len(test)} photos searched; {time.perf_counter() - t0:.0f}s\n")
    print("| forward | cosine to eval mode (mean / min) | mAP % | R@1 % |")
    print("|---|---|---|---|")
    for name, e in rows.items():
        cos = (e * reference).sum(1)
        r = metrics.retrieval_metrics(e, labels, e, labels, np.arange(len(e)), np.arange(len(e)))
        print(f"| {name} | {cos.mean():.3f} / {cos.min():.3f} | {100 * r['mAP']:.2f} | {100 * r['R@1']:.2f} |")


if __name__ == "__main__":
    main()
