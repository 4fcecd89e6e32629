"""OUT's files: embeddings written batch by batch end as a plain .npy, a shard counts as done only
with its record and matching files, and an OUT that is not a re-index is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("pyarrow")

from jaxforget.errors import UserError  # noqa: E402
from jaxforget.reindex import layout as L  # noqa: E402


def test_npy_writer_rewrites_its_header(tmp_path):
    for dtype, capacity in (("float32", 10), ("float16", 10**9)):
        path = tmp_path / f"e_{dtype}.npy"
        w = L.NpyWriter(path, 3, dtype, capacity)
        blocks = [np.random.default_rng(i).normal(size=(n, 3)) for i, n in enumerate((4, 1, 2))]
        for b in blocks:
            w.append(b)
        w.close()
        got = np.load(path)
        assert got.dtype == np.dtype(dtype) and got.shape == (7, 3) and L.npy_rows(path) == (7, 3)
        np.testing.assert_array_equal(got, np.concatenate(blocks).astype(dtype))
    w = L.NpyWriter(tmp_path / "x.npy", 3, "float32", 5)
    with pytest.raises(ValueError, match="expected"):
        w.append(np.zeros((2, 4)))
    w.abort()
    assert not (tmp_path / "x.npy").exists()


def test_names_sort_like_the_shards():
    layout = L.Layout("out", 12)
    assert layout.emb(3).name == "img_emb_03.npy" and layout.meta(11).name == "metadata_11.parquet"
    assert sorted(layout.emb(k).name for k in range(12)) == [layout.emb(k).name for k in range(12)]
    assert L.Layout("out", 1).emb(0).name == "img_emb_0.npy"
    assert L.partial(layout.emb(0)).name == "img_emb_00.npy.partial"  # not matched by *.npy readers


def test_a_shard_is_done_with_its_record_and_matching_files(tmp_path):
    layout = L.Layout(tmp_path, 2)
    w = L.NpyWriter(L.partial(layout.emb(0)), 2, "float32", 3)
    w.append(np.ones((3, 2)))
    w.close()
    L.publish(w.path, layout.emb(0))
    assert L.finished(layout, 0, "d0") is None  # no metadata, no record
    L.write_metadata(layout.meta(0), {"image_path": ["a", "b", "c"], "row": [0, 1, 2]})
    assert L.finished(layout, 0, "d0") is None  # no record
    layout.record(0).parent.mkdir(parents=True, exist_ok=True)
    layout.record(0).write_text(json.dumps({"digest": "d0", "embedded": 3}))
    assert L.finished(layout, 0, "d0")["embedded"] == 3
    assert L.finished(layout, 0, "other photos") is None
    layout.record(0).write_text(json.dumps({"digest": "d0", "embedded": 4}))
    assert L.finished(layout, 0, "d0") is None  # files and record disagree
    layout.record(1).write_text(json.dumps({"digest": "d1", "embedded": 0}))
    assert L.finished(layout, 1, "d1")["embedded"] == 0  # nothing usable: no files needed


def test_out_that_is_not_a_reindex_is_refused(tmp_path):
    assert L.read_manifest(tmp_path / "new") is None
    assert L.read_manifest(tmp_path) is None  # empty
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        L.read_manifest(tmp_path / "file")
    with pytest.raises(UserError, match="not empty and holds no manifest.json"):
        L.read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        L.read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "other"}')
    with pytest.raises(UserError, match="not a manifest of jaxforget.reindex"):
        L.read_manifest(tmp_path)
