"""Engines: onnxruntime runs ONNX files as InsightFace's loader feeds them, the JAX engine runs
the Flax model ``model.init`` loads, and the two give the same embeddings within 1e-4."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from jaxforget.eval import engines  # noqa: E402
from jaxforget.io.onnx_format import GraphWriter, save_onnx  # noqa: E402
from jaxforget.models import load_pretrained, onnx_export  # noqa: E402
from jaxforget.models.loading import save_torch_backbone  # noqa: E402
from tests.reindex_fixtures import tiny_model  # noqa: E402

TOL = 1e-4


def _faces(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *size, 3), dtype=np.uint8)


def _agree(model, size, n=6):
    onnx = engines.open_engine(model, "onnxruntime")
    jax_engine = engines.open_engine(model, "jax", batch_size=4)  # 6 images: a full batch and a padded one
    x = _faces(n, size)
    a, b = onnx.embed(x), jax_engine.embed(x)
    assert a.shape == b.shape == (n, onnx.info.embedding_size)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    return float(np.abs(a - b).max())


def test_engines_agree_on_an_exported_model(tmp_path):
    onnx, directory = tiny_model(tmp_path)
    assert engines.default_engine(onnx) == "onnxruntime" and engines.default_engine(directory) == "jax"
    assert _agree(onnx, (32, 32)) <= TOL
    # a checkpoint runs on onnxruntime through the graph the project exports (built in memory)
    x = _faces(3, (32, 32), 1)
    np.testing.assert_allclose(engines.open_engine(directory, "onnxruntime").embed(x),
                               engines.open_engine(onnx).embed(x), atol=1e-6)
    np.testing.assert_allclose(engines.open_engine(directory).embed(x), engines.open_engine(onnx).embed(x), atol=TOL)
    assert engines.model_sha256(directory) == engines.model_sha256(directory) != engines.model_sha256(onnx)


def test_a_pth_runs_on_both_engines(tmp_path):
    pytest.importorskip("torch")
    onnx, directory = tiny_model(tmp_path)
    bundle, variables = load_pretrained({"init": str(directory)})
    pth = tmp_path / "tiny.pth"
    save_torch_backbone(bundle, variables, pth)
    assert engines.model_kind(pth) == "checkpoint" and engines.default_engine(pth) == "jax"
    assert _agree(pth, (32, 32)) <= TOL
    x = _faces(2, (32, 32), 3)
    np.testing.assert_allclose(engines.open_engine(pth).embed(x), engines.open_engine(onnx).embed(x), atol=TOL)


@pytest.mark.real_data
def test_engines_agree_on_the_casia_model(tmp_path, shared):
    bundle, variables = load_pretrained({"init": str(shared("weights", "mobilefacenet_casia", "068.ckpt"))})
    path = onnx_export.save_onnx_backbone(bundle, variables, tmp_path / "casia.onnx")
    info = engines.describe_model(path, "onnxruntime")
    assert info.input_size == (112, 96) and (info.pixel_mean, info.pixel_std) == (127.5, 127.5)
    assert _agree(path, (112, 96)) <= TOL


@pytest.mark.real_data
def test_onnxruntime_runs_the_zoo_file_as_insightface_does(shared):
    path = shared("weights", "insightface_buffalo_s", "w600k_mbf.onnx")
    engine = engines.open_engine(path)
    assert engine.name == "onnxruntime" and engine.input_name == "input.1"
    assert (engine.info.input_size, engine.info.embedding_size) == ((112, 112), 512)
    assert (engine.info.pixel_mean, engine.info.pixel_std) == (127.5, 127.5)
    x = _faces(3, (112, 112))
    out = engine.embed(x)
    # what InsightFace's ArcFaceONNX.get_feat computes: blob (x - 127.5) / 127.5, RGB, NCHW
    raw = engine.session.run(None, {"input.1": onnx_export.insightface_blob(x)})[0]
    np.testing.assert_allclose(out, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
    # one image at a time gives the same rows (the file declares an output batch of 1)
    np.testing.assert_allclose(engine.embed(x[:1]), out[:1], atol=1e-5)


@pytest.mark.real_data
def test_engines_agree_on_the_zoo_file(shared):
    """Needs the JAX path to read InsightFace's w600k_mbf graph (the zoo-model issue 26)."""
    assert _agree(shared("weights", "insightface_buffalo_s", "w600k_mbf.onnx"), (112, 112)) <= TOL


def test_graph_that_normalises_itself_gets_raw_pixels(tmp_path):
    """InsightFace's rule: nodes named Sub* and Mul* among the first eight -> mean 0, std 1."""
    g = GraphWriter("selfnorm")
    x = g.node("Sub", ["data", g.constant("mean", np.array(127.5, np.float32))], "Sub_0")
    x = g.node("Mul", [x, g.constant("scale", np.array(1 / 128, np.float32))], "Mul_1")
    x = g.node("Flatten", [x], "flatten", axis=1)
    x = g.node("Identity", [x], "embedding")
    path = save_onnx(g.model([("data", ["batch", 3, 16, 16])], [(x, ["batch", 768])]), tmp_path / "s.onnx")
    engine = engines.open_engine(path)
    assert (engine.info.pixel_mean, engine.info.pixel_std) == (0.0, 1.0)
    faces = _faces(2, (16, 16))
    want = ((faces.astype(np.float32) - 127.5) / 128).transpose(0, 3, 1, 2).reshape(2, -1)
    np.testing.assert_allclose(engine.embed(faces), want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-6)


def test_bad_models_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        engines.model_kind(tmp_path / "none.onnx")
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(engines.EngineError, match="unknown kind"):
        engines.model_kind(tmp_path / "model.bin")
    with pytest.raises(engines.EngineError, match="not known"):
        engines.open_engine(tiny_model(tmp_path)[0], "tensorrt")
    g = GraphWriter("dyn")
    x = g.node("Identity", [g.node("Flatten", ["data"], "flatten", axis=1)], "embedding")
    path = save_onnx(g.model([("data", ["batch", 3, "h", "w"])], [(x, ["batch", "d"])]), tmp_path / "dyn.onnx")
    with pytest.raises(engines.EngineError, match="fixed height and width"):
        engines.open_engine(path)
    with pytest.raises(engines.EngineError, match="--engine=onnxruntime"):
        engines.open_engine(path, "jax")
