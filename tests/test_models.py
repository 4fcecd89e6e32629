"""Flax backbones, margin heads and the registry (shapes, counts, modes, dtypes, errors)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxforget.convert import count_elements
from jaxforget.models import (
    CosFaceHead,
    PReLU,
    abstract_variables,
    build_model,
    canonical_name,
    init_variables,
    load_pretrained,
    margin_logits,
    margin_loss,
)
from jaxforget.models.iresnet import IRESNET_STAGES, IResNet

TINY = {"name": "iresnet18", "width_mult": 0.125, "input_size": (32, 32), "embedding_size": 16}
# One block per stage: the same module code, a quarter of the compile time.
MICRO = dict(stage_blocks=(1, 1, 1, 1), width_mult=0.125, input_size=(16, 16), embedding_size=8)


@pytest.fixture(scope="module")
def micro():
    module = IResNet(**MICRO)
    variables = jax.jit(lambda k: module.init(k, jnp.zeros((1, 16, 16, 3))))(jax.random.key(0, impl="rbg"))
    return module, variables


def test_prelu_per_channel_slope():
    layer = PReLU()
    x = jnp.array([[-2.0, 3.0, -1.0]])
    v = layer.init(jax.random.PRNGKey(0), x)
    np.testing.assert_array_equal(v["params"]["slope"], np.full(3, 0.25, np.float32))
    y = layer.apply({"params": {"slope": jnp.array([0.5, 0.1, 2.0])}}, x)
    np.testing.assert_allclose(y, [[-1.0, 3.0, -2.0]])


def test_r50_counts_match_insightface():
    """43,590,848 parameter elements (fixed features scale included) and 38,144 running statistics."""
    bundle = build_model({"name": "iresnet50"})
    shapes = abstract_variables(bundle)  # no allocation
    fixed = sum(math.prod(s) for s in bundle.fixed_parameters().values())
    # The torch count by hand from FORMATS.md's layout: convs, BN (weight+bias), PReLU, fc, features.
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
    assert n == 43_590_848 and 2 * stats == 38_144  # the numbers FORMATS.md states
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


def test_mobilefacenet_shapes():
    bundle = build_model({"name": "mobilefacenet"})
    assert bundle.input_size == (112, 96) and bundle.embedding_size == 128
    assert (bundle.pixel_mean, bundle.pixel_std) == (127.5, 128.0)
    shapes = abstract_variables(bundle)
    assert shapes["params"]["linear7"]["conv"]["kernel"].shape == (7, 6, 1, 512)
    assert shapes["params"]["blocks_14"]["conv_6"]["kernel"].shape == (1, 1, 256, 128)
    assert len([k for k in shapes["params"] if k.startswith("blocks_")]) == 15
    out = jax.eval_shape(lambda v, x: bundle.module.apply(v, x), shapes, bundle.dummy_input(3))
    assert out.shape == (3, 128)


@pytest.mark.parametrize("kernel,stride,padding,size", [(3, 1, 1, (9, 7)), (3, 2, 1, (9, 8)),
                                                        ((4, 3), 1, 0, (4, 3))])
def test_depthwise_conv_matches_grouped_conv(kernel, stride, padding, size):
    """The shifted-product depthwise layer is nn.Conv(feature_group_count=C): same parameter,
    same output and gradients (the last case is MobileFaceNet's global depthwise conv)."""
    from jaxforget.models.layers import DepthwiseConv, conv, grouped_depthwise

    channels = 6
    ours = conv(channels, kernel, stride, padding, groups=channels, dtype=jnp.float32, name="c")
    with grouped_depthwise():
        ref = conv(channels, kernel, stride, padding, groups=channels, dtype=jnp.float32, name="c")
    assert isinstance(ours, DepthwiseConv) and not isinstance(ref, DepthwiseConv)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, *size, channels))
    params = ref.init(jax.random.PRNGKey(0), x)
    params_ours = ours.init(jax.random.PRNGKey(0), x)
    assert jax.tree_util.tree_map(jnp.shape, params_ours) == jax.tree_util.tree_map(jnp.shape, params)
    np.testing.assert_array_equal(params_ours["params"]["kernel"], params["params"]["kernel"])

    def loss(module):
        return lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))

    np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5)
    g_ours = jax.grad(loss(ours), argnums=(0, 1))(params, x)
    g_ref = jax.grad(loss(ref), argnums=(0, 1))(params, x)
    for a, b in zip(jax.tree_util.tree_leaves(g_ours), jax.tree_util.tree_leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size,cin,cout", [((9, 7), 5, 6), ((8, 8), 4, 4), ((1, 1), 3, 2)])
def test_conv3x3_winograd_gradients_match_xla(size, cin, cout, monkeypatch):
    """3x3 stride-1 convolutions compute gradients with Winograd F(2x2, 3x3): same parameter, the
    same forward (XLA's convolution) and the same gradients as nn.Conv (odd sizes included)."""
    from jaxforget.models import layers
    from jaxforget.models.layers import Conv3x3, conv, xla_convolutions

    monkeypatch.setattr(layers, "WINOGRAD_MIN_CHANNELS", 1)  # small layers take the path too
    monkeypatch.setattr(layers, "WINOGRAD_MIN_PIXELS", 1)

    ours = conv(cout, 3, 1, 1, dtype=jnp.float32, name="c")
    with xla_convolutions():
        ref = conv(cout, 3, 1, 1, dtype=jnp.float32, name="c")
    assert isinstance(ours, Conv3x3) and not isinstance(ref, Conv3x3)
    assert not isinstance(conv(cout, 3, 2, 1, dtype=jnp.float32, name="c"), Conv3x3)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, *size, cin))
    params = ref.init(jax.random.PRNGKey(0), x)
    params_ours = ours.init(jax.random.PRNGKey(0), x)
    np.testing.assert_array_equal(params_ours["params"]["kernel"], params["params"]["kernel"])

    def loss(module):
        return lambda p, x: jnp.sum(jnp.sin(3.0 * module.apply(p, x)))

    np.testing.assert_array_equal(ours.apply(params, x), ref.apply(params, x))
    assert "custom_vjp" in str(jax.make_jaxpr(ours.apply)(params, x))
    g_ours = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(params, x)
    g_ref = jax.jit(jax.grad(loss(ref), argnums=(0, 1)))(params, x)
    for a, b in zip(jax.tree_util.tree_leaves(g_ours), jax.tree_util.tree_leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stride,size", [(1, (5, 7)), (2, (9, 8)), (2, (7, 7))])
def test_conv1x1_is_the_convolution(stride, size):
    """1x1 convolutions are a matrix product: same parameter, outputs and gradients as nn.Conv."""
    from jaxforget.models.layers import Conv1x1, conv, xla_convolutions

    ours = conv(6, 1, stride, 0, dtype=jnp.float32, name="c")
    with xla_convolutions():
        ref = conv(6, 1, stride, 0, dtype=jnp.float32, name="c")
    assert isinstance(ours, Conv1x1) and not isinstance(ref, Conv1x1)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, *size, 5))
    params = ref.init(jax.random.PRNGKey(0), x)
    np.testing.assert_array_equal(ours.init(jax.random.PRNGKey(0), x)["params"]["kernel"],
                                  params["params"]["kernel"])
    np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-6, atol=1e-6)

    def loss(module):
        return lambda p, x: jnp.sum(jnp.sin(3.0 * module.apply(p, x)))

    g_ours = jax.grad(loss(ours), argnums=(0, 1))(params, x)
    g_ref = jax.grad(loss(ref), argnums=(0, 1))(params, x)
    for a, b in zip(jax.tree_util.tree_leaves(g_ours), jax.tree_util.tree_leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)  # sin(3z) amplifies rounding


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


def test_registry_config_forms_and_errors():
    cfg = ml_collections.ConfigDict({"name": "iresnet100", "width_mult": 1.0, "input_size": (112, 112),
                                     "embedding_size": 512, "dtype": "float32", "dropout": 0.0, "init": ""})
    bundle = build_model(cfg)
    assert bundle.name == "iresnet100" and tuple(bundle.module.stage_blocks) == IRESNET_STAGES[100]
    assert (bundle.pixel_mean, bundle.pixel_std) == (127.5, 127.5)
    assert build_model(bundle.config()).config() == bundle.config()
    assert canonical_name("R50") == "iresnet50" and canonical_name("IResNet200") == "iresnet200"
    with pytest.raises(ValueError, match="model.name 'resnet50' is not known"):
        build_model({"name": "resnet50"})
    with pytest.raises(ValueError, match=r"input_size \(100, 100\).*divisible by 16"):
        build_model({"name": "iresnet18", "input_size": (100, 100)})
    with pytest.raises(ValueError, match="model.dtype 'float64'"):
        build_model({"name": "iresnet18", "dtype": "float64"})
    bundle = build_model(TINY)
    with pytest.raises(ValueError, match=r"\(B, 32, 32, 3\); got \(1, 64, 64, 3\)"):
        jax.eval_shape(lambda: bundle.module.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))
    with pytest.raises(FileNotFoundError, match="model.init '/nonexistent/x.pth' does not exist"):
        load_pretrained({**TINY, "init": "/nonexistent/x.pth"})


def test_random_init_is_seeded():
    v0 = init_variables(build_model(TINY), seed=0)
    _, v0b = load_pretrained({**TINY, "seed": 0})
    _, v1 = load_pretrained({**TINY, "seed": 1})
    k0, k0b, k1 = (np.asarray(v["params"]["layer2_0"]["conv1"]["kernel"]) for v in (v0, v0b, v1))
    np.testing.assert_array_equal(k0, k0b)
    assert not np.allclose(k0, k1)
    np.testing.assert_array_equal(v0["params"]["layer1_0"]["prelu"]["slope"], 0.25)


# ----------------------------------------------------------------------------------------------
# Margin heads


def _np_normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_cosface_and_arcface_logits_match_formulas():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 8)).astype(np.float32)
    w = rng.normal(size=(5, 8)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 4, 0])
    cos = _np_normalize(z) @ _np_normalize(w).T
    s, m = 30.0, 0.35
    onehot = np.eye(5, dtype=bool)[y]

    got = np.asarray(margin_logits(z, w, y, s, m, "cosface"))
    np.testing.assert_allclose(got, s * np.where(onehot, cos - m, cos), rtol=1e-5, atol=1e-5)

    got = np.asarray(margin_logits(z, w, y, s, 0.5, "arcface"))
    theta = np.arccos(np.clip(cos, -1, 1))
    want = np.where(theta + 0.5 <= np.pi, np.cos(theta + 0.5), cos - np.sin(np.pi - 0.5) * 0.5)
    np.testing.assert_allclose(got, s * np.where(onehot, want, cos), rtol=1e-4, atol=1e-4)

    np.testing.assert_allclose(np.asarray(margin_logits(z, w, None, s, m)), s * cos, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"kind must be one of .*got 'sphere'"):
        margin_logits(z, w, y, s, m, "sphere")
    with pytest.raises(ValueError, match=r"\(6, 8\) and \(5, 7\)"):
        margin_logits(z, w[:, :7], y, s, m)


def test_margin_loss_is_masked_cross_entropy_and_differentiable():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(4, 8)).astype(np.float32)
    w = rng.normal(size=(3, 8)).astype(np.float32)
    y = np.array([0, 2, 1, 2])
    mask = np.array([True, True, False, True])
    logits = np.asarray(margin_logits(z, w, y, 64.0, 0.4), np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    ce = -logp[np.arange(4), y]
    loss = margin_loss
    np.testing.assert_allclose(float(loss(z, w, y, 64.0, 0.4)), ce.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(loss(z, w, y, 64.0, 0.4, mask=mask)), ce[mask].mean(), rtol=1e-5)
    for kind in ("cosface", "arcface"):
        gz, gw = jax.grad(lambda a, b: margin_loss(a, b, y, 64.0, 0.5, kind), argnums=(0, 1))(z, w)
        assert np.all(np.isfinite(gz)) and np.all(np.isfinite(gw)) and np.abs(gz).sum() > 0
    # an embedding that already sits on its class weight gives a finite ArcFace gradient too
    g = jax.grad(lambda a: margin_loss(a, w, np.array([0]), 64.0, 0.5, "arcface"))(w[:1])
    assert np.all(np.isfinite(g))


def test_cosface_head_module():
    head = CosFaceHead(num_classes=7, s=64.0, m=0.4)
    z = jax.random.normal(jax.random.PRNGKey(0), (3, 16))
    labels = jnp.array([1, 6, 0])
    variables = head.init(jax.random.PRNGKey(1), z, labels)
    assert variables["params"]["weight"].shape == (7, 16)
    np.testing.assert_allclose(
        head.apply(variables, z, labels), margin_logits(z, variables["params"]["weight"], labels, 64.0, 0.4), rtol=1e-6
    )
    arc = CosFaceHead(num_classes=7, margin="arcface", m=0.5)
    np.testing.assert_allclose(
        arc.apply(variables, z, labels),
        margin_logits(z, variables["params"]["weight"], labels, 64.0, 0.5, "arcface"),
        rtol=1e-6,
    )
