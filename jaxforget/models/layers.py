"""Small building blocks shared by the face backbones.

The layers here reproduce PyTorch / InsightFace conventions exactly, so converted weights give the
same numbers:

* :class:`PReLU` keeps one slope per channel, initialised to 0.25 (``torch.nn.PReLU(C)``);
  ``flax.linen.PReLU`` has a single scalar slope starting at 0.01 and cannot be used.
* :func:`batch_norm` is ``nn.BatchNorm`` with PyTorch's defaults: eps 1e-5 and momentum 0.1
  (0.9 in flax's convention, which weights the *old* statistic). Statistics reductions stay in
  float32 even when the layer computes in bfloat16.
* :func:`conv` uses explicit symmetric padding (``((p, p), (p, p))``) like ``torch.nn.Conv2d``;
  'SAME' padding differs from torch for stride 2 and must not be used. Depthwise convolutions
  (``groups == features``) become :class:`DepthwiseConv`, which keeps ``nn.Conv``'s parameter
  (``kernel`` of shape ``(kh, kw, 1, C)``) but computes a sum of shifted products: XLA's CPU
  backend runs grouped convolutions 5-25x slower than that (``tools/bench_depthwise.py`` measures
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


_GROUPED_DEPTHWISE = False


@contextlib.contextmanager
def grouped_depthwise() -> Iterator[None]:
    """Within this context, models traced build depthwise convolutions as grouped ``nn.Conv``.

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
    have ``features`` channels, as a grouped ``nn.Conv`` would require.
    """
    ks = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    if groups > 1 and groups == features and not _GROUPED_DEPTHWISE:
        return DepthwiseConv(ks, stride, padding, dtype=dtype, kernel_init=kernel_init, name=name)
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
