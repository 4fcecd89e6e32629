"""Inference engines for a deployed model: uint8 faces in, L2-normalised float32 embeddings out.

A model is an ONNX file (the project's export or an InsightFace zoo file), a variables directory
(a run's ``unlearned_model/``, ``tools/convert_insightface.py``'s output) or a PyTorch ``.pth`` /
``.ckpt``. Two engines run them:

* ``onnxruntime`` (the default for ONNX files: what deployed systems run). The input is fed as
  InsightFace's ``ArcFaceONNX`` feeds it: RGB NCHW ``(pixel - 127.5) / 127.5``, or mean 0 / std 1
  when the graph normalises itself (nodes named ``Sub``/``_minus`` and ``Mul``/``_mul`` among
  its first eight); the size is the graph input's. A checkpoint runs on it through the same
  graph the project exports (:func:`jaxforget.models.onnx_export.onnx_model`, built in memory).
* ``jax`` (the default for checkpoints): the Flax model of
  :func:`jaxforget.models.loading.load_pretrained` (``model.init``'s one recipe; ONNX files it
  can read included), jitted on fixed-size batches, with the model's own normalisation.

No flip is added: the embedding is the one image's, as a face-search service computes it.
:func:`describe_model` tells what a model takes without building an engine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
from typing import Any, Callable

import jax
import numpy as np

from jaxforget.eval.embed import make_embed_fn
from jaxforget.io import onnx_format
from jaxforget.models import loading, onnx_export
from jaxforget.models.onnx_layout import ONNX_PIXEL_MEAN, ONNX_PIXEL_STD
from jaxforget.models.registry import family_of

ENGINES = ("onnxruntime", "jax")
#: The model kinds :func:`model_kind` tells apart.
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt")


class EngineError(ValueError):
    """The model cannot run on the asked engine (one line naming the file and what to do)."""


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a model takes: ``input_size (H, W)`` of uint8 RGB faces, normalised as
    ``(x - pixel_mean) / pixel_std``; ``embedding_size`` (None when the graph leaves it open)."""

    path: str
    kind: str  # 'onnx' or 'checkpoint'
    name: str
    input_size: tuple[int, int]
    pixel_mean: float
    pixel_std: float
    embedding_size: int | None


def model_kind(path: str | os.PathLike) -> str:
    """``'onnx'`` for a ``.onnx`` file, ``'checkpoint'`` for a variables directory or a PyTorch file."""
    p = pathlib.Path(path)
    if not p.exists():
        raise FileNotFoundError(f"model {p} does not exist; give an .onnx file, a run's unlearned_model/ or a .pth")
    if p.is_dir():
        return "checkpoint"
    if p.suffix.lower() == ".onnx":
        return "onnx"
    if p.suffix.lower() in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    raise EngineError(f"model {p}: unknown kind {p.suffix!r}; give an .onnx file, a variables directory "
                      "(unlearned_model/) or a .pth/.pt/.ckpt")


def model_sha256(path: str | os.PathLike) -> str:
    """sha256 of a model file, or of a directory's files (relative names and contents, sorted)."""
    p = pathlib.Path(path)
    h = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(f.relative_to(p).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def default_engine(path: str | os.PathLike) -> str:
    """onnxruntime for ONNX files, jax for checkpoints."""
    return "onnxruntime" if model_kind(path) == "onnx" else "jax"


def _onnx_normalisation(graph: onnx_format.OnnxGraph) -> tuple[float, float]:
    """InsightFace ``ArcFaceONNX``'s rule: mean 0 / std 1 when the graph normalises its input."""
    first = [n.name for n in graph.nodes[:8]]
    sub = any(n.startswith(("Sub", "_minus")) for n in first)
    mul = any(n.startswith(("Mul", "_mul")) for n in first)
    return (0.0, 1.0) if sub and mul else (ONNX_PIXEL_MEAN, ONNX_PIXEL_STD)


def _onnx_info(path: pathlib.Path) -> ModelInfo:
    graph = onnx_format.read_onnx(path)
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise EngineError(f"{path}: a recognition model has one input and one output; this graph has "
                          f"{len(graph.inputs)} and {len(graph.outputs)}")
    shape = graph.inputs[0].shape
    if len(shape) != 4 or shape[1] != 3 or not all(isinstance(s, int) and s > 0 for s in shape[2:]):
        raise EngineError(f"{path}: input {graph.inputs[0].name!r} has shape {shape}; a face model takes "
                          "(batch, 3, height, width) with a fixed height and width")
    out = graph.outputs[0].shape
    dim = out[-1] if out and isinstance(out[-1], int) and out[-1] > 0 else None
    mean, std = _onnx_normalisation(graph)
    return ModelInfo(str(path), "onnx", path.stem, (int(shape[2]), int(shape[3])), mean, std, dim)


def describe_model(path: str | os.PathLike, engine: str) -> ModelInfo:
    """What ``path`` takes on ``engine`` (its input size and normalisation), without loading its
    weights where the format allows it."""
    p = pathlib.Path(path)
    kind = model_kind(p)
    if kind == "onnx" and engine == "onnxruntime":
        return _onnx_info(p)
    cfg = loading.model_config({"init": str(p)})
    if engine == "onnxruntime":  # the project's export: its graph's normalisation
        mean, std = ONNX_PIXEL_MEAN, ONNX_PIXEL_STD
    else:
        family = family_of(cfg["name"])
        mean, std = family.pixel_mean, family.pixel_std
    return ModelInfo(str(p), kind, cfg["name"], tuple(cfg["input_size"]), float(mean), float(std),
                     int(cfg["embedding_size"]))


def _unit(e: np.ndarray) -> np.ndarray:
    e = np.asarray(e, np.float32)
    norm = np.sqrt(np.sum(np.square(e, dtype=np.float64), axis=1, keepdims=True))
    return (e / np.maximum(norm, 1e-6)).astype(np.float32)


class OnnxRuntimeEngine:
    """A model on onnxruntime's CPU provider (or CUDA when ``gpu`` and onnxruntime-gpu is there)."""

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, threads: int | None = None, gpu: bool = False):
        p = pathlib.Path(path)
        self.info = describe_model(p, "onnxruntime")
        if self.info.kind == "onnx":
            model: Any = str(p)
        else:  # a checkpoint: the graph the project exports, in memory
            bundle, variables = loading.load_pretrained({"init": str(p)})
            model = onnx_export.onnx_model(bundle, variables)
        self.session = onnx_format.onnx_session(model, threads=threads, gpu=gpu, quiet=True)
        self.input_name = self.session.get_inputs()[0].name

    def embed(self, images: np.ndarray) -> np.ndarray:
        x = (np.asarray(images, np.float32) - self.info.pixel_mean) / self.info.pixel_std
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return _unit(self.session.run(None, {self.input_name: x})[0])


class JaxEngine:
    """A model as the Flax module ``model.init`` loads, jitted once for batches of ``batch_size``
    (a shorter batch is padded, so nothing is compiled twice)."""

    name = "jax"

    def __init__(self, path: str | os.PathLike, batch_size: int = 64):
        p = pathlib.Path(path)
        try:
            bundle, variables = loading.load_pretrained({"init": str(p)})
        except (ValueError, KeyError) as e:  # the layouts' mismatch errors are ValueErrors
            raise EngineError(f"{e} (the JAX engine cannot load it; run it with --engine=onnxruntime)") from None
        self.info = ModelInfo(str(p), model_kind(p), bundle.name, tuple(bundle.input_size), float(bundle.pixel_mean),
                              float(bundle.pixel_std), int(bundle.embedding_size))
        self.batch_size = int(batch_size)
        self.variables = jax.device_put(variables)
        apply: Callable[[Any, jax.Array], jax.Array] = lambda v, x: bundle.module.apply(v, x, train=False)
        self._fn = jax.jit(make_embed_fn(apply, bundle.pixel_mean, bundle.pixel_std, flip=False))

    def embed(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, np.uint8)
        out = []
        for s in range(0, len(images), self.batch_size):
            part = images[s:s + self.batch_size]
            n = len(part)
            if n < self.batch_size:
                part = np.concatenate([part, np.zeros((self.batch_size - n, *part.shape[1:]), np.uint8)])
            out.append(np.asarray(self._fn(self.variables, part), np.float32)[:n])
        return np.concatenate(out) if out else np.zeros((0, self.info.embedding_size or 0), np.float32)


def open_engine(path: str | os.PathLike, engine: str = "auto", *, batch_size: int = 64, threads: int | None = None,
                gpu: bool = False) -> OnnxRuntimeEngine | JaxEngine:
    """The engine ``engine`` (``'auto'``: :func:`default_engine`) for the model at ``path``."""
    engine = default_engine(path) if engine == "auto" else engine
    if engine not in ENGINES:
        raise EngineError(f"engine {engine!r} is not known; use one of {', '.join(ENGINES)}")
    if engine == "onnxruntime":
        return OnnxRuntimeEngine(path, threads=threads, gpu=gpu)
    return JaxEngine(path, batch_size=batch_size)
