"""Benchmark: re-indexing a gallery, against a bare onnxruntime loop and the JAX engine.

    python -m benchmarks.bench_reindex [--images 10000] [--rss-images 10000 100000] [--model PATH]
                                       [--rss-model same|tiny] [--json-out FILE] [--quick]

Side by side in one run, on the same cores and the same model (the InsightFace zoo file
``w600k_mbf.onnx`` when the JAX engine can read it, else the CASIA MobileFaceNet exported to ONNX,
so that all three run one model; ``--model`` picks another):

* (a) a bare onnxruntime session over pre-decoded batches of 64 (what a user writes by hand;
  decoding not timed);
* (b) ``python -m jaxforget.reindex`` end to end on ``--images`` gallery photos: listing, decoding,
  embedding, writing the shards, the index (the manifest's wall time, a fresh process);
* (c) the JAX engine (``--engine=jax``'s) over the same pre-decoded batches.

(a) runs first and again last; the ratios are against the mean of the two (their spread shows how
much the machine's load moved meanwhile).

Targets: (b) >= 0.9 x (a); (c) / (a) reported, >= 1.0 the goal. Peak RSS of (b) at the two
``--rss-images`` sizes (each a fresh process, its ``VmHWM``) should be flat (within
10 %); ``--rss-model tiny`` runs that pair with a small random model (the pipeline's memory, in
minutes instead of hours). The gallery: CelebA-wild's aligned 112x112 crops
(``../shared/data/celeba_wild/aligned_112``), hard-linked under new names up to the size asked
(random faces where the shared data is absent). Run it alone: the rates depend on free cores.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
from PIL import Image

from jaxforget.data.gallery import list_gallery, load_aligned
from jaxforget.eval.engines import open_engine
from jaxforget.models import load_pretrained, onnx_export
from jaxforget.testing.variables import random_variables

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
ZOO = SHARED / "weights" / "insightface_buffalo_s" / "w600k_mbf.onnx"
CASIA = SHARED / "weights" / "mobilefacenet_casia" / "068.ckpt"
CROPS = SHARED / "data" / "celeba_wild" / "aligned_112"
BATCH = 64
TINY = {"name": "mobilefacenet", "width_mult": 0.25, "input_size": (32, 32), "embedding_size": 16}


def pick_model(arg: str | None, work: pathlib.Path) -> tuple[pathlib.Path, str]:
    """The benchmark's ONNX model and why it was chosen."""
    if arg:
        return pathlib.Path(arg), "given with --model"
    if ZOO.exists():
        try:
            load_pretrained({"init": str(ZOO)})
            return ZOO, "the InsightFace zoo file (the JAX engine reads it)"
        except ValueError as e:
            why = f"the JAX engine cannot read the zoo file yet ({str(e).split(': ')[-1]})"
    else:
        why = "no zoo file"
    if CASIA.exists():
        bundle, variables = load_pretrained({"init": str(CASIA)})
        return onnx_export.save_onnx_backbone(bundle, variables, work / "casia.onnx"), f"CASIA MobileFaceNet: {why}"
    return tiny_onnx(work), f"a random tiny MobileFaceNet: {why}, no CASIA model"


def tiny_onnx(work: pathlib.Path) -> pathlib.Path:
    bundle, variables = random_variables(TINY, 0)
    return onnx_export.save_onnx_backbone(bundle, variables, work / "tiny.onnx")


def make_gallery(root: pathlib.Path, n: int, per_person: int = 20) -> pathlib.Path:
    """``n`` photos under ``root/<person>/<photo>``: hard links to CelebA-wild crops, in turn."""
    sources = sorted(CROPS.rglob("*.jpg")) if CROPS.exists() else []
    if not sources:
        rng = np.random.default_rng(0)
        (root / "src").mkdir(parents=True, exist_ok=True)
        for i in range(64):
            Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(root / "src" / f"{i}.jpg")
        sources = sorted((root / "src").glob("*.jpg"))
    gallery = root / f"gallery_{n}"
    for i in range(n):
        folder = gallery / f"{i // per_person:06d}"
        if i % per_person == 0:
            folder.mkdir(parents=True, exist_ok=True)
        os.link(sources[i % len(sources)], folder / f"{i:07d}.jpg")
    return gallery


def predecoded(gallery: pathlib.Path, size: tuple[int, int]) -> np.ndarray:
    gal = list_gallery(gallery)
    return np.stack([load_aligned(gal.item(r), size) for r in range(len(gal))])


def engine_rate(engine: Any, images: np.ndarray) -> float:
    engine.embed(images[:BATCH])  # warm up (the JAX engine compiles here)
    t = time.perf_counter()
    for s in range(0, len(images), BATCH):
        engine.embed(images[s:s + BATCH])
    return len(images) / (time.perf_counter() - t)


def bare_onnxruntime_rate(model: pathlib.Path, images: np.ndarray) -> float:
    """(a): what a user writes by hand: one session, InsightFace's blob, batches of 64."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    session.run(None, {name: onnx_export.insightface_blob(images[:BATCH])})
    t = time.perf_counter()
    for s in range(0, len(images), BATCH):
        session.run(None, {name: onnx_export.insightface_blob(images[s:s + BATCH])})
    return len(images) / (time.perf_counter() - t)


#: Runs the command, then prints the process's own peak RSS. The kernel's ``ru_maxrss`` of a child
#: started from this (large) process would count this process's pages, mapped before the exec.
_CHILD = """
import runpy, sys
sys.argv = ["jaxforget.reindex"] + sys.argv[1:]
try:
    runpy.run_module("jaxforget.reindex", run_name="__main__")
finally:
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
    print("PEAK_RSS_KB", hwm[0].split()[1] if hwm else "nan", file=sys.stderr)
"""


def reindex_run(model: pathlib.Path, gallery: pathlib.Path, out: pathlib.Path, *extra: str) -> dict[str, Any]:
    """(b): the command in a fresh process; its manifest's throughput and its peak RSS (VmHWM)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    root = pathlib.Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(model), str(gallery), str(out), "--quiet", *extra],
                          cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"jaxforget.reindex failed: {proc.stderr[-2000:]}")
    peak_kb = float(next(line.split()[1] for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB")))
    m = json.loads((out / "manifest.json").read_text())
    engine_s = sum(json.loads(p.read_text())["engine_seconds"] for p in (out / "shards").glob("*.json"))
    wall = m["throughput"]["wall_seconds"]
    return {"images": m["counts"]["embedded"], "wall_seconds": wall, "images_per_s": m["counts"]["embedded"] / wall,
            "embed_seconds": m["throughput"]["embed_seconds"], "engine_busy_fraction": engine_s / wall,
            "index_seconds": m["index"]["seconds"], "peak_rss_mb": peak_kb / 1024.0}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000, help="gallery photos for (a), (b), (c)")
    ap.add_argument("--rss-images", type=int, nargs=2, default=(10_000, 100_000), metavar=("SMALL", "LARGE"))
    ap.add_argument("--rss-model", choices=("same", "tiny"), default="same",
                    help="the model of the RSS pair: the benchmark's, or a small random one")
    ap.add_argument("--model", default=None, help="an ONNX model (default: the zoo file or the CASIA export)")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--quick", action="store_true", help="tiny sizes and model (a smoke test, under a minute)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_reindex_") as tmp:
        work = pathlib.Path(tmp)
        if args.quick:
            args.images, args.rss_images, args.rss_model = 128, (128, 512), "tiny"
            model, why = tiny_onnx(work), "--quick: a random tiny MobileFaceNet"
        else:
            model, why = pick_model(args.model, work)
        print(f"model: {model.name} ({why}); {os.cpu_count()} CPU cores; gallery {args.images} photos", flush=True)
        gallery = make_gallery(work, args.images)
        onnx_engine = open_engine(model, "onnxruntime")
        images = predecoded(gallery, onnx_engine.info.input_size)
        a = bare_onnxruntime_rate(model, images)
        print(f"(a) bare onnxruntime, pre-decoded batches:  {a:8.1f} images/s", flush=True)
        b = reindex_run(model, gallery, work / "out_b")
        print(f"(b) jaxforget.reindex end to end:           {b['images_per_s']:8.1f} images/s "
              f"({b['wall_seconds']:.1f} s; engine busy {100 * b['engine_busy_fraction']:.0f}% of it)", flush=True)
        c = engine_rate(open_engine(model, "jax", batch_size=BATCH), images)
        print(f"(c) JAX engine, pre-decoded batches:        {c:8.1f} images/s", flush=True)
        a_again = bare_onnxruntime_rate(model, images)  # the machine's drift over (b) and (c)
        print(f"(a) again, after (b) and (c):               {a_again:8.1f} images/s", flush=True)
        a_runs, a = [a, a_again], (a + a_again) / 2
        rss_model = tiny_onnx(work) if args.rss_model == "tiny" else model
        rss = {}
        for n in args.rss_images:
            g = gallery if n == args.images and rss_model == model else make_gallery(work / f"rss_{n}", n)
            rss[n] = reindex_run(rss_model, g, work / f"out_rss_{n}")
            print(f"    peak RSS at {n:>7} photos ({rss_model.name}): {rss[n]['peak_rss_mb']:8.1f} MB "
                  f"({rss[n]['images_per_s']:.0f} images/s)", flush=True)
    small, large = (rss[n]["peak_rss_mb"] for n in args.rss_images)
    report = {
        "config": {"model": str(model), "model_choice": why, "images": args.images, "batch": BATCH,
                   "cpu_cores": os.cpu_count(), "rss_images": list(args.rss_images), "rss_model": str(rss_model.name)},
        "a_bare_onnxruntime_images_per_s": a, "a_runs": a_runs, "b_reindex": b, "c_jax_engine_images_per_s": c,
        "ratios": {"b_over_a": b["images_per_s"] / a, "c_over_a": c / a, "rss_large_over_small": large / small},
        "rss": {str(n): v for n, v in rss.items()},
    }
    report["goals"] = {"b_at_least_0.9_a": report["ratios"]["b_over_a"] >= 0.9,
                       "c_at_least_a": report["ratios"]["c_over_a"] >= 1.0,
                       "rss_within_10pct": abs(report["ratios"]["rss_large_over_small"] - 1.0) <= 0.10}
    r = report["ratios"]
    print(f"(a) mean {a:.1f} images/s (runs {a_runs[0]:.1f}, {a_runs[1]:.1f}); "
          f"ratios: (b)/(a) = {r['b_over_a']:.2f} (target >= 0.9), (c)/(a) = {r['c_over_a']:.2f} (goal >= 1.0), "
          f"RSS {args.rss_images[1]}/{args.rss_images[0]} = {r['rss_large_over_small']:.3f} (target within 10%)")
    print("goals: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in report["goals"].items()))
    if args.json_out:
        pathlib.Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
