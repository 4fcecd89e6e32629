"""``OUT/index.faiss``: the index a face-search service loads, ids = the photos' gallery rows.

* Up to ``exact_limit`` vectors (and no ``spec``): exact inner product, ``IndexIDMap`` over an
  ``IndexFlatIP``. The file is written shard by shard in FAISS's own serialisation (checked byte
  for byte against ``faiss.serialize_index`` in the tests), so building it holds one shard in
  memory, not the gallery.
* Beyond it, or with ``spec`` (a FAISS factory string such as ``IVF4096,Flat``, ``HNSW32``,
  ``IVF16384,PQ64``): built in memory by FAISS, trained on a random sample of at most
  ``train_size`` vectors, with ``IVF<nlist>,Flat`` (``nlist`` about ``4 sqrt(N)``) by default; its
  recall@10 against exact search is measured on a held sample of vectors that were not in the
  training sample (the exact neighbours found shard by shard).

Reading the shards back goes through memory maps; every vector is L2-normalised, so the inner
product is the cosine.
"""

from __future__ import annotations

import math
import pathlib
import struct
import time
from typing import Any, Mapping, Sequence

import faiss
import numpy as np

from jaxforget.errors import UserError
from jaxforget.eval.index import IndexConfig, build_index, recall_at_k, search
from jaxforget.reindex.layout import Layout, partial, publish, read_metadata

DEFAULT_EXACT_LIMIT = 1_000_000
RECALL_K = 10


def _shards(layout: Layout, records: Sequence[Mapping[str, Any]]) -> list[int]:
    return [int(r["shard"]) for r in sorted(records, key=lambda r: r["shard"]) if r["embedded"]]


def vectors(layout: Layout, k: int) -> np.ndarray:
    """Shard ``k``'s embeddings (a read-only memory map)."""
    return np.load(layout.emb(k), mmap_mode="r")


def rows(layout: Layout, k: int) -> np.ndarray:
    return np.asarray(read_metadata(layout.meta(k), ["row"])["row"], np.int64)


def _header(fourcc: bytes, d: int, n: int) -> bytes:
    """FAISS's index header: fourcc, d, ntotal, two unused int64 (1 << 20), is_trained, metric
    (0 = inner product)."""
    return fourcc + struct.pack("<iqqq?i", d, n, 1 << 20, 1 << 20, True, faiss.METRIC_INNER_PRODUCT)


def write_flat(path: pathlib.Path, layout: Layout, records: Sequence[Mapping[str, Any]], dim: int) -> int:
    """Writes ``IndexIDMap(IndexFlatIP)`` over every shard, streaming; returns the vector count."""
    shards = _shards(layout, records)
    n = sum(int(r["embedded"]) for r in records)
    tmp = partial(path)
    with open(tmp, "wb") as f:
        f.write(_header(b"IxMp", dim, n))
        f.write(_header(b"IxFI", dim, n))
        f.write(struct.pack("<q", n * dim))  # the flat codes: n * d floats
        for k in shards:
            v = vectors(layout, k)
            for s in range(0, len(v), 65536):
                f.write(np.ascontiguousarray(v[s:s + 65536], np.float32).tobytes())
        f.write(struct.pack("<q", n))  # the ids
        for k in shards:
            f.write(rows(layout, k).astype("<i8").tobytes())
    publish(tmp, path)
    return n


def default_factory(n: int) -> str:
    """``IVF<nlist>,Flat``, ``nlist`` a power of two near ``4 sqrt(n)`` with 39+ training vectors a list."""
    nlist = 2 ** max(0, round(math.log2(max(1.0, 4 * math.sqrt(n)))))
    while nlist > 1 and nlist * 39 > n:
        nlist //= 2
    return f"IVF{nlist},Flat"


def _take(layout: Layout, shards: Sequence[int], counts: Sequence[int], positions: np.ndarray) -> np.ndarray:
    """Vectors at sorted global ``positions`` (0..N-1 over the shards' embeddings in order)."""
    starts = np.concatenate([[0], np.cumsum(counts)])
    out = []
    for j, k in enumerate(shards):
        mine = positions[(positions >= starts[j]) & (positions < starts[j + 1])] - starts[j]
        if mine.size:
            out.append(np.asarray(vectors(layout, k)[mine], np.float32))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _exact_top(layout: Layout, shards: Sequence[int], queries: np.ndarray, k: int) -> np.ndarray:
    """The exact top-``k`` rows of each query over every shard (shard by shard, then merged)."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for shard in shards:
        v = np.asarray(vectors(layout, shard), np.float32)
        s, i = search(build_index(v, IndexConfig(kind="flat", use_gpu=False)), queries, min(k, len(v)))
        best_s = np.concatenate([best_s, s], axis=1)
        best_i = np.concatenate([best_i, rows(layout, shard)[i]], axis=1)
        keep = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    return best_i


def build_approximate(path: pathlib.Path, layout: Layout, records: Sequence[Mapping[str, Any]], dim: int,
                      spec: str, nprobe: int, ef_search: int, train_size: int, recall_queries: int,
                      seed: int = 0) -> dict[str, Any]:
    """A FAISS factory index over every shard, trained on a sample; its recall@10 on a held sample."""
    shards = _shards(layout, records)
    counts = [int(r["embedded"]) for r in sorted(records, key=lambda r: r["shard"]) if r["embedded"]]
    n = sum(counts)
    try:
        index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "not a factory string"
        raise UserError(f"--index={spec!r} is not a FAISS factory string FAISS can build ({first}); e.g. "
                         "IVF4096,Flat or HNSW32") from None
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    held = np.sort(order[:min(recall_queries, max(1, n // 10))])
    train = np.sort(order[len(held):len(held) + train_size]) if n > len(held) else held
    t0 = time.perf_counter()
    if not index.is_trained:
        index.train(_take(layout, shards, counts, train))
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = min(int(nprobe), ivf.nlist)
    if hasattr(faiss.downcast_index(index), "hnsw"):
        faiss.downcast_index(index).hnsw.efSearch = int(ef_search)
    if ivf is None:  # only IVF indexes store ids themselves
        index = faiss.IndexIDMap(index)
    for k in shards:
        index.add_with_ids(np.asarray(vectors(layout, k), np.float32), rows(layout, k))
    build_s = time.perf_counter() - t0
    queries = _take(layout, shards, counts, held)
    exact = _exact_top(layout, shards, queries, RECALL_K)
    _, approx = search(index, queries, RECALL_K)
    tmp = partial(path)
    faiss.write_index(index, str(tmp))
    publish(tmp, path)
    return {"vectors": n, "trained_on": int(len(train)), "build_seconds": round(build_s, 3),
            f"recall@{RECALL_K}": recall_at_k(approx, exact, RECALL_K), "recall_queries": int(len(held)),
            "nprobe": None if ivf is None else int(ivf.nprobe)}


def build(layout: Layout, records: Sequence[Mapping[str, Any]], dim: int, spec: str | None = None,
          exact_limit: int = DEFAULT_EXACT_LIMIT, nprobe: int = 32, ef_search: int = 128, train_size: int = 200_000,
          recall_queries: int = 1000) -> dict[str, Any]:
    """Writes ``OUT/index.faiss`` for the finished shards; returns what the manifest records."""
    n = sum(int(r["embedded"]) for r in records)
    t0 = time.perf_counter()
    if spec is None and n <= exact_limit:
        write_flat(layout.index, layout, records, dim)
        info: dict[str, Any] = {"type": "IndexIDMap(IndexFlatIP)", "factory": "IDMap,Flat", "exact": True,
                                "vectors": n}
    else:
        factory = spec or default_factory(n)
        info = {"type": factory, "factory": factory, "exact": False,
                **build_approximate(layout.index, layout, records, dim, factory, nprobe, ef_search, train_size,
                                    recall_queries)}
    info.update(metric="inner product (cosine: vectors are L2-normalised)", ids="gallery rows (metadata 'row')",
                seconds=round(time.perf_counter() - t0, 3), bytes=layout.index.stat().st_size)
    return info

