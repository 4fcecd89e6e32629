"""Reading InsightFace ONNX recognition models: the PyTorch reference models exported the way
arcface_torch's ``torch2onnx.py`` does (BatchNorms folded into the convs before them, generic
initializer names), read into Flax and compared with PyTorch on the same images.

The reference models get random weights and BatchNorm statistics calibrated on the test images
(:func:`calibrate`), so embeddings have a trained model's unit scale and absolute differences mean
what they would for a released model.
"""

from __future__ import annotations

import functools
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from jaxforget.io import onnx_format  # noqa: E402
from jaxforget.io.onnx_format import GraphWriter, OnnxFormatError  # noqa: E402
from jaxforget.models import load_pretrained, onnx_export, onnx_layout  # noqa: E402
from jaxforget.models.iresnet import IRESNET_STAGES  # noqa: E402
from jaxforget.models.layers import BN_EPSILON, batch_norm  # noqa: E402
from jaxforget.models.torch_layout import CheckpointMismatchError  # noqa: E402
from jaxforget.testing.torch_reference import (  # noqa: E402
    TorchIResNet,
    TorchMbf,
    TorchMobileFaceNet,
    calibrate,
    export_onnx_like_arcface_torch,
    randomize,
    torch_forward,
)

torch.set_num_threads(2)
#: Max abs difference allowed between embeddings (raw, unit scale, and L2-normalised).
TOL = 1e-4
SIZE = (32, 32)


def images(n: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *size, 3), dtype=np.uint8)


def insightface_input(x: np.ndarray) -> np.ndarray:
    """NHWC floats as InsightFace normalises pixels for an ONNX model: (x - 127.5) / 127.5."""
    return (x.astype(np.float32) - 127.5) / 127.5


def reference_iresnet(stages, size=SIZE, embedding_size=16, width=0.125, seed=0):
    model = randomize(TorchIResNet(stages, width, embedding_size, size), seed)
    return calibrate(model, insightface_input(images(8, size, seed)))


@functools.lru_cache(maxsize=None)
def _embed_fn(module):
    return jax.jit(lambda v, x: module.apply(v, x, train=False))


def flax_embed(bundle, variables, imgs: np.ndarray) -> np.ndarray:
    return np.asarray(_embed_fn(bundle.module)(variables, bundle.normalize(imgs)))


def max_abs(a, b, normalise=False) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if normalise:
        a, b = (e / np.linalg.norm(e, axis=1, keepdims=True) for e in (a, b))
    return float(np.abs(a - b).max())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small IResNet-18 and its arcface_torch-style ONNX file."""
    model = reference_iresnet(IRESNET_STAGES[18])
    path = tmp_path_factory.mktemp("onnx") / "r18.onnx"
    export_onnx_like_arcface_torch(model, path, SIZE)
    return model, path


def test_unit_var_makes_an_exact_identity():
    assert np.float32(onnx_layout.UNIT_VAR) + np.float32(BN_EPSILON) == np.float32(1)


def test_reads_arcface_torch_export_like_pytorch(exported):
    model, path = exported
    graph = onnx_format.read_onnx(path)
    blocks = sum(IRESNET_STAGES[18])
    # What makes the layout hard: the convs carry folded BatchNorms, names are generic, and
    # only the BatchNorms before a conv (bn1 of each block, bn2) and `features` are left.
    assert sum(n.op_type == "BatchNormalization" for n in graph.nodes) == blocks + 2
    assert all(len(n.inputs) == 3 for n in graph.nodes if n.op_type == "Conv")
    assert any(name.startswith("onnx::") for name in graph.constants)
    assert graph.inputs[0].shape == ("None", 3, *SIZE)

    bundle, variables = load_pretrained({"name": "auto", "init": str(path)})
    assert bundle.config() | {"dtype": "float32"} == {
        "name": "iresnet18", "width_mult": 0.125, "input_size": list(SIZE), "embedding_size": 16,
        "dtype": "float32", "dropout": 0.0}
    x = images(4, SIZE, seed=1)
    ours, theirs = flax_embed(bundle, variables, x), torch_forward(model, insightface_input(x))
    raw, unit = max_abs(ours, theirs), max_abs(ours, theirs, normalise=True)
    print(f"\nONNX (arcface_torch r18 x0.125) -> Flax vs PyTorch: max abs {raw:.2e} raw "
          f"(|e| <= {np.abs(theirs).max():.2f}), {unit:.2e} L2-normalised")
    assert raw <= TOL and unit <= TOL


def test_depth_and_opset_come_from_the_graph(tmp_path):
    model = randomize(TorchIResNet(IRESNET_STAGES[34], 0.0625, 8, (48, 32)), 3)
    export_onnx_like_arcface_torch(model, tmp_path / "r34.onnx", (48, 32), opset=17)
    bundle, variables = load_pretrained({"init": str(tmp_path / "r34.onnx")})
    assert bundle.config() == {"name": "iresnet34", "width_mult": 0.0625, "input_size": [48, 32],
                               "embedding_size": 8, "dtype": "float32", "dropout": 0.0}
    # The weights are the PyTorch model's wherever no BatchNorm was folded into them.
    state = model.state_dict()
    np.testing.assert_array_equal(variables["params"]["layer3_5"]["bn1"]["scale"], state["layer3.5.bn1.weight"])
    np.testing.assert_array_equal(variables["params"]["layer4_0"]["prelu"]["slope"], state["layer4.0.prelu.weight"])


def test_folded_batchnorm_becomes_identity_plus_bias(exported):
    _, path = exported
    sd = onnx_layout.onnx_state_dict(path)
    graph = onnx_format.read_onnx(path)
    stem = next(n for n in graph.nodes if n.op_type == "Conv")
    bias = graph.constants[stem.inputs[2]]
    np.testing.assert_array_equal(sd["bn1.bias"], bias)
    np.testing.assert_array_equal(sd["bn1.weight"], 1)
    np.testing.assert_array_equal(sd["bn1.running_mean"], 0)
    np.testing.assert_array_equal(sd["bn1.running_var"], onnx_layout.UNIT_VAR)
    # The Flax BatchNorm with these statistics adds the bias and does nothing else, bit for bit.
    bn = batch_norm(False, jnp.float32, "bn1")
    stats = {"params": {"scale": sd["bn1.weight"], "bias": bias},
             "batch_stats": {"mean": sd["bn1.running_mean"], "var": sd["bn1.running_var"]}}
    x = np.random.default_rng(0).normal(0, 3, (2, 4, 4, bias.size)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(nn.jit(type(bn))(**{
        f: getattr(bn, f) for f in ("use_running_average", "momentum", "epsilon", "dtype", "param_dtype")
    }).apply(stats, x)), x + bias)


def _simplified(path, out):
    """The graph as a simplifier may leave it: `features` as Mul + Add by constants, `fc` as
    MatMul + Add, an Identity between them."""
    model = onnx.load(str(path))
    g = model.graph
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in g.initializer}
    nodes = list(g.node)
    gemm = next(n for n in nodes if n.op_type == "Gemm")
    feat = next(n for n in nodes if n.op_type == "BatchNormalization" and n.input[0] == gemm.output[0])
    w, b = consts[gemm.input[1]], consts[gemm.input[2]]
    scale, shift, mean, var = (consts[t].astype(np.float64) for t in feat.input[1:])
    s = scale / np.sqrt(var + BN_EPSILON)
    new = [onnx.numpy_helper.from_array(np.ascontiguousarray(w.T), "fc_wt"),
           onnx.numpy_helper.from_array(b, "fc_b"),
           onnx.numpy_helper.from_array(s.astype(np.float32), "feat_s"),
           onnx.numpy_helper.from_array((shift - mean * s).astype(np.float32), "feat_t")]
    g.initializer.extend(new)
    replacement = [
        onnx.helper.make_node("MatMul", [gemm.input[0], "fc_wt"], ["mm"], name="mm"),
        onnx.helper.make_node("Add", ["mm", "fc_b"], ["fc_out"], name="fc_add"),
        onnx.helper.make_node("Identity", ["fc_out"], ["fc_id"], name="id"),
        onnx.helper.make_node("Mul", ["fc_id", "feat_s"], ["scaled"], name="feat_mul"),
        onnx.helper.make_node("Add", ["scaled", "feat_t"], [feat.output[0]], name="feat_add"),
    ]
    at = nodes.index(gemm)
    kept = [n for n in nodes if n is not gemm and n is not feat]
    del g.node[:]
    g.node.extend(kept[:at] + replacement + kept[at:])
    onnx.save(model, str(out))


def test_simplified_graph_reads_the_same(exported, tmp_path):
    model, path = exported
    _simplified(path, tmp_path / "simplified.onnx")
    ops = [n.op_type for n in onnx_format.read_onnx(tmp_path / "simplified.onnx").nodes]
    assert "Gemm" not in ops and ops.count("BatchNormalization") == sum(IRESNET_STAGES[18]) + 1
    bundle, variables = load_pretrained({"init": str(tmp_path / "simplified.onnx")})
    x = images(3, SIZE, seed=4)
    ours, theirs = flax_embed(bundle, variables, x), torch_forward(model, insightface_input(x))
    assert max_abs(ours, theirs) <= TOL and max_abs(ours, theirs, normalise=True) <= TOL


def test_mobilefacenet_export_reads(tmp_path):
    """CASIA MobileFaceNet exported like arcface_torch: read, written back, both run by
    onnxruntime on InsightFace's input (the writer's parity with JAX is test_models_onnx_export's)."""
    size = (112, 96)
    x = images(2, size, seed=5)
    model = calibrate(randomize(TorchMobileFaceNet(), 5), insightface_input(images(4, size, 6)))
    export_onnx_like_arcface_torch(model, tmp_path / "mfn.onnx", size)
    bundle, variables = load_pretrained({"init": str(tmp_path / "mfn.onnx")})
    assert (bundle.name, bundle.input_size, bundle.embedding_size) == ("mobilefacenet", size, 128)
    blob = onnx_export.insightface_blob(x)
    # The reference's x.view(batch, -1) is traced with the batch of 1 it was exported with.
    (original,) = onnx_format.run_onnx(tmp_path / "mfn.onnx", blob, batch_size=1)
    (ours,) = onnx_format.run_onnx(onnx_export.onnx_model(bundle, variables), blob)
    np.testing.assert_allclose(original, torch_forward(model, insightface_input(x)), atol=TOL)
    assert max_abs(ours, original) <= TOL and max_abs(ours, original, normalise=True) <= TOL
    # Exported with a dynamic batch, the flatten's target shape is computed (Shape, Gather, Concat).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, torch.zeros(1, 3, *size), str(tmp_path / "dyn.onnx"), input_names=["data"],
                          dynamic_axes={"data": {0: "batch"}}, opset_version=11, dynamo=False)
    assert "Shape" in {n.op_type for n in onnx_format.read_onnx(tmp_path / "dyn.onnx").nodes}
    dynamic = onnx_layout.onnx_state_dict(tmp_path / "dyn.onnx")
    for key, value in onnx_layout.onnx_state_dict(tmp_path / "mfn.onnx").items():
        np.testing.assert_array_equal(dynamic[key], value, err_msg=key)


def test_mbf_export_reads_like_pytorch(tmp_path):
    """arcface_torch's mbf (width 0.25, 64x64) exported with its BatchNorms folded: read as the mbf
    family, it gives PyTorch's embeddings, and written back onnxruntime gives the original's."""
    size = (64, 64)
    x = images(3, size, seed=8)
    model = calibrate(randomize(TorchMbf(0.25, 32, size), 8), insightface_input(images(6, size, 9)))
    export_onnx_like_arcface_torch(model, tmp_path / "mbf.onnx", size)
    folded = onnx_format.read_onnx(tmp_path / "mbf.onnx")
    assert [n.op_type for n in folded.nodes].count("BatchNormalization") == 1  # only `features` is left
    bundle, variables = load_pretrained({"init": str(tmp_path / "mbf.onnx")})
    assert (bundle.name, bundle.input_size, bundle.embedding_size, bundle.module.width_mult) == ("mbf", size, 32, 0.25)
    ours, theirs = flax_embed(bundle, variables, x), torch_forward(model, insightface_input(x))
    assert max_abs(ours, theirs) <= TOL and max_abs(ours, theirs, normalise=True) <= TOL
    blob = onnx_export.insightface_blob(x)
    (original,) = onnx_format.run_onnx(tmp_path / "mbf.onnx", blob, batch_size=1)
    (written,) = onnx_format.run_onnx(onnx_export.onnx_model(bundle, variables), blob)
    assert max_abs(written, original) <= TOL


@pytest.mark.real_data
def test_insightface_w600k_mbf_loads_with_onnxruntime_embeddings(shared):
    """The zoo's own w600k_mbf.onnx (buffalo_s) on real aligned CelebA faces: architecture, sizes
    and normalisation read from the graph; embeddings as onnxruntime runs the file."""
    zoo = shared("weights", "insightface_buffalo_s", "w600k_mbf.onnx")
    root = shared("data", "celeba_wild", "aligned_112")
    from PIL import Image

    files = sorted(p for person in sorted(root.iterdir())[:4] for p in sorted(person.iterdir())[:2])
    faces = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    bundle, variables = load_pretrained({"name": "auto", "init": str(zoo)})
    assert (bundle.name, bundle.input_size, bundle.embedding_size) == ("mbf", (112, 112), 512)
    assert (bundle.pixel_mean, bundle.pixel_std) == (127.5, 127.5)
    parity = onnx_export.onnx_parity(bundle, variables, zoo, faces)
    print(f"\nw600k_mbf.onnx, JAX vs onnxruntime on {len(faces)} CelebA-wild faces: {parity}")
    assert parity["max_abs_normalized"] <= TOL and parity["max_abs_raw"] <= TOL * parity["max_abs_embedding"]


def test_graphs_that_are_not_face_models_name_the_file(tmp_path, exported):
    g = GraphWriter("affine")
    y = g.node("Gemm", ["x", g.constant("w", np.ones((4, 3), np.float32))], "fc", transB=1)
    onnx_format.save_onnx(g.model([("x", ["batch", 3])], [(y, ["batch", 4])]), tmp_path / "affine.onnx")
    with pytest.raises(CheckpointMismatchError, match=r"affine\.onnx: .*not start with a conv"):
        load_pretrained({"init": str(tmp_path / "affine.onnx")})

    odd = reference_iresnet((1, 1, 1, 1), seed=7)
    export_onnx_like_arcface_torch(odd, tmp_path / "odd.onnx", SIZE)
    with pytest.raises(CheckpointMismatchError, match=r"odd\.onnx: residual blocks per stage \[1, 1, 1, 1\]"):
        load_pretrained({"init": str(tmp_path / "odd.onnx")})

    data = exported[1].read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(OnnxFormatError, match=r"cut\.onnx: is not an ONNX model"):
        load_pretrained({"init": str(tmp_path / "cut.onnx")})


@pytest.mark.slow
def test_iresnet50_full_size(tmp_path):
    """IResNet-50 at 112x112 -> 512 (w600k_r50's shape): read against PyTorch, written back
    against JAX (about a minute on 2 CPU cores)."""
    size = (112, 112)
    model = reference_iresnet(IRESNET_STAGES[50], size, 512, 1.0, seed=11)
    export_onnx_like_arcface_torch(model, tmp_path / "r50.onnx", size)
    bundle, variables = load_pretrained({"init": str(tmp_path / "r50.onnx")})
    assert bundle.name == "iresnet50" and bundle.embedding_size == 512
    x = images(2, size, seed=12)
    ours, theirs = flax_embed(bundle, variables, x), torch_forward(model, insightface_input(x))
    parity = onnx_export.onnx_parity(bundle, variables, onnx_export.onnx_model(bundle, variables), x)
    print(f"\nr50: ONNX -> Flax vs PyTorch max abs {max_abs(ours, theirs):.2e} raw, "
          f"{max_abs(ours, theirs, True):.2e} normalised; Flax -> ONNX (onnxruntime) vs JAX {parity}")
    assert max_abs(ours, theirs) <= TOL and max_abs(ours, theirs, True) <= TOL
    assert parity["max_abs_raw"] <= TOL and parity["max_abs_normalized"] <= TOL
