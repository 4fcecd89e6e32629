"""Small building blocks shared by the face backbones.

The layers here reproduce PyTorch / InsightFace conventions exactly, so converted weights give the
same numbers:

* :class:`PReLU` keeps one slope per channel, initialised to 0.25 (``torch.nn.PReLU(C)``);
  ``flax.linen.PReLU`` has a single scalar slope starting at 0.01 and cannot be used.
* :func:`batch_norm` is ``nn.BatchNorm`` with PyTorch's defaults: eps 1e-5 and momentum 0.1
  (0.9 in flax's convention, which weights the *old* statistic). Statistics reductions stay in
  float32 even when the layer computes in bfloat16.
* 3x3 stride-1 convolutions are :class:`Conv3x3` (same parameter as ``nn.Conv``): on the CPU their
  gradients are computed in Winograd form, which XLA:CPU runs faster than its gradient
  convolutions; 1x1 convolutions are :class:`Conv1x1`, a matrix product (``xla_convolutions()``
  switches both back to ``nn.Conv``, for comparisons).
* :func:`conv` uses explicit symmetric padding (``((p, p), (p, p))``) like ``torch.nn.Conv2d``;
  'SAME' padding differs from torch for stride 2 and must not be used. Depthwise convolutions
  (``groups == features``) become :class:`DepthwiseConv`, which keeps ``nn.Conv``'s parameter
  (``kernel`` of shape ``(kh, kw, 1, C)``) but computes a sum of shifted products: XLA's CPU
  backend runs grouped convolutions 5-25x slower than that (``benchmarks/bench_depthwise.py`` measures
  both; on GPU / TPU the formulation is elementwise work XLA fuses, not measured against cuDNN).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

#: PyTorch's BatchNorm defaults expressed in flax's convention.
BN_EPSILON: float = 1e-5
BN_MOMENTUM: float = 0.9


def resolve_dtype(dtype: Any) -> jnp.dtype:
    """Turns ``'float32' | 'bfloat16' | jnp.dtype`` into a jnp dtype, with a clear error."""
    if isinstance(dtype, str):
        names = {"float32": jnp.float32, "fp32": jnp.float32, "bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16,
                 "float16": jnp.float16, "fp16": jnp.float16}
        if dtype.lower() not in names:
            raise ValueError(f"model dtype {dtype!r} is not supported; use one of 'float32', 'bfloat16'")
        return jnp.dtype(names[dtype.lower()])
    return jnp.dtype(dtype)


class PReLU(nn.Module):
    """Parametric ReLU with one learnable slope per channel (last axis), as ``torch.nn.PReLU(C)``.

    ``y = x if x >= 0 else slope * x``. The slope parameter is called ``slope`` and has shape
    ``(C,)``; it is stored in float32 and cast to the computation dtype.
    """

    init_slope: float = 0.25
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        slope = self.param("slope", nn.initializers.constant(self.init_slope), (channels,), self.param_dtype)
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        return jnp.where(x >= 0, x, slope.astype(dtype) * x)


def batch_norm(train: bool, dtype: Dtype, name: str, use_scale: bool = True) -> nn.BatchNorm:
    """A BatchNorm with PyTorch's eps/momentum; running averages are used unless ``train``."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=dtype,
        param_dtype=jnp.float32,
        use_scale=use_scale,
        name=name,
    )


class DepthwiseConv(nn.Module):
    """Bias-free depthwise 2-D convolution (one ``kh x kw`` filter per channel), NHWC.

    Same parameter as ``nn.Conv(features=C, feature_group_count=C)`` -- ``kernel`` with shape
    ``(kh, kw, 1, C)`` -- so checkpoints and initialisation are interchangeable, and the same
    numbers up to float summation order. The output is ``sum_{i,j} kernel[i, j] * x_shifted(i, j)``:
    ``kh * kw`` strided slices of the padded input, each scaled per channel, which XLA fuses into
    one elementwise loop (forward and gradient) instead of a grouped convolution.
    """

    kernel_size: tuple[int, int]
    strides: int = 1
    padding: int = 0
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable[..., jax.Array] = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        channels = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (kh, kw, 1, channels), self.param_dtype)
        dtype = self.dtype or x.dtype
        x, kernel = x.astype(dtype), kernel.astype(dtype)
        p, s = self.padding, self.strides
        if p:
            x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        n, hp, wp, _ = x.shape
        out_h, out_w = (hp - kh) // s + 1, (wp - kw) // s + 1
        if out_h <= 0 or out_w <= 0:
            raise ValueError(f"DepthwiseConv: kernel {self.kernel_size} does not fit the padded input "
                             f"{(hp, wp)}")
        if (out_h, out_w) == (1, 1):  # global depthwise conv (MobileFaceNet's linear7)
            return jnp.einsum("nhwc,hwc->nc", x[:, :kh, :kw], kernel[:, :, 0])[:, None, None, :]
        out = None
        for i in range(kh):
            for j in range(kw):
                tap = jax.lax.slice(x, (0, i, j, 0),
                                    (n, i + (out_h - 1) * s + 1, j + (out_w - 1) * s + 1, channels),
                                    (1, s, s, 1))
                term = tap * kernel[i, j, 0]
                out = term if out is None else out + term
        return out


class GroupedConv(nn.Module):
    """Bias-free grouped 2-D convolution (``groups`` groups, neither 1 nor one per channel), NHWC.

    Same parameter as ``nn.Conv(features, feature_group_count=groups)`` -- ``kernel`` of shape
    ``(kh, kw, C_in / groups, features)``, output channel ``o`` reading group ``o // (features /
    groups)`` -- computed as ``kh * kw`` strided slices of the padded input, each multiplied per
    group by its ``(C_in/g, features/g)`` matrix (one batched matrix product a tap). arcface_torch's
    mbf has one such layer (128 channels in 64 groups of two, on the 56x56 map); XLA:CPU's grouped
    convolution took 86x longer for its forward + backward pass than this (batch 8, measured once
    on the 2-core machine; ``benchmarks/bench_depthwise.py`` measures the depthwise case).
    """

    features: int
    kernel_size: tuple[int, int]
    groups: int
    strides: int = 1
    padding: int = 0
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable[..., jax.Array] = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        g, channels = self.groups, x.shape[-1]
        if channels % g or self.features % g:
            raise ValueError(f"GroupedConv: {channels} input and {self.features} output channels do not split "
                             f"into {g} groups")
        cin, cout = channels // g, self.features // g
        kernel = self.param("kernel", self.kernel_init, (kh, kw, cin, self.features), self.param_dtype)
        dtype = self.dtype or x.dtype
        x, kernel = x.astype(dtype), kernel.astype(dtype)
        p, s = self.padding, self.strides
        if p:
            x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        n, hp, wp, _ = x.shape
        out_h, out_w = (hp - kh) // s + 1, (wp - kw) // s + 1
        out = None
        for i in range(kh):
            for j in range(kw):
                tap = jax.lax.slice(x, (0, i, j, 0), (n, i + (out_h - 1) * s + 1, j + (out_w - 1) * s + 1, channels),
                                    (1, s, s, 1)).reshape(n, out_h, out_w, g, cin)
                term = jnp.einsum("nhwga,agb->nhwgb", tap, kernel[i, j].reshape(cin, g, cout))
                out = term if out is None else out + term
        return out.reshape(n, out_h, out_w, self.features)


# Winograd F(2x2, 3x3) (Lavin & Gray 2016): a 3x3 convolution over 2x2 output tiles becomes 16
# independent matrix products, with 2.25x fewer multiplications than the direct convolution.
_WINO_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def _wino_in(d0, d1, d2, d3):
    """``B^T d`` along one axis: four 4-tap input tiles -> four transformed components."""
    return (d0 - d2, d1 + d2, d2 - d1, d1 - d3)


def _wino_out(m0, m1, m2, m3):
    """``A^T m`` along one axis: four components -> the tile's two outputs."""
    return (m0 + m1 + m2, m1 - m2 - m3)


def _wino_input_transform(x: jax.Array) -> jax.Array:
    """``(16, N * th * tw, C)``: every 4x4 input tile (stride 2, zero padding 1) transformed."""
    n, h, w, c = x.shape
    th, tw = (h + 1) // 2, (w + 1) // 2
    xp = jnp.pad(x, ((0, 0), (1, 2 * th + 1 - h), (1, 2 * tw + 1 - w), (0, 0)))
    comps = []
    for col in _wino_in(*[xp[:, :, j:j + 2 * tw:2] for j in range(4)]):
        comps.extend(_wino_in(*[col[:, i:i + 2 * th:2] for i in range(4)]))
    return jnp.stack(comps).reshape(16, n * th * tw, c)


def _wino_kernel_transform(kernel: jax.Array) -> jax.Array:
    """``(16, C, O)``: ``G g G^T`` per filter, in the component order of the input transform."""
    g = jnp.asarray(_WINO_G, kernel.dtype)
    return jnp.einsum("ai,ijco,bj->baco", g, kernel, g).reshape(16, *kernel.shape[2:])


def _wino_output_transform(m: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``(N, H, W, O)`` from the 16 products ``(16, N * th * tw, O)`` (tiles beyond H, W cut)."""
    n, h, w = shape[:3]
    th, tw = (h + 1) // 2, (w + 1) // 2
    m = m.reshape(4, 4, n, th, tw, -1)
    rows = [_wino_out(*[m[b, a] for a in range(4)]) for b in range(4)]  # [col comp][out row]
    y = [_wino_out(*[rows[b][i] for b in range(4)]) for i in range(2)]  # [out row][out col]
    y = jnp.stack([jnp.stack(y[i], axis=3) for i in range(2)], axis=2)  # (N, th, 2, tw, 2, O)
    return y.reshape(n, 2 * th, 2 * tw, -1)[:, :h, :w]


def _direct_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@jax.custom_vjp
def conv3x3_winograd_grad(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """3x3, stride 1, padding 1 convolution: XLA's convolution forward, Winograd gradients.

    The forward pass is ``lax.conv_general_dilated`` (XLA:CPU's forward convolution is close to
    oneDNN's). The backward pass -- the input and the weight gradient, where XLA:CPU's
    convolutions reach about 0.6x of oneDNN -- runs through the Winograd F(2x2, 3x3) form of the
    same convolution: 16 batched matrix products instead of two gradient convolutions.
    """
    return _direct_conv3x3(x, kernel)


def _conv3x3_fwd(x, kernel):
    return _direct_conv3x3(x, kernel), (x, kernel)


def _conv3x3_bwd(res, g):
    x, kernel = res
    v, input_t = jax.vjp(_wino_input_transform, x)
    u, kernel_t = jax.vjp(_wino_kernel_transform, kernel)
    m_shape = jax.ShapeDtypeStruct((16, v.shape[1], kernel.shape[-1]), g.dtype)
    (dm,) = jax.linear_transpose(lambda m: _wino_output_transform(m, x.shape), m_shape)(g)
    (dx,) = input_t(jnp.einsum("kpo,kco->kpc", dm, u))
    (dk,) = kernel_t(jnp.einsum("kpc,kpo->kco", v, dm))
    return dx, dk


conv3x3_winograd_grad.defvjp(_conv3x3_fwd, _conv3x3_bwd)


# Below these sizes the Winograd gradients do not pay on XLA:CPU (measured per layer, fwd + bwd,
# batch 32-64: 0.53x at 16 channels, 0.84x at 32 channels or 4x4 maps, 1.1-1.9x from 64 channels
# and 7x7 maps up), and each layer shape costs about 0.7 s more compilation.
WINOGRAD_MIN_CHANNELS = 64
WINOGRAD_MIN_PIXELS = 49


class Conv3x3(nn.Module):
    """Bias-free 3x3 convolution, stride 1, padding 1 (NHWC), with Winograd gradients in float32.

    Same parameter as the ``nn.Conv`` it replaces (``kernel``, ``(3, 3, C_in, features)``), so
    checkpoints, initialisation and conversion are unchanged; the forward pass is the same XLA
    convolution. In float32 on the CPU backend the gradients come from
    :func:`conv3x3_winograd_grad` (equal to the direct ones to float rounding, ~1e-6 relative)
    when both channel counts are at least ``WINOGRAD_MIN_CHANNELS`` and the map has at least
    ``WINOGRAD_MIN_PIXELS`` pixels (every 3x3 stride-1 layer of a full-width IResNet at 112x112):
    the IResNet-50 unlearning step runs 1.3-1.6x faster on the 2-core CPU of docs/PERFORMANCE.md,
    at about 40% more peak memory. Other dtypes, backends and smaller layers use XLA's gradients.
    """

    features: int
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable[..., jax.Array] = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (3, 3, x.shape[-1], self.features),
                            self.param_dtype)
        dtype = self.dtype or x.dtype
        x, kernel = x.astype(dtype), kernel.astype(dtype)
        if (dtype == jnp.float32 and jax.default_backend() == "cpu"
                and min(x.shape[-1], self.features) >= WINOGRAD_MIN_CHANNELS
                and x.shape[1] * x.shape[2] >= WINOGRAD_MIN_PIXELS):
            return conv3x3_winograd_grad(x, kernel)
        return _direct_conv3x3(x, kernel)  # GPU / TPU, bf16, small layers: XLA's own gradients


class Conv1x1(nn.Module):
    """Bias-free 1x1 convolution with stride ``strides`` (no padding), NHWC, as a matrix product.

    Same parameter as the ``nn.Conv`` it replaces (``kernel``, ``(1, 1, C_in, features)``). The
    input is subsampled by the stride and multiplied by the ``C_in x features`` matrix with
    ``einsum``: the same numbers as XLA:CPU's 1x1 convolution (bit for bit in the forward pass
    measured), 1.1-3x faster forward and 1.4-2.6x faster forward + backward on its CPU backend.
    """

    features: int
    strides: int = 1
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable[..., jax.Array] = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features),
                            self.param_dtype)
        dtype = self.dtype or x.dtype
        x, kernel = x.astype(dtype), kernel.astype(dtype)
        if self.strides > 1:
            x = x[:, :: self.strides, :: self.strides]
        return jnp.einsum("nhwc,co->nhwo", x, kernel[0, 0])


_GROUPED_DEPTHWISE = False
_XLA_CONVOLUTIONS = False


@contextlib.contextmanager
def xla_convolutions() -> Iterator[None]:
    """Within this context, models traced build 3x3 stride-1 and 1x1 convolutions as plain
    ``nn.Conv`` (XLA's convolutions and gradients instead of :class:`Conv3x3`'s Winograd gradients
    and :class:`Conv1x1`'s matrix product): for the benchmarks and the tests that compare the
    two. Read when a module is traced, so trace (and jit) inside it."""
    global _XLA_CONVOLUTIONS
    previous, _XLA_CONVOLUTIONS = _XLA_CONVOLUTIONS, True
    try:
        yield
    finally:
        _XLA_CONVOLUTIONS = previous


@contextlib.contextmanager
def grouped_depthwise() -> Iterator[None]:
    """Within this context, models traced build depthwise (and other grouped) convolutions as
    grouped ``nn.Conv``.

    For benchmarks and tests that compare the two implementations (same parameters); the switch is
    read when a module is traced, so trace (and jit) inside the context.
    """
    global _GROUPED_DEPTHWISE
    previous, _GROUPED_DEPTHWISE = _GROUPED_DEPTHWISE, True
    try:
        yield
    finally:
        _GROUPED_DEPTHWISE = previous


def conv(
    features: int,
    kernel: int | tuple[int, int],
    stride: int = 1,
    padding: int = 0,
    *,
    groups: int = 1,
    dtype: Dtype,
    name: str,
    kernel_init: Callable[..., jax.Array] = nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
) -> nn.Module:
    """A bias-free 2-D convolution with torch-style explicit padding (NHWC in, NHWC out).

    ``groups == features > 1`` (depthwise) returns a :class:`DepthwiseConv`; the input must then
    have ``features`` channels, as a grouped ``nn.Conv`` would require. Other ``groups > 1`` give
    a :class:`GroupedConv`. Inside :func:`grouped_depthwise` both are grouped ``nn.Conv``.
    """
    ks = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    if groups > 1 and groups == features and not _GROUPED_DEPTHWISE:
        return DepthwiseConv(ks, stride, padding, dtype=dtype, kernel_init=kernel_init, name=name)
    if groups > 1 and groups != features and not _GROUPED_DEPTHWISE:
        return GroupedConv(features, ks, groups, stride, padding, dtype=dtype, kernel_init=kernel_init, name=name)
    if not _XLA_CONVOLUTIONS and groups == 1:
        if (ks, stride, padding) == ((3, 3), 1, 1):
            return Conv3x3(features, dtype=dtype, kernel_init=kernel_init, name=name)
        if (ks, padding) == ((1, 1), 0):
            return Conv1x1(features, stride, dtype=dtype, kernel_init=kernel_init, name=name)
    return nn.Conv(
        features=features,
        kernel_size=ks,
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        feature_group_count=groups,
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=kernel_init,
        name=name,
    )
