"""The Flax IResNet: InsightFace's parameter counts, widths and input sizes, train/eval modes,
dropout, bfloat16 compute, and whole-model Winograd gradients."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxforget.models import abstract_variables, build_model, count_elements
from jaxforget.models.iresnet import IRESNET_STAGES, IResNet

# One block per stage: the same module code, a quarter of the compile time.
MICRO = dict(stage_blocks=(1, 1, 1, 1), width_mult=0.125, input_size=(16, 16), embedding_size=8)


@pytest.fixture(scope="module")
def micro():
    module = IResNet(**MICRO)
    variables = jax.jit(lambda k: module.init(k, jnp.zeros((1, 16, 16, 3))))(jax.random.key(0, impl="rbg"))
    return module, variables


def test_r50_counts_match_insightface():
    """43,590,848 parameter elements (fixed features scale included) and 38,144 running statistics."""
    bundle = build_model({"name": "iresnet50"})
    shapes = abstract_variables(bundle)  # no allocation
    fixed = sum(math.prod(s) for s in bundle.fixed_parameters().values())
    # The torch count by hand from docs/FORMATS.md's layout: convs, BN (weight+bias), PReLU, fc, features.
    widths, blocks = (64, 128, 256, 512), IRESNET_STAGES[50]
    bn, n, inp = 64, 27 * 64 + 64, 64  # stem conv + stem prelu
    stats = 64
    for planes, nb in zip(widths, blocks):
        for i in range(nb):
            n += 9 * inp * planes + planes + 9 * planes * planes  # conv1, prelu, conv2
            stats += inp + 2 * planes
            bn += inp + 2 * planes
            if i == 0:
                n += inp * planes
                stats += planes
                bn += planes
            inp = planes
    bn += 512 + 512  # bn2, features
    stats += 512 + 512
    n += 2 * bn + 512 * 7 * 7 * 512 + 512
    assert n == 43_590_848 and 2 * stats == 38_144  # the numbers docs/FORMATS.md states
    assert count_elements(shapes["params"]) + fixed == n
    assert count_elements(shapes["batch_stats"]) == 2 * stats
    assert "scale" not in shapes["params"]["features"]  # fixed at 1, never trainable
    assert shapes["params"]["fc"]["kernel"].shape == (25088, 512)


@pytest.mark.parametrize(
    "cfg, fc_in",
    [
        ({"name": "r18", "width_mult": 0.25, "input_size": (32, 48), "embedding_size": 8}, 128 * 2 * 3),
        ({"name": "iresnet34", "width_mult": 0.5, "input_size": (16, 16)}, 256 * 1 * 1),
    ],
)
def test_width_and_input_size_set_fc(cfg, fc_in):
    bundle = build_model(cfg)
    shapes = abstract_variables(bundle)
    emb = cfg.get("embedding_size", 512)
    assert shapes["params"]["fc"]["kernel"].shape == (fc_in, emb)
    assert shapes["params"]["conv1"]["kernel"].shape == (3, 3, 3, round(64 * cfg["width_mult"]))
    for dtype_leaf in jax.tree_util.tree_leaves(shapes):
        assert dtype_leaf.dtype == jnp.float32


def test_forward_eval_and_train_modes(micro):
    module, variables = micro
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3))
    y = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, x)
    assert y.shape == (4, 8) and y.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(y)))

    @jax.jit
    def train_step(v, x):
        y, upd = module.apply(v, x, train=True, mutable=["batch_stats"])
        _, inter = module.apply(v, x, capture_intermediates=lambda mdl, _: mdl.name == "conv1", mutable=["intermediates"])
        return y, upd, inter["intermediates"]["conv1"]["__call__"][0]

    y_train, updates, conv_out = train_step(variables, x)
    assert y_train.shape == (4, 8)
    assert jax.tree_util.tree_structure(updates["batch_stats"]) == jax.tree_util.tree_structure(variables["batch_stats"])
    # Running mean moves 10% of the way to the batch mean (momentum 0.9), as torch's momentum 0.1.
    old = variables["batch_stats"]["bn1"]["mean"]
    new = updates["batch_stats"]["bn1"]["mean"]
    assert not np.allclose(old, new)
    np.testing.assert_allclose(new, 0.9 * old + 0.1 * conv_out.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception):  # train mode must be told that batch_stats may change
        jax.eval_shape(lambda v, x: module.apply(v, x, train=True), variables, x)


def test_dropout_needs_rng_only_in_train(micro):
    _, variables = micro
    module = IResNet(**MICRO, dropout=0.5)
    x = jax.random.normal(jax.random.PRNGKey(3), (4, 16, 16, 3))

    @jax.jit
    def run(v, x, key):
        a = module.apply(v, x)
        b = module.apply(v, x)
        y1, _ = module.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": key})
        y2, _ = module.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.fold_in(key, 1)})
        return a, b, y1, y2

    a, b, y1, y2 = run(variables, x, jax.random.PRNGKey(1))
    np.testing.assert_array_equal(a, b)  # eval: deterministic
    assert not np.allclose(y1, y2)


def test_bfloat16_compute_keeps_fp32_params(micro):
    module32, variables = micro
    module16 = IResNet(**MICRO, dtype="bfloat16")
    for leaf in jax.tree_util.tree_leaves(jax.eval_shape(module16.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))):
        assert leaf.dtype == jnp.float32
    x = jax.random.normal(jax.random.PRNGKey(2), (4, 16, 16, 3))

    @jax.jit
    def run(v, x):
        y32 = module32.apply(v, x)
        y16 = module16.apply(v, x)
        _, upd = module16.apply(v, x, train=True, mutable=["batch_stats"])
        return y32, y16, upd

    y32, y16, upd = run(variables, x)
    assert y16.dtype == jnp.float32  # fc and features compute in fp32
    rel = float(jnp.linalg.norm(y16 - y32) / jnp.linalg.norm(y32))
    print(f"\nbf16 vs fp32 micro iresnet: relative error {rel:.3e}")
    assert 0 < rel < 5e-2
    # running statistics stay fp32 (reductions in fp32)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(upd))


def test_iresnet_gradients_with_winograd_match_xla(micro, monkeypatch):
    """A whole IResNet's parameter gradients, Winograd vs XLA convolution gradients; below the
    size thresholds (the tiny models of the tests) the layers keep XLA's gradients."""
    from jaxforget.models import layers
    from jaxforget.models.layers import xla_convolutions

    module, variables = micro
    x = jax.random.normal(jax.random.PRNGKey(2), (4, 16, 16, 3))

    def grads():
        def loss(params):
            z, _ = module.apply({**variables, "params": params}, x, train=True,
                                mutable=["batch_stats"])
            return jnp.sum(jnp.sin(z))
        return jax.jit(jax.grad(loss))(variables["params"])

    def uses_winograd():
        z = jax.make_jaxpr(lambda v: module.apply(v, x))(variables)
        return "custom_vjp" in str(z)

    assert not uses_winograd()  # 2-16 channels: below WINOGRAD_MIN_CHANNELS
    monkeypatch.setattr(layers, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(layers, "WINOGRAD_MIN_PIXELS", 1)
    assert uses_winograd()
    ours = grads()
    with xla_convolutions():
        ref = grads()
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
