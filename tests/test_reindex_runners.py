"""The Ray runner on a real local Ray cluster (2 CPUs, 2 actors): its OUT is the local runner's
(same rows, same embeddings within 1e-6, the same index), each actor writing several shards with
the model it loaded once."""

from __future__ import annotations

import json
import time

import faiss
import numpy as np
import pytest

pytest.importorskip("ray.data")
pytest.importorskip("onnxruntime")

from jaxforget.reindex import Options, reindex  # noqa: E402
from tests.reindex_fixtures import folder_gallery, tiny_model  # noqa: E402
from tests.test_reindex_core import _read  # noqa: E402


def test_ray_runner_writes_the_local_runners_out(tmp_path):
    onnx, _ = tiny_model(tmp_path / "m")
    gallery = folder_gallery(tmp_path / "gallery", people=6, photos=6)  # 36 photos + 3 bad ones
    reindex(onnx, gallery, tmp_path / "local", Options(shard_size=5, progress=False))
    t = time.perf_counter()
    m = reindex(onnx, gallery, tmp_path / "ray", Options(shard_size=5, runner="ray", workers=2, cpus_per_worker=1,
                                                        progress=False))
    seconds = time.perf_counter() - t
    assert m["runner"]["name"] == "ray" and m["shards"]["done"] == m["shards"]["done_this_run"] == 8
    local_rows, local = _read(tmp_path / "local")
    ray_rows, ray_vecs = _read(tmp_path / "ray")
    assert ray_rows == local_rows and len(ray_rows) == 36
    np.testing.assert_allclose(ray_vecs, local, atol=1e-6)
    for name in ("counts", "skipped"):
        assert m[name] == json.loads((tmp_path / "local" / "manifest.json").read_text())[name]
    a, b = (faiss.read_index(str(tmp_path / d / "index.faiss")) for d in ("local", "ray"))
    assert a.ntotal == b.ntotal == 36
    np.testing.assert_array_equal(faiss.vector_to_array(a.id_map), faiss.vector_to_array(b.id_map))
    workers = {json.loads(p.read_text())["worker"] for p in (tmp_path / "ray" / "shards").glob("*.json")}
    assert 1 <= len(workers) <= 2  # 8 shards, each actor loads the model once and writes several
    print(f"Ray run: {seconds:.1f} s")
