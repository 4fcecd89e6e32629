"""FAISS inner-product search: exact by default, IVF-Flat or HNSW for very large galleries.

Exact retrieval metrics (:func:`jaxforget.eval.metrics.retrieval_metrics`) never need an index:
they rank the whole gallery. An index is for top-k search: nearest-neighbour lists, the leakage
tool, and approximate evaluation of galleries of millions, where
:func:`measure_recall` reports how much of the exact top-k the approximate index finds.

``IndexConfig.kind``:

* ``'flat'``  - ``IndexFlatIP``, exact (the default).
* ``'ivf'``   - ``IndexIVFFlat`` with ``nlist`` inverted lists (trained k-means on the gallery or a
  sample of it), searching ``nprobe`` lists.
* ``'hnsw'``  - ``IndexHNSWFlat`` with ``hnsw_m`` links per node, ``ef_construction`` /
  ``ef_search`` beam widths, inner-product metric.

FAISS on GPU is used when ``use_gpu`` is True, or ``None`` (auto) and ``faiss.get_num_gpus() > 0``
(GPU builds of FAISS only). HNSW has no GPU implementation and stays on CPU.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import faiss
import numpy as np

KINDS = ("flat", "ivf", "hnsw")


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    """Which FAISS index to build. See the module docstring for the kinds."""

    kind: str = "flat"
    nlist: int = 1024
    nprobe: int = 32
    train_size: int = 200_000
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    use_gpu: bool | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"IndexConfig.kind={self.kind!r}; expected one of {KINDS}")

    @classmethod
    def from_mapping(cls, cfg: Any) -> "IndexConfig":
        """Build from a dict or ml_collections ConfigDict (unknown keys are an error)."""
        if cfg is None:
            return cls()
        items = dict(cfg.items()) if hasattr(cfg, "items") else dict(cfg)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(items) - names)
        if unknown:
            raise ValueError(f"index config: unknown field(s) {unknown}; known fields are {sorted(names)}")
        return cls(**items)


def gpu_available() -> bool:
    """True when the installed FAISS is a GPU build and sees at least one GPU."""
    get = getattr(faiss, "get_num_gpus", None)
    return bool(get is not None and get() > 0)


def _check_matrix(x: Any, name: str, d: int | None = None) -> np.ndarray:
    a = np.ascontiguousarray(np.asarray(x), dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (N, d), got shape {a.shape}")
    if d is not None and a.shape[1] != d:
        raise ValueError(f"{name}: dimension {a.shape[1]} does not match the index dimension {d}")
    return a


def build_index(gallery: np.ndarray, cfg: IndexConfig | None = None) -> faiss.Index:
    """Build a FAISS inner-product index over ``gallery`` (N, d) float32 and add every row.

    Row ``i`` of the gallery gets FAISS id ``i``.
    """
    cfg = cfg or IndexConfig()
    g = _check_matrix(gallery, "gallery")
    n, d = g.shape
    if n == 0:
        raise ValueError("gallery is empty: nothing to index")
    if cfg.kind == "flat":
        index: faiss.Index = faiss.IndexFlatIP(d)
    elif cfg.kind == "ivf":
        nlist = int(min(cfg.nlist, max(1, n // 39)))  # FAISS wants >= 39 training points per list
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = cfg.seed
        index.nprobe = int(min(cfg.nprobe, nlist))
    else:
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.ef_construction
        index.hnsw.efSearch = cfg.ef_search

    use_gpu = gpu_available() if cfg.use_gpu is None else bool(cfg.use_gpu)
    if use_gpu and cfg.kind != "hnsw":
        if not gpu_available():
            raise RuntimeError(
                "IndexConfig.use_gpu=True but FAISS sees no GPU (faiss-cpu installed?); "
                "install faiss-gpu or set use_gpu=None"
            )
        index = faiss.index_cpu_to_all_gpus(index)
        if cfg.kind == "ivf":
            faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", int(min(cfg.nprobe, nlist)))

    if not index.is_trained:
        if n > cfg.train_size:
            rng = np.random.default_rng(cfg.seed)
            sample = g[np.sort(rng.choice(n, cfg.train_size, replace=False))]
        else:
            sample = g
        index.train(sample)
    index.add(g)
    return index


def search(index: faiss.Index, queries: np.ndarray, k: int, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` search in batches. Returns ``(scores (Q, k) float32, ids (Q, k) int64)``.

    When the index holds fewer than ``k`` items the missing slots have id ``-1`` and score
    ``-inf`` (FAISS's own padding is replaced so callers can rely on it).
    """
    q = _check_matrix(queries, "queries", index.d)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scores = np.empty((q.shape[0], k), np.float32)
    ids = np.empty((q.shape[0], k), np.int64)
    for s in range(0, q.shape[0], batch_size):
        d, i = index.search(q[s : s + batch_size], k)
        scores[s : s + batch_size] = d
        ids[s : s + batch_size] = i
    scores[ids < 0] = -np.inf
    return scores, ids


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int | None = None) -> float:
    """Mean over queries of |approx top-k  intersect  exact top-k| / |exact top-k| (ids ``-1``,
    the padding of a gallery smaller than k, never count)."""
    a = np.asarray(approx_ids)
    e = np.asarray(exact_ids)
    if a.shape[0] != e.shape[0]:
        raise ValueError(f"approx_ids has {a.shape[0]} queries but exact_ids has {e.shape[0]}")
    k = k or e.shape[1]
    if a.shape[1] < k or e.shape[1] < k:
        raise ValueError(f"need at least k={k} columns, got approx {a.shape} and exact {e.shape}")
    hits = total = 0
    for ra, re_ in zip(a[:, :k], e[:, :k]):
        valid = re_[re_ >= 0]
        hits += np.intersect1d(ra[ra >= 0], valid).size
        total += valid.size
    return hits / max(total, 1)


def measure_recall(
    gallery: np.ndarray, queries: np.ndarray, cfg: IndexConfig, k: int = 10
) -> dict[str, float]:
    """Build ``cfg``'s index and an exact one; report recall@k of the approximate search and timings."""
    t0 = time.perf_counter()
    exact = build_index(gallery, IndexConfig(kind="flat", use_gpu=cfg.use_gpu))
    _, e_ids = search(exact, queries, k)
    t1 = time.perf_counter()
    approx = build_index(gallery, cfg)
    t2 = time.perf_counter()
    _, a_ids = search(approx, queries, k)
    t3 = time.perf_counter()
    return {
        f"recall@{k}": recall_at_k(a_ids, e_ids, k),
        "exact_seconds": t1 - t0,
        "build_seconds": t2 - t1,
        "search_seconds": t3 - t2,
    }
