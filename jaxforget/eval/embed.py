"""Embedding export: jitted, device-sharded inference over an evaluation pipeline.

Eval batches follow the data contract (docs/ARCHITECTURE.md): ``{'image': uint8 (B, H, W, 3),
'label': int32 (B,), 'mask': bool (B,), 'index': int32 (B,)}``, in order, with the last batch
padded and masked. Padding rows are dropped. Images are normalised on the device,
``(x - pixel_mean) / pixel_std`` (:func:`jaxforget.ops.normalize_images`), then embedded and
L2-normalised (:func:`jaxforget.ops.l2_normalize`). With ``flip='add'`` (or ``True``) the
embedding of the horizontally flipped image is added before L2 normalisation (InsightFace's
evaluation convention); ``flip='concat'`` concatenates the two normalised-later halves instead
(doubling d).

Each batch is padded to a multiple of the device count and sharded along its first axis over a
1-D ``('data',)`` mesh of all local devices; variables are replicated.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TextIO

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxforget.ops import l2_normalize, normalize_images

ApplyFn = Callable[[Any, jax.Array], jax.Array]


@dataclasses.dataclass
class Embeddings:
    """L2-normalised float32 embeddings with their labels and image ids (one row per image)."""

    emb: np.ndarray  # (N, d) float32
    labels: np.ndarray  # (N,) int
    image_ids: np.ndarray  # (N,) int or str

    def __post_init__(self) -> None:
        self.emb = np.asarray(self.emb, np.float32)
        self.labels = np.asarray(self.labels)
        self.image_ids = np.asarray(self.image_ids)
        n = self.emb.shape[0]
        if self.emb.ndim != 2:
            raise ValueError(f"Embeddings.emb must be (N, d), got shape {self.emb.shape}")
        if self.labels.shape != (n,) or self.image_ids.shape != (n,):
            raise ValueError(
                f"Embeddings: emb has {n} rows but labels has shape {self.labels.shape} and "
                f"image_ids {self.image_ids.shape}; they must all be ({n},)"
            )

    def __len__(self) -> int:
        return self.emb.shape[0]

    @property
    def dim(self) -> int:
        return self.emb.shape[1]

    def subset(self, idx: np.ndarray) -> "Embeddings":
        """Rows ``idx`` (integer indices or a boolean mask)."""
        return Embeddings(self.emb[idx], self.labels[idx], self.image_ids[idx])

    def with_labels(self, labels: np.ndarray) -> "Embeddings":
        return Embeddings(self.emb, np.asarray(labels), self.image_ids)

    def save(self, path: str | os.PathLike) -> pathlib.Path:
        """Write ``emb``, ``labels`` and ``image_ids`` to an ``.npz`` (no pickled objects)."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ids = self.image_ids
        if ids.dtype == object:
            ids = ids.astype(str)
        np.savez(path, emb=self.emb, labels=self.labels, image_ids=ids)
        return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Embeddings":
        """Read an ``.npz`` written by :meth:`save`."""
        path = pathlib.Path(path)
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("emb", "labels", "image_ids") if k not in f.files]
            if missing:
                raise ValueError(
                    f"{path}: missing array(s) {missing}; an embeddings file holds emb, labels and "
                    f"image_ids (found {f.files})"
                )
            return cls(f["emb"], f["labels"], f["image_ids"])

    @classmethod
    def concatenate(cls, parts: Iterable["Embeddings"]) -> "Embeddings":
        parts = list(parts)
        if not parts:
            raise ValueError("Embeddings.concatenate: nothing to concatenate")
        return cls(
            np.concatenate([p.emb for p in parts]),
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.image_ids for p in parts]),
        )


class Progress:
    """Throttled one-line progress printer (to stderr by default): at most one line per ``every_s``."""

    def __init__(self, desc: str, total: int | None = None, every_s: float = 5.0, stream: TextIO | None = None):
        self.desc, self.total, self.every_s = desc, total, every_s
        self.stream = stream if stream is not None else sys.stderr
        self.count = 0
        self.start = time.perf_counter()
        self._last = -float("inf")

    def update(self, n: int) -> None:
        self.count += n
        now = time.perf_counter()
        if now - self._last >= self.every_s:
            self._last = now
            self._print(now)

    def close(self) -> None:
        self._print(time.perf_counter(), done=True)

    def _print(self, now: float, done: bool = False) -> None:
        el = now - self.start
        rate = self.count / el if el > 0 else 0.0
        tot = f"/{self.total}" if self.total else ""
        end = " done" if done else ""
        if self.total and not done:  # a bar, the percentage and the time left at the rate so far
            frac = min(1.0, self.count / self.total)
            left = f"ETA {_duration((self.total - self.count) / rate)}" if rate > 0 else "ETA ?"
            end = f" |{'#' * round(20 * frac):<20}| {100 * frac:.0f}%, {left}"
        print(f"[{self.desc}] {self.count}{tot} images, {el:.1f}s, {rate:.1f} img/s{end}", file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    """``3725`` -> ``'1h02m05s'``, ``65`` -> ``'1m05s'``, ``4.2`` -> ``'4s'``."""
    s = int(round(max(0.0, seconds)))
    h, m = s // 3600, s // 60 % 60
    return f"{h}h{m:02d}m{s % 60:02d}s" if h else f"{m}m{s % 60:02d}s" if m else f"{s}s"


def make_embed_fn(
    apply_fn: ApplyFn, pixel_mean: float, pixel_std: float, flip: bool | str = True
) -> Callable[[Any, jax.Array], jax.Array]:
    """Pure function ``(variables, uint8 images NHWC) -> L2-normalised float32 embeddings``."""
    mode = ("add" if flip else "none") if isinstance(flip, bool) else flip
    if mode not in ("add", "concat", "none"):
        raise ValueError(f"flip={flip!r}; expected True/False, 'add', 'concat' or 'none'")

    def fn(variables: Any, images: jax.Array) -> jax.Array:
        x = normalize_images(images, pixel_mean, pixel_std)
        e = apply_fn(variables, x).astype(jnp.float32)
        if mode == "none":
            return l2_normalize(e)
        ef = apply_fn(variables, jnp.flip(x, axis=2)).astype(jnp.float32)
        if mode == "add":
            return l2_normalize(e + ef)
        return l2_normalize(jnp.concatenate([e, ef], axis=-1))

    return fn


def _check_batch(batch: Mapping[str, Any], i: int) -> None:
    missing = [k for k in ("image", "label", "mask", "index") if k not in batch]
    if missing:
        raise KeyError(
            f"eval batch {i}: missing key(s) {missing}; eval batches are dicts with 'image' uint8 "
            f"(B,H,W,3), 'label', 'mask', 'index' (see docs/ARCHITECTURE.md); got {sorted(batch)}"
        )
    img = batch["image"] if hasattr(batch["image"], "dtype") else np.asarray(batch["image"])
    if img.ndim != 4 or img.shape[-1] != 3:
        raise ValueError(f"eval batch {i}: 'image' must be (B,H,W,3) NHWC RGB, got shape {img.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"eval batch {i}: 'image' must be uint8 (normalisation happens on device), got {img.dtype}")


def embed(
    apply_fn: ApplyFn,
    variables: Any,
    batches: Iterable[Mapping[str, Any]],
    pixel_mean: float,
    pixel_std: float,
    flip: bool | str = True,
    progress: bool | str = True,
    total: int | None = None,
    devices: list[jax.Device] | None = None,
) -> Embeddings:
    """Embed every unmasked image of ``batches``.

    Args:
      apply_fn: ``(variables, normalised float NHWC images) -> (B, d)`` unnormalised embeddings,
        e.g. ``functools.partial(module.apply, train=False)``.
      variables: the model's variables (replicated over devices).
      batches: iterable of eval batches (see the module docstring).
      pixel_mean, pixel_std: the model's normalisation constants.
      flip: ``True``/``'add'`` (image + flipped image), ``'concat'``, or ``False``/``'none'``.
      progress: ``False`` for silence, ``True`` or a description string for a progress line.
      total: number of images, for the progress line only.
      devices: devices to shard batches over (all local devices by default).

    Returns:
      :class:`Embeddings` with ``image_ids`` = the batches' ``index`` values, in pipeline order.
    """
    devices = list(devices or jax.local_devices())
    n_dev = len(devices)
    mesh = jax.sharding.Mesh(np.array(devices), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    data_sharding = NamedSharding(mesh, P("data"))
    repl = NamedSharding(mesh, P())
    fn = _jitted_embed_fn(apply_fn, float(pixel_mean), float(pixel_std), flip, repl)
    variables = jax.device_put(variables, repl)

    prog = Progress(progress if isinstance(progress, str) else "embed", total) if progress else None
    embs, labels, ids = [], [], []
    for i, batch in enumerate(batches):
        _check_batch(batch, i)
        images = np.asarray(batch["image"])
        mask = np.asarray(batch["mask"], bool)
        b = images.shape[0]
        pad = (-b) % n_dev
        if pad:
            images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
        out = np.asarray(fn(variables, jax.device_put(images, data_sharding)))[:b]
        embs.append(out[mask])
        labels.append(np.asarray(batch["label"])[mask])
        ids.append(np.asarray(batch["index"])[mask])
        if prog:
            prog.update(int(mask.sum()))
    if prog:
        prog.close()
    if not embs:
        raise ValueError("embed: the batch iterable was empty; nothing to embed")
    return Embeddings(np.concatenate(embs), np.concatenate(labels), np.concatenate(ids))


@functools.lru_cache(maxsize=32)
def _jitted_embed_fn(apply_fn: ApplyFn, pixel_mean: float, pixel_std: float, flip: bool | str,
                     out_sharding: NamedSharding) -> Callable[[Any, jax.Array], jax.Array]:
    """One compiled embedding function per model and setting, reused by every set embedded."""
    return jax.jit(make_embed_fn(apply_fn, pixel_mean, pixel_std, flip), out_shardings=out_sharding)


@functools.lru_cache(maxsize=32)
def _eval_apply(module: Any) -> ApplyFn:
    """The eval-mode forward of a flax module; the same object for equal modules (cache key)."""

    def apply_fn(v: Any, x: jax.Array) -> jax.Array:
        return module.apply(v, x, train=False)

    return apply_fn


def embed_model(bundle: Any, variables: Any, batches: Iterable[Mapping[str, Any]], **kwargs: Any) -> Embeddings:
    """:func:`embed` for a ``ModelBundle`` (``module``, ``pixel_mean``, ``pixel_std``) in eval mode."""
    return embed(_eval_apply(bundle.module), variables, batches, bundle.pixel_mean, bundle.pixel_std, **kwargs)
