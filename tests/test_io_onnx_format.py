"""ONNX files: writing a graph and reading it back, running it, and every bad file ending with
the reader's own error naming the file."""

from __future__ import annotations

import sys
import zipfile

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from jaxforget.io import onnx_format  # noqa: E402
from jaxforget.io.onnx_format import GraphWriter, OnnxFormatError, OnnxUnavailableError  # noqa: E402


def affine_model(w: np.ndarray, b: np.ndarray):
    """``relu(x @ w.T + b)`` for ``x`` of shape (batch, in)."""
    g = GraphWriter("affine")
    y = g.node("Gemm", ["x", g.constant("w", w), g.constant("b", b)], "fc", transB=1)
    y = g.node("Relu", [y], "out")
    return g.model([("x", ["batch", w.shape[1]])], [(y, ["batch", w.shape[0]])])


@pytest.fixture
def weights():
    rng = np.random.default_rng(0)
    return rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=4).astype(np.float32)


@pytest.fixture
def model_file(tmp_path, weights):
    return onnx_format.save_onnx(affine_model(*weights), tmp_path / "affine.onnx")


def test_write_read_run(model_file, weights):
    w, b = weights
    graph = onnx_format.read_onnx(model_file)
    assert [(n.op_type, n.name) for n in graph.nodes] == [("Gemm", "fc"), ("Relu", "out")]
    assert graph.nodes[0].inputs == ("x", "w", "b") and graph.nodes[0].attributes == {"transB": 1}
    np.testing.assert_array_equal(graph.constants["w"], w)
    np.testing.assert_array_equal(graph.constants["b"], b)
    assert graph.inputs == [onnx_format.OnnxValue("x", "float32", ("batch", 3))]
    assert graph.outputs == [onnx_format.OnnxValue("out", "float32", ("batch", 4))]
    assert graph.opset == onnx_format.DEFAULT_OPSET
    x = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
    (y,) = onnx_format.run_onnx(model_file, x)
    np.testing.assert_allclose(y, np.maximum(x @ w.T + b, 0), rtol=1e-6, atol=1e-6)
    (y2,) = onnx_format.run_onnx(model_file.read_bytes(), {"x": x}, optimize=False)
    np.testing.assert_allclose(y2, y, rtol=1e-6, atol=1e-6)


def test_constant_nodes_become_constants(tmp_path):
    value = np.arange(6, dtype=np.float32).reshape(2, 3)
    nodes = [onnx.helper.make_node("Constant", [], ["c"], value=onnx.numpy_helper.from_array(value)),
             onnx.helper.make_node("Constant", [], ["k"], value_float=2.5),
             onnx.helper.make_node("Add", ["x", "c"], ["y"], name="add")]
    graph = onnx.helper.make_graph(nodes, "g", [onnx.helper.make_tensor_value_info("x", 1, [2, 3])],
                                   [onnx.helper.make_tensor_value_info("y", 1, [2, 3])])
    path = onnx_format.save_onnx(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)]),
                                 tmp_path / "c.onnx")
    read = onnx_format.read_onnx(path)
    assert [n.op_type for n in read.nodes] == ["Add"]
    np.testing.assert_array_equal(read.constants["c"], value)
    assert read.constants["k"] == np.float32(2.5) and read.constants["k"].dtype == np.float32


def test_external_data_beside_the_model(tmp_path, weights):
    model = affine_model(*weights)
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, path, save_as_external_data=True, location="ext.bin", size_threshold=0)
    assert (tmp_path / "ext.bin").is_file()
    np.testing.assert_array_equal(onnx_format.read_onnx(path).constants["w"], weights[0])


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path, weights, location):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    model = affine_model(*weights)
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "evil.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(OnnxFormatError, match=r"evil\.onnx.*outside the model's folder"):
        onnx_format.read_onnx(folder / "evil.onnx")


def test_bad_files_name_the_file(tmp_path, model_file):
    data = model_file.read_bytes()
    bad = {
        "empty.onnx": b"",
        "text.onnx": b"this is not a model\n" * 10,
        "zip.onnx": None,
        **{f"cut{k}.onnx": data[:k] for k in (1, len(data) // 3, len(data) // 2, len(data) - 40)},
    }
    with zipfile.ZipFile(tmp_path / "zip.onnx", "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    for name, content in bad.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(OnnxFormatError, match=name.replace(".", r"\.")):
            onnx_format.read_onnx(tmp_path / name)
    with pytest.raises(OnnxFormatError, match="cannot be read"):
        onnx_format.read_onnx(tmp_path)  # a folder
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        onnx_format.read_onnx(tmp_path / "missing.onnx")


def test_tensor_data_that_does_not_fit_its_shape(tmp_path, weights):
    model = affine_model(*weights)
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]
    (tmp_path / "short.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(OnnxFormatError, match=r"short\.onnx: .*\bw\b"):
        onnx_format.read_onnx(tmp_path / "short.onnx")


def test_missing_package_is_a_one_line_value_error(monkeypatch, model_file):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(OnnxUnavailableError, match=r"pip install 'jaxforget\[onnx\]'") as info:
        onnx_format.read_onnx(model_file)
    assert isinstance(info.value, ValueError)
