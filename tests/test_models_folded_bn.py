"""Re-creating the BatchNorms an ONNX export folded away (:mod:`jaxforget.models.folded_bn`).

A small PyTorch mbf is exported the way arcface_torch exports (every BatchNorm after a conv folded
into it). Recalibrated on a set of images, each re-created BatchNorm holds the moments of its
input as PyTorch's eval-mode model computes them on those images (scaled by the factor the export
folded into the conv), the eval-mode function is unchanged, and the train-mode forward stays
close to it, where the folded identities' does not.
"""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from jaxforget.models import load_pretrained  # noqa: E402
from jaxforget.models.folded_bn import folded_batchnorms, recalibrate  # noqa: E402
from jaxforget.models.torch_layout import flat_items  # noqa: E402
from jaxforget.testing.torch_reference import (  # noqa: E402
    TorchMbf,
    calibrate,
    export_onnx_like_arcface_torch,
    randomize,
)

torch.set_num_threads(2)
SIZE = (32, 32)


def _unit(e):
    e = np.asarray(e, np.float64)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def folded(tmp_path_factory):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (48, *SIZE, 3), dtype=np.uint8)
    model = calibrate(randomize(TorchMbf(0.125, 16, SIZE), 1), (pixels.astype(np.float32) - 127.5) / 127.5)
    path = tmp_path_factory.mktemp("folded") / "mbf.onnx"
    export_onnx_like_arcface_torch(model, path, SIZE)
    bundle, variables = load_pretrained({"init": str(path)})
    return model, bundle, variables, pixels


def embed(bundle, variables, x, train=False):
    if train:
        z, _ = bundle.module.apply(variables, bundle.normalize(x), train=True, mutable=["batch_stats"])
        return np.asarray(z)
    return np.asarray(jax.jit(lambda v, i: bundle.module.apply(v, bundle.normalize(i)))(variables, x))


def test_recovers_the_statistics_the_export_folded(folded):
    model, bundle, variables, pixels = folded
    paths = folded_batchnorms(variables)
    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert len(paths) == n_convs  # every BatchNorm after a conv; `features` (after fc) is not folded
    batches = [(pixels[i:i + 20], np.arange(20) < min(20, 48 - i)) for i in range(0, 60, 20)]  # last one padded
    batches[-1] = (np.concatenate([pixels[40:], np.zeros((12, *SIZE, 3), np.uint8)]), np.arange(20) < 8)
    new, info = recalibrate(bundle, variables, batches)
    assert info["layers"] == n_convs and info["images"] == 48
    # What PyTorch's eval-mode model feeds each of those BatchNorms on the same images.
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, args[0].double()))
             for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        model.eval()(torch.from_numpy(((pixels.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2).copy()))
    for h in hooks:
        h.remove()
    for path in paths:
        key = ".".join(re.sub(r"_(\d+)$", r".\1", p) for p in path)  # layers_3 -> layers.3
        stats = new["batch_stats"]
        for p in path:
            stats = stats[p]
        # The folded conv is PyTorch's times gamma / sqrt(running_var + eps), per channel.
        bn = model.get_submodule(key)
        factor = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double().numpy()
        x = seen[key]
        np.testing.assert_allclose(stats["mean"], factor * x.mean((0, 2, 3)).numpy(), rtol=1e-3, atol=1e-5,
                                   err_msg=key)
        np.testing.assert_allclose(stats["var"], factor ** 2 * x.var((0, 2, 3), unbiased=False).numpy(), rtol=1e-3,
                                   atol=1e-5, err_msg=key)
    x = pixels[:8]
    assert np.abs(embed(bundle, new, x) - embed(bundle, variables, x)).max() <= 1e-4 * np.abs(embed(bundle, variables, x)).max()
    assert info["max_abs_change"] <= 1e-4 * np.abs(embed(bundle, variables, x)).max()


def test_train_mode_forward_keeps_the_function_only_when_recalibrated(folded):
    _, bundle, variables, pixels = folded
    new, _ = recalibrate(bundle, variables, [(pixels[:32], np.ones(32, bool))])
    x = pixels[16:]  # a batch that overlaps the measured photos by half, as a training batch would
    reference = _unit(embed(bundle, variables, x))
    cos_new = float((_unit(embed(bundle, new, x, train=True)) * reference).sum(1).mean())
    cos_kept = float((_unit(embed(bundle, variables, x, train=True)) * reference).sum(1).mean())
    print(f"\ntrain-mode vs eval-mode cosine: recalibrated {cos_new:.3f}, folded identities {cos_kept:.3f}")
    assert cos_new > 0.8 and cos_new > cos_kept + 0.3


def test_a_model_with_its_batchnorms_is_left_alone():
    from jaxforget.testing.variables import random_variables

    bundle, variables = random_variables({"name": "mbf", "width_mult": 0.125, "input_size": SIZE,
                                          "embedding_size": 16}, seed=0)
    assert folded_batchnorms(variables) == []
    same, info = recalibrate(bundle, variables, [])
    assert info["layers"] == 0
    for (k, a), (_, b) in zip(flat_items(variables), flat_items(same)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg="/".join(k))
