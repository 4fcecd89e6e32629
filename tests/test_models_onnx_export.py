"""Writing Flax variables as ONNX: onnxruntime on InsightFace's input equals the JAX model within
1e-4 (raw and L2-normalised embeddings), the graph is what InsightFace's loader expects, and
reading it back gives the variables written."""

from __future__ import annotations

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from jaxforget.io import onnx_format  # noqa: E402
from jaxforget.models import load_pretrained, onnx_export  # noqa: E402
from jaxforget.models.iresnet import IRESNET_STAGES  # noqa: E402
from jaxforget.models.torch_layout import flat_items  # noqa: E402
from jaxforget.testing import torch_reference as ref  # noqa: E402

torch.set_num_threads(2)
TOL = 1e-4


def images(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *size, 3), dtype=np.uint8)


def trained_like(model, size, tmp_path, name):
    """The reference model with calibrated statistics, saved as .pth and loaded into Flax."""
    ref.calibrate(model, onnx_export.insightface_blob(images(8, size, 1)).transpose(0, 2, 3, 1))
    torch.save(model.state_dict(), tmp_path / f"{name}.pth")
    return (model, *load_pretrained({"init": str(tmp_path / f"{name}.pth")}))


def assert_same_variables(a, b):
    fa, fb = (dict(flat_items(t)) if not isinstance(next(iter(t)), tuple) else t for t in (a, b))
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fb[k]), np.asarray(fa[k]), err_msg="/".join(k))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return trained_like(ref.randomize(ref.TorchIResNet(IRESNET_STAGES[18], 0.125, 16, (32, 32)), 2), (32, 32),
                        tmp_path_factory.mktemp("export"), "r18")


def test_iresnet_runs_in_onnxruntime_like_jax(small, tmp_path):
    _, bundle, variables = small
    path = onnx_export.save_onnx_backbone(bundle, variables, tmp_path / "unlearned.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unlearned.onnx"]  # no partial file left
    graph = onnx_format.read_onnx(path)
    assert graph.inputs == [onnx_format.OnnxValue("data", "float32", ("batch", 3, 32, 32))]
    assert graph.outputs[0].shape == ("batch", 16) and graph.opset == 11
    assert {n.op_type for n in graph.nodes} == {"Conv", "BatchNormalization", "PRelu", "Add", "Flatten", "Gemm",
                                                "Identity"}
    # InsightFace's ArcFaceONNX takes mean 0 / std 1 (an mxnet model) if it sees nodes named
    # Sub* and Mul* among the first eight; otherwise it feeds (pixel - 127.5) / 127.5.
    assert not any(n.name.startswith(("Sub", "_minus", "Mul", "_mul")) for n in graph.nodes[:8])
    x = images(5, bundle.input_size, seed=3)
    ours = np.asarray(jax.jit(lambda v, x: bundle.module.apply(v, bundle.normalize(x), train=False))(variables, x))
    for optimize in (True, False):
        (theirs,) = onnx_format.run_onnx(path, onnx_export.insightface_blob(x), optimize=optimize)
        assert theirs.shape == (5, 16)
        raw = float(np.abs(theirs - ours).max())
        unit = float(np.abs(theirs / np.linalg.norm(theirs, axis=1, keepdims=True)
                            - ours / np.linalg.norm(ours, axis=1, keepdims=True)).max())
        print(f"\nFlax -> ONNX r18 x0.125 (onnxruntime optimize={optimize}) vs JAX: max abs {raw:.2e} raw "
              f"(|e| <= {np.abs(ours).max():.2f}), {unit:.2e} L2-normalised")
        assert raw <= TOL and unit <= TOL


def test_flax_onnx_flax_is_exact(small, tmp_path):
    _, bundle, variables = small
    onnx_export.save_onnx_backbone(bundle, variables, tmp_path / "a.onnx")
    bundle2, variables2 = load_pretrained({"init": str(tmp_path / "a.onnx")})
    assert bundle2.config() == bundle.config()
    assert_same_variables(variables, variables2)


def test_arcface_export_round_trip(small, tmp_path):
    """ONNX (arcface_torch, folded) -> Flax -> ONNX -> Flax: the second read equals the first."""
    model, _, _ = small
    ref.export_onnx_like_arcface_torch(model, tmp_path / "zoo.onnx", (32, 32))
    bundle, variables = load_pretrained({"init": str(tmp_path / "zoo.onnx")})
    onnx_export.save_onnx_backbone(bundle, variables, tmp_path / "ours.onnx")
    _, again = load_pretrained({"init": str(tmp_path / "ours.onnx")})
    assert_same_variables(variables, again)
    blob = onnx_export.insightface_blob(images(3, (32, 32), seed=4))
    (original,) = onnx_format.run_onnx(tmp_path / "zoo.onnx", blob, batch_size=1)
    (ours,) = onnx_format.run_onnx(tmp_path / "ours.onnx", blob)
    assert float(np.abs(ours - original).max()) <= TOL


def test_mobilefacenet_export(tmp_path):
    """MobileFaceNet's (pixel - 127.5) / 128 is folded into the stem, so InsightFace's input
    gives the JAX model's embeddings; reading the file back unfolds it."""
    size = (112, 96)
    _, bundle, variables = trained_like(ref.randomize(ref.TorchMobileFaceNet(), 8), size, tmp_path, "mfn")
    model = onnx_export.onnx_model(bundle, variables)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value or d.dim_param for d in dims] == ["batch", 3, 112, 96]
    x = images(2, size, seed=9)
    parity = onnx_export.onnx_parity(bundle, variables, model, x)
    print(f"\nFlax -> ONNX MobileFaceNet (onnxruntime) vs JAX: {parity}")
    assert parity["max_abs_raw"] <= TOL and parity["max_abs_normalized"] <= TOL
    onnx_format.save_onnx(model, tmp_path / "mfn.onnx")
    _, again = load_pretrained({"init": str(tmp_path / "mfn.onnx")})
    stem = ("params", "conv1", "conv", "kernel")  # x 127.5/128 on writing, x 128/127.5 on reading
    np.testing.assert_allclose(dict(flat_items(again))[stem], dict(flat_items(variables))[stem], rtol=2e-7, atol=0)
    assert_same_variables(*({k: v for k, v in flat_items(t) if k != stem} for t in (variables, again)))


def _insightface_loader(path):
    """InsightFace's own recognition loader (the `insightface` package, a test extra) on ``path``."""
    arcface_onnx = pytest.importorskip("insightface.model_zoo.arcface_onnx",
                                       reason="needs the insightface package (pip install -e '.[test]')")
    model = arcface_onnx.ArcFaceONNX(model_file=str(path))
    model.prepare(ctx_id=-1)
    return model


def _loader_view(model) -> tuple:
    """What ArcFaceONNX read from a file: normalisation, input name and shape, outputs."""
    return (model.input_mean, model.input_std, model.input_name, tuple(model.input_shape[1:]), len(model.output_names),
            model.output_names[0])


def test_mbf_export_runs_in_insightface_like_jax(tmp_path):
    """A small mbf written as ONNX: InsightFace's ArcFaceONNX loads it with (x - 127.5) / 127.5 and
    its get_feat (BGR images in, batch of 3) gives the JAX model's embeddings."""
    size = (64, 64)
    _, bundle, variables = trained_like(ref.randomize(ref.TorchMbf(0.25, 32, size), 3), size, tmp_path, "mbf")
    path = onnx_export.save_onnx_backbone(bundle, variables, tmp_path / "mbf.onnx")
    loader = _insightface_loader(path)
    assert _loader_view(loader)[:5] == (127.5, 127.5, "data", (3, 64, 64), 1)
    x = images(3, size, seed=5)
    theirs = np.asarray(loader.get_feat(list(x[..., ::-1])), np.float64)  # cv2 images are BGR
    ours = np.asarray(jax.jit(lambda v, i: bundle.module.apply(v, bundle.normalize(i)))(variables, x), np.float64)
    assert float(np.abs(theirs - ours).max()) <= TOL


@pytest.mark.real_data
def test_zoo_model_export_is_a_drop_in_under_insightface(shared, tmp_path):
    """w600k_mbf.onnx in, ONNX out (as export_onnx=True writes it): InsightFace's loader reads the
    export exactly as it reads the original (same normalisation, input name and layout, one output,
    here under the original's output name) and runs it with a batch of several real faces, giving
    the original's embeddings and the JAX model's within 1e-4."""
    from PIL import Image

    from jaxforget.models import loading

    zoo = shared("weights", "insightface_buffalo_s", "w600k_mbf.onnx")
    root = shared("data", "celeba_wild", "aligned_112")
    faces = np.stack([np.asarray(Image.open(p).convert("RGB"))
                      for person in sorted(root.iterdir())[:3] for p in sorted(person.iterdir())[:2]])
    bundle, variables = load_pretrained({"init": str(zoo)})
    names = loading.onnx_io(zoo)
    assert names == {"input_name": "input.1", "output_name": "516"}
    path = onnx_export.save_onnx_backbone(bundle, variables, tmp_path / "unlearned_backbone.onnx", **names)
    original, exported = _insightface_loader(zoo), _insightface_loader(path)
    assert _loader_view(exported) == _loader_view(original) == (127.5, 127.5, "input.1", (3, 112, 112), 1, "516")
    assert isinstance(exported.input_shape[0], str)  # a dynamic batch dimension
    bgr = list(faces[..., ::-1])
    theirs, before = (np.asarray(m.get_feat(bgr), np.float64) for m in (exported, original))
    ours = np.asarray(jax.jit(lambda v, i: bundle.module.apply(v, bundle.normalize(i)))(variables, faces), np.float64)
    unit = lambda e: e / np.linalg.norm(e, axis=1, keepdims=True)  # noqa: E731
    gaps = {"export_vs_jax": float(np.abs(unit(theirs) - unit(ours)).max()),
            "export_vs_original": float(np.abs(unit(theirs) - unit(before)).max())}
    print(f"\nw600k_mbf export under insightface's ArcFaceONNX, {len(faces)} faces: {gaps}")
    assert max(gaps.values()) <= TOL
