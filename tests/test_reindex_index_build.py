"""index.faiss: the streamed exact index is FAISS's own serialisation byte for byte; approximate
indexes are trained on a sample and report their recall@10 against exact search."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

pytest.importorskip("pyarrow")

from jaxforget.errors import UserError  # noqa: E402
from jaxforget.reindex import index_build  # noqa: E402
from jaxforget.reindex.layout import Layout, NpyWriter, partial, publish, write_metadata  # noqa: E402


def _out(tmp_path, counts, dim=8, seed=0, first_row_gap=3):
    """An OUT with shards of ``counts`` unit vectors; rows skip ``first_row_gap`` per shard (skips)."""
    rng = np.random.default_rng(seed)
    layout = Layout(tmp_path / "out", len(counts))
    records, row, all_v, all_r = [], 0, [], []
    for k, n in enumerate(counts):
        v = rng.normal(size=(n, dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        rows = np.arange(row, row + n) + first_row_gap
        row = int(rows[-1]) + 1 if n else row
        if n:
            w = NpyWriter(partial(layout.emb(k)), dim, "float32", n)
            w.append(v)
            w.close()
            publish(w.path, layout.emb(k))
            write_metadata(layout.meta(k), {"image_path": [f"{r}.jpg" for r in rows], "row": rows.tolist()})
        records.append({"shard": k, "embedded": n})
        all_v.append(v)
        all_r.append(rows)
    return layout, records, np.concatenate(all_v), np.concatenate(all_r)


def test_streamed_flat_index_is_faiss_own_file(tmp_path):
    layout, records, v, rows = _out(tmp_path, [5, 0, 7, 3])
    info = index_build.build(layout, records, 8)
    ref = faiss.IndexIDMap(faiss.IndexFlatIP(8))
    ref.add_with_ids(v, rows)
    assert layout.index.read_bytes() == faiss.serialize_index(ref).tobytes()
    assert info["exact"] and info["vectors"] == 15 and info["type"] == "IndexIDMap(IndexFlatIP)"
    index = faiss.read_index(str(layout.index))
    scores, ids = index.search(v[:4], 1)
    np.testing.assert_array_equal(ids[:, 0], rows[:4])
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-6)
    assert not list(layout.out.glob("*.partial"))


def test_beyond_the_exact_limit_an_ivf_index_with_its_recall(tmp_path):
    layout, records, v, rows = _out(tmp_path, [400, 500, 300], dim=16)
    info = index_build.build(layout, records, 16, exact_limit=1000, recall_queries=50, nprobe=4)
    assert not info["exact"] and info["factory"] == index_build.default_factory(1200) == "IVF16,Flat"
    assert info["recall_queries"] == 50 and 0.0 < info["recall@10"] <= 1.0 and info["nprobe"] == 4
    index = faiss.read_index(str(layout.index))
    assert index.ntotal == 1200 and faiss.extract_index_ivf(index).nprobe == 4
    # searching every list is exact: recall 1 on the same held sample
    full = index_build.build(layout, records, 16, exact_limit=1000, recall_queries=50, nprobe=16)
    assert full["recall@10"] == 1.0
    _, ids = faiss.read_index(str(layout.index)).search(v[:3], 1)
    np.testing.assert_array_equal(ids[:, 0], rows[:3])


def test_factory_strings_hnsw_and_refusal(tmp_path):
    layout, records, v, rows = _out(tmp_path, [60, 40], dim=8)
    info = index_build.build(layout, records, 8, spec="HNSW16", recall_queries=10)
    index = faiss.read_index(str(layout.index))
    assert info["factory"] == "HNSW16" and index.ntotal == 100 and 0.5 <= info["recall@10"] <= 1.0
    _, ids = index.search(v[-2:], 1)
    np.testing.assert_array_equal(ids[:, 0], rows[-2:])
    with pytest.raises(UserError, match="not a FAISS factory string"):
        index_build.build(layout, records, 8, spec="IVF8,Bogus")


def test_default_factory_keeps_39_training_vectors_a_list():
    assert index_build.default_factory(10_000_000) == "IVF16384,Flat"
    assert index_build.default_factory(1_000_001) == "IVF4096,Flat"
    assert index_build.default_factory(50) == "IVF1,Flat"
