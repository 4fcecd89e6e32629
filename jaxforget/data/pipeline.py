"""grain input pipelines: P x K identity-balanced training batches and padded evaluation batches.

Batches are dicts of numpy arrays::

    {'image': uint8 (B, H, W, 3), 'label': int32 (B,), 'mask': bool (B,), 'index': int32 (B,)}

``index`` is the record index in the source (``-1`` for padding). Images stay ``uint8``; convert
them on the device inside jitted code with :func:`jaxforget.ops.normalize_images` and the
model's constants.

Training (:func:`train_dataset`): batch ``b`` holds ``P`` distinct identities x ``K`` images.
Identities are visited epoch by epoch in a seeded permutation (``len(identities) // P`` batches an
epoch; the last ``len(identities) % P`` of a permutation are skipped that epoch, and each epoch
draws a fresh permutation, so every identity is visited equally often on average). An identity with
at least ``K`` images contributes ``K`` distinct images drawn at random; one with fewer contributes
all of its images plus random repeats (sampling with replacement) to reach ``K`` (a repeated image
usually differs by its random flip). Every image is randomly flipped left-right with probability
1/2. The stream is endless and fully determined by ``seed``: element ``i`` of the stream depends on
``(seed, i)`` only, so the grain iterator's state (``get_state`` / ``set_state``, or
``grain.checkpoint.CheckpointSave`` in an orbax ``CheckpointManager``) resumes it exactly.

Evaluation (:func:`eval_dataset`): every selected record exactly once, in order, in batches of
``batch_size``; the last batch is padded with black images with ``mask=False`` and ``index=-1``.

Unreadable images (sources with ``strict=False``) never stop a run: in training a record that fails
to decode is replaced by another image of the same identity (``mask=False`` if none decodes); in
evaluation it gets ``mask=False`` (with its real ``index``). Both are counted by the source and
reported (``source.failure_report()``; :class:`EvalBatches` logs it at the end of a pass).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import sys
from typing import Any, Hashable, Iterator, Mapping, Sequence

import grain
import numpy as np
from absl import flags

log = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]


def default_read_options(num_threads: int | None = None) -> grain.ReadOptions:
    """Threads that each assemble whole batches: ``min(4, cpu count)`` unless given, and a
    prefetch buffer of twice as many batches."""
    if num_threads is None:
        num_threads = max(1, min(4, os.cpu_count() or 1))
    return grain.ReadOptions(num_threads=int(num_threads), prefetch_buffer_size=2 * max(1, int(num_threads)))


def resolve_labels(
    source,
    indices: Sequence[int] | np.ndarray | None = None,
    labels: Sequence[int] | np.ndarray | None = None,
    label_map: Mapping[Hashable, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Record indices and their ``int32`` labels.

    ``labels`` (one per source record) wins over ``label_map`` (raw identity -> class, e.g.
    ``Split.class_index``); with neither, labels are the ranks of the selected records' identities
    among their sorted distinct identities. Records whose label is negative (or whose identity is
    not in ``label_map``) are dropped from training; in evaluation they keep label ``-1``.
    """
    n = len(source)
    idx = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise IndexError(f"record indices must lie in [0, {n}); got range [{idx.min()}, {idx.max()}]")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise ValueError(f"labels must have one entry per source record, shape ({n},); got {labels.shape}")
        lab = labels[idx].astype(np.int32)
    else:
        ids = np.asarray(source.identities)[idx]
        if label_map is not None:
            lab = np.asarray([label_map.get(v.item() if isinstance(v, np.generic) else v, -1) for v in ids], np.int32)
        else:
            _, lab = np.unique(ids, return_inverse=True)
            lab = lab.astype(np.int32).reshape(-1)
    return idx, lab


@dataclasses.dataclass
class PKSampler:
    """Random-access, endless stream of ``(record, label, group)`` for P x K batches.

    Element ``i`` belongs to batch ``b = i // (P*K)``, identity slot ``(i % (P*K)) // K`` and image
    slot ``i % K``; everything about batch ``b`` is a function of ``(seed, b)``.
    """

    groups: list[np.ndarray]
    group_labels: np.ndarray
    p: int
    k: int
    seed: int

    def __post_init__(self):
        g = len(self.groups)
        if self.p < 1 or self.k < 1:
            raise ValueError(f"identities_per_batch (P) and images_per_identity (K) must be >= 1; got P={self.p}, K={self.k}")
        if g < self.p:
            raise ValueError(
                f"a P x K batch needs P={self.p} distinct identities but the training set has {g}; "
                f"lower identities_per_batch or add identities"
            )
        self.batches_per_epoch = g // self.p

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def __len__(self) -> int:
        return sys.maxsize

    @functools.lru_cache(maxsize=4)
    def _epoch_perm(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 7, epoch]).permutation(len(self.groups))

    @functools.lru_cache(maxsize=8)
    def batch_plan(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """``(group per slot (P,), record per element (P*K,))`` of batch ``b``."""
        epoch, pos = divmod(b, self.batches_per_epoch)
        gsel = self._epoch_perm(epoch)[pos * self.p : (pos + 1) * self.p]
        rng = np.random.default_rng([self.seed, 11, b])
        recs = []
        for gi in gsel:
            members = self.groups[gi]
            if len(members) >= self.k:
                recs.append(rng.choice(members, size=self.k, replace=False))
            else:
                extra = rng.choice(members, size=self.k - len(members), replace=True)
                recs.append(rng.permutation(np.concatenate([members, extra])))
        return gsel, np.concatenate(recs)

    def __getitem__(self, i: int) -> tuple[int, int, int]:
        b, j = divmod(int(i), self.batch_size)
        gsel, recs = self.batch_plan(b)
        g = int(gsel[j // self.k])
        return int(recs[j]), int(self.group_labels[g]), g

    def __hash__(self) -> int:  # lru_cache on methods needs a hashable self
        return id(self)


class _TrainLoad:
    """Maps a sampler element to a record dict (picklable for multiprocessing workers)."""

    def __init__(self, source, groups: list[np.ndarray]):
        self.source = source
        self.groups = groups

    def __call__(self, item: tuple[int, int, int]) -> dict[str, Any]:
        rec_idx, label, g = item
        rec = self.source[rec_idx]
        valid = bool(rec.get("valid", True))
        if not valid:
            members = self.groups[g]
            start = int(np.searchsorted(members, rec_idx))
            for step in range(1, len(members)):
                alt = int(members[(start + step) % len(members)])
                rec = self.source[alt]
                if rec.get("valid", True):
                    rec_idx, valid = alt, True
                    break
        return {
            "image": np.asarray(rec["image"], np.uint8),
            "label": np.int32(label),
            "mask": np.bool_(valid),
            "index": np.int32(rec_idx),
        }


def _flip(element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    if rng.random() < 0.5:
        element = dict(element)
        element["image"] = np.ascontiguousarray(element["image"][:, ::-1])
    return element


def train_dataset(
    source,
    indices: Sequence[int] | np.ndarray | None = None,
    *,
    identities_per_batch: int,
    images_per_identity: int,
    seed: int = 0,
    labels: Sequence[int] | np.ndarray | None = None,
    label_map: Mapping[Hashable, int] | None = None,
    flip: bool = True,
    num_threads: int | None = None,
    worker_count: int = 0,
) -> grain.IterDataset:
    """Endless P x K training batches over ``source`` records ``indices``.

    Args:
      source: a face source (``len``, ``[]``, ``identities``).
      indices: record indices to train on (default: all), e.g. ``split.forget_train()``.
      identities_per_batch: P, distinct identities per batch.
      images_per_identity: K, images of each identity per batch (with replacement when fewer).
      seed: determines identity order, image choice and flips.
      labels / label_map: see :func:`resolve_labels` (use ``split.class_index`` for the CosFace
        head's rows).
      flip: random horizontal flips.
      num_threads: threads assembling batches (grain ``ReadOptions``); default ``min(4, cpu count)``.
      worker_count: > 0 adds grain multiprocessing prefetch with that many worker processes
        (worth it for JPEG decode of big images on many cores; 0 is right for 2 cores and tests).
    Returns:
      a ``grain.IterDataset``; ``iter()`` gives a checkpointable iterator of batches.
    """
    idx, lab = resolve_labels(source, indices, labels, label_map)
    keep = lab >= 0
    idx, lab = idx[keep], lab[keep]
    if idx.size == 0:
        raise ValueError(f"no training records: the selection of {len(keep)} records has no labelled identity")
    order = np.argsort(lab, kind="stable")
    uniq, starts = np.unique(lab[order], return_index=True)
    groups = [np.sort(g) for g in np.split(idx[order], starts[1:])]
    sampler = PKSampler(groups, uniq.astype(np.int32), int(identities_per_batch), int(images_per_identity), int(seed))
    ds = grain.MapDataset.source(sampler).map(_TrainLoad(source, groups))
    if flip:
        ds = ds.random_map(_flip, seed=int(seed) + 1)
    # Batch on the MapDataset so that batch b is exactly elements b*B .. b*B+B-1 (the P x K plan),
    # also when multiprocessing workers take whole batches in turn.
    ds = ds.batch(sampler.batch_size, drop_remainder=True)
    it = ds.to_iter_dataset(default_read_options(num_threads))
    if worker_count > 0:
        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; scripts may not parse them
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(worker_count)))
    return it


class _EvalLoad:
    def __init__(self, source, idx: np.ndarray, lab: np.ndarray, output_size: tuple[int, int]):
        self.source, self.idx, self.lab, self.output_size = source, idx, lab, output_size

    def __call__(self, j: int) -> dict[str, Any]:
        j = int(j)
        if j >= len(self.idx):
            return {
                "image": np.zeros(self.output_size + (3,), np.uint8),
                "label": np.int32(-1),
                "mask": np.bool_(False),
                "index": np.int32(-1),
            }
        r = int(self.idx[j])
        rec = self.source[r]
        return {
            "image": np.asarray(rec["image"], np.uint8),
            "label": np.int32(self.lab[j]),
            "mask": np.bool_(rec.get("valid", True)),
            "index": np.int32(r),
        }


class EvalBatches:
    """Iterable of padded, masked evaluation batches; each pass visits every record once.

    ``len()`` is the number of batches. At the end of a pass, images that could not be decoded
    are logged (count and first ids) and counted in ``skipped`` (record indices).
    """

    def __init__(self, source, idx: np.ndarray, lab: np.ndarray, batch_size: int, num_threads: int | None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.source, self.indices, self.labels, self.batch_size = source, idx, lab, int(batch_size)
        self.num_images = int(idx.size)
        n_pad = math.ceil(self.num_images / self.batch_size) * self.batch_size
        out_size = tuple(source.output_size) if hasattr(source, "output_size") else tuple(source[0]["image"].shape[:2])
        ds = grain.MapDataset.range(n_pad).map(_EvalLoad(source, idx, lab, out_size)).batch(self.batch_size)
        self.dataset = ds.to_iter_dataset(default_read_options(num_threads))
        self.skipped: list[int] = []

    def __len__(self) -> int:
        return math.ceil(self.num_images / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        skipped = []
        for batch in self.dataset:
            bad = (~batch["mask"]) & (batch["index"] >= 0)
            if bad.any():
                skipped.extend(int(v) for v in batch["index"][bad])
            yield batch
        self.skipped = skipped
        if skipped:
            ids = [self.source.image_ids[i] for i in skipped[:5]]
            log.warning("evaluation skipped %d unreadable image(s) of %d (masked out): %s", len(skipped), self.num_images, ids)


def eval_dataset(
    source,
    indices: Sequence[int] | np.ndarray | None = None,
    *,
    batch_size: int,
    labels: Sequence[int] | np.ndarray | None = None,
    label_map: Mapping[Hashable, int] | None = None,
    num_threads: int | None = None,
) -> EvalBatches:
    """Every record of ``indices`` (default: all) once, in order, in padded masked batches.

    Labels follow :func:`resolve_labels`; records outside ``label_map`` keep label ``-1`` (and
    ``mask=True``: they are real images, e.g. distractors).
    """
    idx, lab = resolve_labels(source, indices, labels, label_map)
    if idx.size == 0:
        raise ValueError("eval_dataset: no records selected (empty indices)")
    return EvalBatches(source, idx, lab, batch_size, num_threads)
