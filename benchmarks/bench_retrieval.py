#!/usr/bin/env python3
"""Benchmark: retrieval evaluation time and peak memory, 150 queries vs large galleries.

Usage:
  python -m benchmarks.bench_retrieval [--sizes 75000 1000000] [--dim 512] [--out bench_retrieval.json]

Synthetic data, generated deterministically (seed 0): 10 identities x 15 images (the queries, like
a forget test set) placed in the gallery, plus random unit-vector distractors up to the gallery
size; each query's own image is excluded by id (the forget-extended protocol). 512-d float32,
L2-normalised; a 1,000,000 x 512 gallery is 2 GB.

Methods, each run in a fresh subprocess so the memory figures are its own:

* ``exact``        - :func:`jaxforget.eval.metrics.retrieval_metrics` (exact untruncated mAP, CMC),
* ``numpy_ref``    - brute-force reference: full score matrix, one full ``lexsort`` ranking per
  query (pessimistic tie rule), AP and CMC from the ranking; its metrics must equal ``exact``'s,
* ``faiss_flat``   - FAISS ``IndexFlatIP`` top-K (K=100) search + :func:`topk_retrieval_metrics`,
* ``faiss_ivf``    - ``IndexIVFFlat`` (nlist ~ 4 sqrt(N), nprobe 32), train + add + search,
* ``faiss_hnsw``   - ``IndexHNSWFlat`` (M 32, efConstruction 80, efSearch 128); only for galleries
  up to ``--hnsw_max`` (its build is slow on few cores).

Approximate methods report recall@10 against ``faiss_flat``'s exact top-10 of the same run.

Memory, two measures (both exclude the gallery itself, which every method shares):
``py_peak_mb`` - ``tracemalloc`` peak of allocations made during the method (numpy buffers are
traced; FAISS's C++ allocations are *not*); ``rss_peak_delta_mb`` - growth of the process's
``ru_maxrss`` high-water mark during the method (includes FAISS; 0 when the method stays below
the high-water mark set while generating the data, which holds ~1.3x the gallery).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_IDS, PER_ID, TOPK = 10, 15, 100
METHODS = ("exact", "numpy_ref", "faiss_flat", "faiss_ivf", "faiss_hnsw")


def make_data(n: int, d: int, seed: int = 0):
    """Queries (150, d), their labels/ids, and the gallery (n, d) holding them first."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((NUM_IDS, d), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    q_lab = np.repeat(np.arange(NUM_IDS), PER_ID)
    q = centers[q_lab] + rng.standard_normal((len(q_lab), d), dtype=np.float32) * (1.0 / np.sqrt(d)) * 1.2
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g = np.empty((n, d), np.float32)
    g[: len(q)] = q
    step = 65536
    for s in range(len(q), n, step):
        e = min(n, s + step)
        blk = rng.standard_normal((e - s, d), dtype=np.float32)
        blk /= np.linalg.norm(blk, axis=1, keepdims=True)
        g[s:e] = blk
    g_lab = np.full(n, -1, np.int64)
    g_lab[: len(q)] = q_lab
    ids = np.arange(n)
    return q, q_lab, ids[: len(q)], g, g_lab, ids


def numpy_reference(q, ql, qid, g, gl, gid, ks=(1, 5, 10)):
    scores = q @ g.T
    aps, firsts = [], []
    for i in range(len(q)):
        keep = gid != qid[i]
        s, lab = scores[i][keep], gl[keep]
        pos = lab == ql[i]
        order = np.lexsort((pos, -s))
        ranks = np.flatnonzero(pos[order]) + 1
        aps.append(np.mean(np.arange(1, ranks.size + 1) / ranks))
        firsts.append(ranks[0])
    f = np.asarray(firsts)
    out = {"mAP": float(np.mean(aps))}
    out.update({f"R@{k}": float(np.mean(f <= k)) for k in ks})
    return out


def worker(method: str, n: int, d: int, ids_path: str | None) -> dict:
    from jaxforget.eval import index as I
    from jaxforget.eval import metrics as M

    q, ql, qid, g, gl, gid = make_data(n, d)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    t0 = time.perf_counter()
    row: dict = {"method": method, "gallery": n, "queries": len(q), "dim": d}
    top_ids = None
    if method == "exact":
        row.update(M.retrieval_metrics(q, ql, g, gl, qid, gid))
    elif method == "numpy_ref":
        row.update(numpy_reference(q, ql, qid, g, gl, gid))
    else:
        kind = {"faiss_flat": "flat", "faiss_ivf": "ivf", "faiss_hnsw": "hnsw"}[method]
        cfg = I.IndexConfig(kind=kind, nlist=int(4 * np.sqrt(n)), nprobe=32, hnsw_m=32, ef_construction=80, ef_search=128)
        index = I.build_index(g, cfg)
        t1 = time.perf_counter()
        _, top_ids = I.search(index, q, TOPK + 1)
        row["build_seconds"] = t1 - t0
        row["search_seconds"] = time.perf_counter() - t1
        row.update(M.topk_retrieval_metrics(top_ids, ql, gl, qid, gid))
    row["seconds"] = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    row["py_peak_mb"] = peak / 2**20
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    row["rss_peak_delta_mb"] = (rss1 - rss0) / 1024.0  # Linux: ru_maxrss is in KiB
    row["gallery_mb"] = g.nbytes / 2**20
    if top_ids is not None and ids_path:
        np.save(ids_path, top_ids)
    for k in ("per_query_ap", "per_query_first_rank"):
        row.pop(k, None)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[75_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--hnsw_max", type=int, default=200_000, help="skip HNSW above this gallery size")
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("bench_retrieval.json"))
    ap.add_argument("--worker", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--ids_path", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.dim, args.ids_path)))
        return 0

    rows = []
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench_retrieval_"))
    for n in args.sizes:
        flat_ids = None
        for method in args.methods:
            if method == "faiss_hnsw" and n > args.hnsw_max:
                print(f"[bench] skip {method} at N={n} (> --hnsw_max {args.hnsw_max})", file=sys.stderr)
                continue
            ids_path = tmp / f"{method}_{n}.npy"
            print(f"[bench] N={n:,} {method} ...", file=sys.stderr, flush=True)
            cmd = [sys.executable, "-m", "benchmarks.bench_retrieval", "--worker", method, str(n), "--dim", str(args.dim),
                   "--ids_path", str(ids_path)]
            res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if res.returncode != 0:
                raise SystemExit(f"worker {method} N={n} failed:\n{res.stderr}")
            row = json.loads(res.stdout.strip().splitlines()[-1])
            if method == "faiss_flat":
                flat_ids = np.load(ids_path)
            elif method in ("faiss_ivf", "faiss_hnsw") and flat_ids is not None:
                from jaxforget.eval.index import recall_at_k

                row["recall@10"] = recall_at_k(np.load(ids_path)[:, :10], flat_ids[:, :10], 10)
            rows.append(row)
            print(f"[bench]   {row['seconds']:.2f}s", file=sys.stderr, flush=True)
        ref = next((r for r in rows if r["gallery"] == n and r["method"] == "numpy_ref"), None)
        ex = next((r for r in rows if r["gallery"] == n and r["method"] == "exact"), None)
        if ref and ex:
            ex["max_abs_diff_vs_numpy_ref"] = max(abs(ex[k] - ref[k]) for k in ("mAP", "R@1", "R@5", "R@10"))

    hdr = f"{'gallery':>9} {'method':<11} {'time s':>8} {'build s':>8} {'search s':>8} {'py peak MB':>10} {'RSS +MB':>8} " \
          f"{'mAP':>7} {'R@1':>6} {'R@10':>6} {'recall@10':>9}  note"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        mAP = r.get("mAP", r.get("mAP@K"))
        note = "mAP@K (K=100)" if "mAP@K" in r else ""
        if "max_abs_diff_vs_numpy_ref" in r:
            note = f"max |diff| vs numpy_ref {r['max_abs_diff_vs_numpy_ref']:.1e}"
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        print(f"{r['gallery']:>9,} {r['method']:<11} {r['seconds']:8.2f} {fmt(r.get('build_seconds'), '8.2f'):>8} "
              f"{fmt(r.get('search_seconds'), '8.3f'):>8} {r['py_peak_mb']:10.1f} {r['rss_peak_delta_mb']:8.1f} "
              f"{100 * mAP:7.2f} {100 * r['R@1']:6.2f} {100 * r['R@10']:6.2f} {fmt(r.get('recall@10'), '9.4f'):>9}  {note}")
    meta = {"cpu_count": os.cpu_count(), "queries": NUM_IDS * PER_ID, "topk": TOPK,
            "memory": "py_peak_mb = tracemalloc peak during the method (numpy traced, FAISS C++ not); "
                      "rss_peak_delta_mb = ru_maxrss growth during the method (whole process)"}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
