"""Layers shared by the backbones: PReLU, the depthwise convolution, and the 3x3 (Winograd) and 1x1
convolutions against XLA's convolution."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxforget.models import PReLU


def test_prelu_per_channel_slope():
    layer = PReLU()
    x = jnp.array([[-2.0, 3.0, -1.0]])
    v = layer.init(jax.random.PRNGKey(0), x)
    np.testing.assert_array_equal(v["params"]["slope"], np.full(3, 0.25, np.float32))
    y = layer.apply({"params": {"slope": jnp.array([0.5, 0.1, 2.0])}}, x)
    np.testing.assert_allclose(y, [[-1.0, 3.0, -2.0]])


@pytest.mark.parametrize("kernel,stride,padding,size,groups", [
    (3, 1, 1, (9, 7), 6), (3, 2, 1, (9, 8), 6), ((4, 3), 1, 0, (4, 3), 6),  # depthwise
    (3, 1, 1, (9, 7), 3), (3, 2, 1, (8, 9), 2)])  # two / three channels a group (mbf's layers.1)
def test_shifted_product_convs_match_grouped_conv(kernel, stride, padding, size, groups):
    """The shifted-product depthwise and grouped layers are nn.Conv(feature_group_count=g):
    same parameter, same output and gradients (the third case is MobileFaceNet's global
    depthwise conv)."""
    from jaxforget.models.layers import DepthwiseConv, GroupedConv, conv, grouped_depthwise

    channels = 6
    ours = conv(channels, kernel, stride, padding, groups=groups, dtype=jnp.float32, name="c")
    with grouped_depthwise():
        ref = conv(channels, kernel, stride, padding, groups=groups, dtype=jnp.float32, name="c")
    assert isinstance(ours, DepthwiseConv if groups == channels else GroupedConv)
    assert not isinstance(ref, (DepthwiseConv, GroupedConv))
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
