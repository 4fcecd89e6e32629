"""Fixtures of the re-index tests (``tests/test_reindex_*.py``, ``test_data_gallery.py``,
``test_eval_engines.py``): a tiny random-weights MobileFaceNet as ONNX and as a variables
directory, and small galleries in the three layouts, all made in ``tmp_path``."""

from __future__ import annotations

import io
import json
import pathlib
import tarfile

import numpy as np
from PIL import Image

from jaxforget.io import checkpoint
from jaxforget.models import onnx_export
from jaxforget.testing.variables import random_variables

TINY = {"name": "mobilefacenet", "width_mult": 0.25, "input_size": (32, 32), "embedding_size": 16}


def tiny_model(folder: pathlib.Path, seed: int = 0) -> tuple[pathlib.Path, pathlib.Path]:
    """``(tiny.onnx, tiny_model/)`` of the same random variables (input 32x32, 16-d)."""
    folder.mkdir(parents=True, exist_ok=True)
    bundle, variables = random_variables(TINY, seed)
    onnx = onnx_export.save_onnx_backbone(bundle, variables, folder / f"tiny{seed}.onnx")
    directory = folder / f"tiny{seed}_model"
    checkpoint.save_variables(directory, variables, {"model": bundle.config()})
    return onnx, directory


def face(person: int, photo: int, size=(32, 32)) -> np.ndarray:
    """A person's photo: the person's fixed pattern plus a little per-photo noise (photos of one
    person are near-duplicates, so any model puts them together)."""
    base = np.random.default_rng(1000 + person).integers(0, 256, (*size, 3))
    noise = np.random.default_rng(person * 7919 + photo).normal(0, 6, (*size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def folder_gallery(root: pathlib.Path, people: int = 4, photos: int = 5, bad: bool = True,
                   size=(32, 32)) -> pathlib.Path:
    """``root/p<i>/<j>.jpg``; with ``bad``, also an empty file, a text file, a truncated JPEG and
    a top-level ``report.json`` (ignored): 3 skipped photos."""
    for p in range(people):
        d = root / f"p{p}"
        d.mkdir(parents=True, exist_ok=True)
        for j in range(photos):
            (d / f"{j:03d}.jpg").write_bytes(jpeg(face(p, j, size)))
    if bad:
        (root / "p0" / "empty.jpg").write_bytes(b"")
        (root / "p1" / "notes.txt").write_text("not a photo")
        good = jpeg(face(2, 99, size))
        (root / "p2" / "truncated.jpg").write_bytes(good[: len(good) // 2])
        (root / "report.json").write_text("{}")
    return root


def list_gallery_file(folder: pathlib.Path, gallery: pathlib.Path) -> pathlib.Path:
    """A text list of the folder gallery's photos (relative paths, a tab and the person), with a
    comment, a blank line and one photo listed twice."""
    lines = ["# photos of the service"]
    for d in sorted(p for p in gallery.iterdir() if p.is_dir()):
        for f in sorted(d.iterdir()):
            lines.append(f"{f.relative_to(folder).as_posix()}\t{d.name}")
    lines += ["", lines[1]]
    path = folder / "photos.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def tar_gallery(folder: pathlib.Path, people: int = 3, photos: int = 4, per_shard: int = 5,
                size=(32, 32)) -> pathlib.Path:
    """img2dataset-like shards ``folder/shards/0000<k>.tar``: ``<key>.jpg``, ``<key>.json`` and a
    ``<key>.cls`` person; a sample without an image (``.json`` only) in the first shard."""
    out = folder / "shards"
    out.mkdir(parents=True, exist_ok=True)
    samples = [(p, j) for p in range(people) for j in range(photos)]
    for s in range(0, len(samples), per_shard):
        with tarfile.open(out / f"{s // per_shard:05d}.tar", "w") as tar:
            def add(name: str, data: bytes) -> None:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            for n, (p, j) in enumerate(samples[s:s + per_shard]):
                key = f"{s + n:09d}"
                add(f"{key}.jpg", jpeg(face(p, j, size)))
                add(f"{key}.json", json.dumps({"key": key}).encode())
                add(f"{key}.cls", f"p{p}".encode())
            if s == 0:
                add("000999999.json", b"{}")
    return out
