#!/usr/bin/env python3
"""dlib or SCRFD: which detector crops raw photos closest to the reference, and how fast.

Runs ``python -m jaxforget.align`` (the product's command, :func:`jaxforget.align.run`) with each
detector on a tree of raw photos that has reference landmarks and reference crops (by default
CelebA-wild's ``raw_sample``: 175 photos of six people, ``landmarks_5pt.txt`` and
``raw_reference_112/``, made with dlib on the full-size photos), and compares:

* photos found (a crop written) of all;
* keypoint error: per photo the mean over the five points of the distance to the reference point,
  divided by the reference inter-ocular distance (between the two eye centres); mean, median,
  max, and how many photos lie beyond 0.5 (another face than the reference's);
* crop agreement with the reference crop (both 112x112): mean absolute pixel difference (0-255),
  and the cosine similarity of the embeddings of the CASIA MobileFaceNet (central 112x96,
  image + mirror) and of InsightFace's ``w600k_mbf.onnx`` (112x112, onnxruntime);
* the deployed model's retrieval on the crops: w600k_mbf leave-one-out mAP (each crop queries the
  others of the same detector);
* seconds per photo of the whole command (loading, detection, descriptors, writing the crops),
  measured on the first, complete run of each detector: wall clock and the process's CPU time
  (all its threads: onnxruntime's pool counts while it waits for work), with the machine's load
  average.

Usage, from the repository root::

    python -m studies.align_detectors [--workdir runs/align_detectors] [--detectors dlib,scrfd]

Each detector's crops go to ``WORKDIR/<detector>/`` (re-running reuses them and their timing).
Prints one markdown table; ``WORKDIR/results.json`` holds every number.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from jaxforget import align as align_cli
from jaxforget import workdir
from jaxforget.data import align_photos
from jaxforget.errors import UserError
from jaxforget.eval.embed import embed_model
from jaxforget.eval.metrics import retrieval_metrics
from jaxforget.io.onnx_format import onnx_session
from jaxforget.models import load_pretrained

SHARED = pathlib.Path("../shared")
RAW = SHARED / "data/celeba_wild/raw_sample"
REFERENCE = SHARED / "data/celeba_wild/raw_reference_112"
MOBILEFACENET = SHARED / "weights/mobilefacenet_casia/068.ckpt"
W600K = SHARED / "weights/insightface_buffalo_s/w600k_mbf.onnx"
WRONG_FACE = 0.5  # keypoint error (inter-ocular distances) beyond which a crop shows another face


def keypoint_errors(marks: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per photo in both: mean point distance over the reference inter-ocular distance."""
    out = {}
    for key in sorted(set(marks) & set(reference)):
        ref = np.asarray(reference[key], np.float64)
        iod = float(np.linalg.norm(ref[0] - ref[1]))
        out[key] = float(np.linalg.norm(np.asarray(marks[key]) - ref, axis=1).mean() / iod)
    return out


def face_frame_offsets(marks: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> np.ndarray:
    """``(n, 5, 2)`` offsets of the points from the reference's, in inter-ocular distances along
    (x) and across (y) the reference's eye line: a detector's habit (e.g. eyes placed higher)
    shows as a mean offset, its noise as the spread around it."""
    out = []
    for key in sorted(set(marks) & set(reference)):
        ref = np.asarray(reference[key], np.float64)
        axis = ref[1] - ref[0]
        iod = float(np.linalg.norm(axis))
        c, s = axis / iod
        out.append((np.asarray(marks[key]) - ref) @ np.array([[c, -s], [s, c]]) / iod)
    return np.asarray(out).reshape(-1, 5, 2)


def load_crops(folder: pathlib.Path, keys: Sequence[str]) -> np.ndarray:
    """``uint8 (n, H, W, 3)`` crops ``folder/<key>``."""
    return np.stack([np.asarray(Image.open(folder / k).convert("RGB")) for k in keys])


def mobilefacenet_embeddings(model: Any, crops: np.ndarray) -> np.ndarray:
    """L2-normalised image + mirror embeddings of 112x112 crops by a 112x96 model (central columns)."""
    bundle, variables = model
    x = crops[:, :, 8:104] if crops.shape[2] == 112 else crops
    n = len(x)
    batches = [{"image": x[i:i + 64], "label": np.zeros(len(x[i:i + 64]), np.int32),
                "mask": np.ones(len(x[i:i + 64]), bool), "index": np.arange(i, i + len(x[i:i + 64]))}
               for i in range(0, n, 64)]
    return embed_model(bundle, variables, batches, flip="add", progress=False).emb


def onnx_embeddings(session: Any, crops: np.ndarray) -> np.ndarray:
    """L2-normalised embeddings of 112x112 crops by an InsightFace recognition ONNX."""
    x = (crops.astype(np.float32) - 127.5) / 127.5
    name = session.get_inputs()[0].name
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # one a run: the zoo's graphs declare a batch of 1
    emb = np.concatenate([session.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))]).astype(np.float64)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def align_timed(detector: str, raw: pathlib.Path, out: pathlib.Path) -> dict[str, float]:
    """Seconds per photo of ``python -m jaxforget.align raw out --detector=NAME`` (its first run):
    wall clock, and CPU time of the process (all its threads; steadier on a shared machine)."""
    timing = out / "timing.json"
    if timing.is_file():
        return workdir.read_json(timing)
    args = align_cli.parse_args([str(raw), str(out), f"--detector={detector}"])
    wall, cpu = time.perf_counter(), time.process_time()
    report = align_cli.run(args)
    n = report["counts"]["images"]
    result = {"seconds_per_photo": (time.perf_counter() - wall) / n, "cpu_seconds_per_photo": (time.process_time() - cpu) / n,
              "cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0]}
    workdir.write_json(timing, result)
    return result


def compare(out: pathlib.Path, raw: pathlib.Path, reference: pathlib.Path, models: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers of one detector's output folder against the reference."""
    report = workdir.read_json(out / align_photos.REPORT_FILE)
    ref_marks = align_photos.read_landmarks(raw / "landmarks_5pt.txt")
    errors = keypoint_errors(align_photos.read_landmarks(out / align_photos.LANDMARKS_FILE), ref_marks)
    keys = sorted(errors)
    e = np.array([errors[k] for k in keys])
    offsets = face_frame_offsets(align_photos.read_landmarks(out / align_photos.LANDMARKS_FILE), ref_marks)
    habit = offsets.mean(0)
    mine, ref = load_crops(out, keys), load_crops(reference, keys)
    mad = np.abs(mine.astype(np.float64) - ref).mean(axis=(1, 2, 3))
    cos_mfn = (mobilefacenet_embeddings(models["mobilefacenet"], mine)
               * mobilefacenet_embeddings(models["mobilefacenet"], ref)).sum(1)
    w600k = onnx_embeddings(models["w600k"], mine)
    cos_w600k = (w600k * onnx_embeddings(models["w600k"], ref)).sum(1)
    people = np.unique([k.split("/")[0] for k in keys], return_inverse=True)[1]
    ids = np.arange(len(keys))
    retrieval = retrieval_metrics(w600k, people, w600k, people, ids, ids, ks=(1,))
    c = report["counts"]
    return {
        "settings": report["settings"], "found": c["found"] + c["several"], "several": c["several"],
        "images": c["images"], "compared": len(keys),
        "keypoint_error": {**summary(e, "max"), f"beyond_{WRONG_FACE}": int((e > WRONG_FACE).sum()),
                           "worst": keys[int(e.argmax())],
                           "mean_offset_per_point": habit.round(4).tolist(),
                           "mean_without_the_offsets": float(np.linalg.norm(offsets - habit, axis=2).mean())},
        "reference_iod_px_median": float(np.median([np.linalg.norm(ref_marks[k][0] - ref_marks[k][1]) for k in keys])),
        "pixel_mad": summary(mad, "max"),
        "cosine_mobilefacenet": summary(cos_mfn, "min"),
        "cosine_w600k_mbf": summary(cos_w600k, "min"),
        "w600k_mbf_leave_one_out": {"mAP": retrieval["mAP"], "R@1": retrieval["R@1"]},
    }


def summary(values: np.ndarray, extreme: str) -> dict[str, float]:
    """Mean, median and the ``'max'`` or ``'min'`` of per-photo values, as plain floats."""
    return {"mean": float(np.mean(values)), "median": float(np.median(values)), extreme: float(getattr(np, extreme)(values))}


def table(results: Mapping[str, Mapping[str, Any]]) -> str:
    lines = ["| detector | found | keypoint error / IOD: mean, median, max (> 0.5) | crop MAD (0-255) mean | "
             "cosine CASIA MobileFaceNet mean, min | cosine w600k_mbf mean, min | w600k_mbf mAP | s / photo wall, CPU |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        k, m, w = r["keypoint_error"], r["cosine_mobilefacenet"], r["cosine_w600k_mbf"]
        lines.append(f"| {name} | {r['found']} / {r['images']} | {k['mean']:.4f}, {k['median']:.4f}, {k['max']:.3f} "
                     f"({k[f'beyond_{WRONG_FACE}']}) | {r['pixel_mad']['mean']:.2f} | {m['mean']:.4f}, {m['min']:.4f} | "
                     f"{w['mean']:.4f}, {w['min']:.4f} | {100 * r['w600k_mbf_leave_one_out']['mAP']:.2f} | "
                     f"{r['seconds_per_photo']:.3f}, {r['cpu_seconds_per_photo']:.3f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.align_detectors", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=pathlib.Path, default=RAW, help="photos <person>/<photo> with landmarks_5pt.txt")
    parser.add_argument("--reference", type=pathlib.Path, default=REFERENCE, help="reference crops <person>/<photo>")
    parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("runs/align_detectors"))
    parser.add_argument("--detectors", default="dlib,scrfd", help="comma-separated, of dlib, scrfd")
    args = parser.parse_args(argv)
    try:
        for path in (args.raw / "landmarks_5pt.txt", args.reference, MOBILEFACENET, W600K):
            if not path.exists():
                raise UserError(f"{path} not found (the study reads ../shared from the repository root)")
        models = {"mobilefacenet": load_pretrained({"init": str(MOBILEFACENET)}), "w600k": onnx_session(W600K)}
        results = {}
        names = args.detectors.split(",")
        if not set(names) <= {"dlib", "scrfd"}:
            raise UserError(f"--detectors {args.detectors}: give dlib, scrfd or both, comma-separated")
        for name in names:
            out = args.workdir / name
            timing = align_timed(name, args.raw, out)  # first: it makes the crops
            results[name] = {**compare(out, args.raw, args.reference, models), **timing}
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    workdir.write_json(args.workdir / "results.json", results)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
