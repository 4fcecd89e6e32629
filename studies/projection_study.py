#!/usr/bin/env python3
"""How much of a forget identity can be removed given how many of its photos: the identity-
subspace projection (``method=project``) with centroids from 1..n train images per identity, and
from every image of the identity (an oracle that reads the evaluation images).

Usage, from the repository root:
  python -m studies.projection_study runs/celeba/hard_disp/seed_0 runs/celeba/hard_disp/seed_1 ...

Reads each run's stored **original** embeddings (any finished run of ``jaxforget.main`` on the
split; no model is run), projects them in closed form and evaluates ``forget_base`` and
``retain_search`` exactly as the runner does. Prints one markdown table, mean over the runs:
forget mAP as a percentage of the original's, forget R@1, forget CS, and the change of retain mAP
(points). The train images used for ``n`` are the first ``n`` of each identity in a seeded order.
The oracle row uses the forget **test** images as well, so it is not a method: it measures
how much identity the test photos share along their identity's own mean direction.
``--span_dims 10,20,30`` adds rows that remove, instead of one centroid per identity, the top r
principal directions of all forget-train embeddings (r = 10 for ten identities spans about the
centroids; larger r also removes what the train photos of a person vary in).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

from jaxforget.errors import UserError
from jaxforget.eval import protocols
from jaxforget.eval.embed import Embeddings
from jaxforget.eval.sets import load_stored_sets
from jaxforget.methods import projection

EVALS = ("forget_base", "retain_search")


def _project(e: Embeddings, m: np.ndarray) -> Embeddings:
    z = e.emb.astype(np.float64) @ m.T
    return Embeddings(z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12), e.labels, e.image_ids)


def _first_n(e: Embeddings, n: int, seed: int) -> Embeddings:
    rows = []
    for lab in np.unique(e.labels):
        idx = np.flatnonzero(e.labels == lab)
        rows.append(idx[np.random.default_rng([seed, int(lab)]).permutation(idx.size)][:n])
    rows = np.sort(np.concatenate(rows))
    return Embeddings(e.emb[rows], e.labels[rows], e.image_ids[rows])


def _metrics(sets: dict, seed: int) -> tuple[float, float, float, float]:
    r = protocols.run_protocols(EVALS, sets, seed=seed)
    f = r["forget_base"]
    return f["mAP"], f["R@1"], f["CS"], r["retain_search"]["mAP"]


def study(run: pathlib.Path, max_n: int, span_dims: tuple[int, ...] = ()
          ) -> dict[str, tuple[float, float, float, float]]:
    """``{row: (forget mAP % of original, forget R@1 %, forget CS, retain mAP change in points)}``."""
    cfg, _, sets = load_stored_sets(run, EVALS, "original")
    seed = int(cfg.seed)
    f_map, _, _, r_map = _metrics(sets, seed)
    ft, fe = sets["forget_train"], sets["forget_test"]
    most = int(max(np.unique(ft.labels, return_counts=True)[1]))
    sources = {f"train, n={n}": _first_n(ft, n, seed) for n in range(1, min(max_n, most) + 1)}
    sources["oracle: train + test"] = Embeddings.concatenate([ft, fe])
    bases = {name: projection.identity_basis(src.emb, src.labels) for name, src in sources.items()}
    z = ft.emb.astype(np.float64)
    u = np.linalg.svd((z / np.linalg.norm(z, axis=1, keepdims=True)).T, full_matrices=False)[0]
    for r in span_dims:
        bases[f"train span, top {min(r, u.shape[1])} directions"] = u[:, :r]
    out = {}
    for name, basis in bases.items():
        m = projection.removal_matrix(basis)
        proj = {k: _project(v, m) for k, v in sets.items()}
        fm, fr, cs, rm = _metrics(proj, seed)
        out[name] = (100 * fm / f_map, 100 * fr, cs, 100 * (rm - r_map))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=pathlib.Path, help="finished run directories")
    ap.add_argument("--max_per_identity", type=int, default=10, help="largest n of train images")
    ap.add_argument("--span_dims", default="", help="also remove the top r principal directions "
                    "of all forget-train embeddings (comma-separated r), not one per identity")
    args = ap.parse_args(argv)
    rows: dict[str, list] = {}
    span = tuple(int(r) for r in args.span_dims.split(",") if r)
    for run in args.runs:
        try:
            for name, vals in study(run, args.max_per_identity, span).items():
                rows.setdefault(name, []).append(vals)
        except UserError as e:
            raise SystemExit(str(e)) from e
        print(f"{run}: done", file=sys.stderr)
    print(f"Identity-subspace projection, mean over {len(args.runs)} run(s)\n")
    print("| directions from | runs | forget mAP (% of original) | forget R@1 | forget CS | retain mAP change |")
    print("|---|---|---|---|---|---|")
    for name, vals in rows.items():
        v = np.mean(vals, axis=0)
        print(f"| {name} | {len(vals)} | {v[0]:.1f} | {v[1]:.1f} | {v[2]:.3f} | {v[3]:+.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
