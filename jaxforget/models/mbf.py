"""arcface_torch's MobileFaceNet ("mbf"): the recognition model of InsightFace's ``buffalo_s`` pack.

``w600k_mbf.onnx`` (WebFace600K, 512-d) is this network: a 3x3 stride-2 stem to 128 channels, a
grouped 3x3 conv (64 groups of 2 channels), then four stages of inverted-residual ``DepthWise``
blocks (1x1 expand -> depthwise 3x3 -> 1x1 linear projection; the first of each stage has stride
2 and no shortcut) at widths 128 / 256 / 256 with hidden widths 128 / 256 / 512 / 256, a 1x1 conv
to 512 (``conv_sep``), a 1x1 conv to 64 (``conv_reduce``), the 7x7x64 map flattened in PyTorch's
(C, H, W) order into ``fc`` (with a bias) and the BatchNorm1d ``features``, whose scale is fixed at 1
(as in the released file). Every conv is bias-free and followed by a BatchNorm (eps 1e-5); PReLUs
are per channel. There is no global depthwise layer (the CASIA model of :mod:`.mobilefacenet` has
one). Input 112x112, pixels ``(x - 127.5) / 127.5``.

Module names mirror the PyTorch keys with ``.N`` written ``_N``, following arcface_torch's
``backbones/mobilefacenet.py`` for the body (``layers.0.layers.0`` is the stem conv,
``layers.3.layers.2.layers.1.layers.0`` the depthwise conv of the third residual block of stage
one) and the ONNX file's own initializer names for ``fc`` and ``features``. The name
``conv_reduce`` is ours: the export folded that layer's BatchNorm and kept no name for it.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxforget.models.iresnet import scaled_width
from jaxforget.models.layers import PReLU, batch_norm, conv, resolve_dtype

#: ``(kind, output channels, hidden width / groups, blocks)`` of ``layers.1 .. layers.7`` at width 1:
#: ``conv`` the grouped 3x3 ConvBlock, ``down`` a stride-2 DepthWise, ``res`` a Residual stack.
MBF_LAYERS: tuple[tuple[str, int, int, int], ...] = (
    ("conv", 128, 64, 1),
    ("down", 128, 128, 1),
    ("res", 128, 128, 4),
    ("down", 256, 256, 1),
    ("res", 256, 256, 6),
    ("down", 256, 512, 1),
    ("res", 256, 256, 2),
)
#: Residual blocks per stage of the released model (``get_mbf``'s ``blocks[1:]``).
MBF_BLOCKS: tuple[int, ...] = tuple(n for kind, _, _, n in MBF_LAYERS if kind == "res")
MBF_STEM = 128
MBF_SEP = 512
MBF_REDUCE = 64


class ConvBlock(nn.Module):
    """conv -> bn (-> prelu unless ``linear``), named ``layers_0/1/2`` like arcface_torch's."""

    features: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    linear: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = conv(self.features, self.kernel, self.stride, self.padding, groups=self.groups, dtype=self.dtype,
                 name="layers_0")(x)
        x = batch_norm(train, self.dtype, "layers_1")(x)
        if not self.linear:
            x = PReLU(dtype=self.dtype, name="layers_2")(x)
        return x


class DepthWise(nn.Module):
    """1x1 to ``hidden`` -> depthwise 3x3 (``stride``) -> linear 1x1 to ``out_channels``; with
    ``residual`` the input is added back."""

    out_channels: int
    hidden: int
    stride: int
    residual: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = ConvBlock(self.hidden, 1, dtype=self.dtype, name="layers_0")(x, train)
        y = ConvBlock(self.hidden, 3, self.stride, 1, groups=self.hidden, dtype=self.dtype, name="layers_1")(y, train)
        y = ConvBlock(self.out_channels, 1, linear=True, dtype=self.dtype, name="layers_2")(y, train)
        return x + y if self.residual else y


class Residual(nn.Module):
    """``blocks`` residual :class:`DepthWise` blocks (``layers_0 ..``)."""

    channels: int
    hidden: int
    blocks: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for i in range(self.blocks):
            x = DepthWise(self.channels, self.hidden, 1, True, dtype=self.dtype, name=f"layers_{i}")(x, train)
        return x


class ArcFaceMobileFaceNet(nn.Module):
    """arcface_torch's MobileFaceNet mapping normalised NHWC images ``(B, H, W, 3)`` to ``(B, E)``.

    Attributes:
      embedding_size: output dimension (512 for ``w600k_mbf``).
      input_size: ``(H, W)``, both divisible by 16; ``fc`` has ``64*w * H/16 * W/16`` inputs.
      width_mult: scales every channel count and group width (1.0 = the released model).
      dropout: dropout rate before ``fc`` (0 in the released model).
      dtype: computation dtype up to ``fc``; ``fc`` and ``features`` compute in float32.
    """

    embedding_size: int = 512
    input_size: tuple[int, int] = (112, 112)
    width_mult: float = 1.0
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        h, w = self.input_size
        if h % 16 or w % 16 or h <= 0 or w <= 0:
            raise ValueError(f"mbf input_size {tuple(self.input_size)} must have both sides positive and divisible "
                             "by 16; the released weights use (112, 112)")
        if x.ndim != 4 or tuple(x.shape[1:3]) != (h, w) or x.shape[3] != 3:
            raise ValueError(f"mbf expects NHWC images of shape (B, {h}, {w}, 3); got {tuple(x.shape)}. "
                             "Resize the images or set model.input_size")
        dtype = resolve_dtype(self.dtype)
        width = lambda c: scaled_width(c, self.width_mult)  # noqa: E731
        x = ConvBlock(width(MBF_STEM), 3, 2, 1, dtype=dtype, name="layers_0")(x.astype(dtype), train)
        for i, (kind, out, hidden, blocks) in enumerate(MBF_LAYERS, start=1):
            name = f"layers_{i}"
            if kind == "conv":
                x = ConvBlock(width(out), 3, 1, 1, groups=width(hidden), dtype=dtype, name=name)(x, train)
            elif kind == "down":
                x = DepthWise(width(out), width(hidden), 2, False, dtype=dtype, name=name)(x, train)
            else:
                x = Residual(width(out), width(hidden), blocks, dtype=dtype, name=name)(x, train)
        x = ConvBlock(width(MBF_SEP), 1, dtype=dtype, name="conv_sep")(x, train)
        x = ConvBlock(width(MBF_REDUCE), 1, dtype=dtype, name="conv_reduce")(x, train)
        x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # PyTorch's (C, H, W) flatten
        x = nn.Dropout(rate=self.dropout, deterministic=not train or self.dropout == 0.0)(x)
        x = nn.Dense(self.embedding_size, dtype=jnp.float32, param_dtype=jnp.float32,
                     kernel_init=nn.initializers.lecun_normal(), name="fc")(x.astype(jnp.float32))
        return batch_norm(train, jnp.float32, "features", use_scale=False)(x)
