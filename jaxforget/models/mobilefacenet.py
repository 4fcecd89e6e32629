"""MobileFaceNet (Chen et al. 2018) matching the CASIA-WebFace checkpoint ``068.ckpt``.

Layout (``docs/FORMATS.md``): ``conv1`` (3x3 s2) -> ``dw_conv1`` (depthwise 3x3) -> 15 inverted
residual ``blocks`` -> ``conv2`` (1x1 -> 512) -> ``linear7`` (global depthwise conv over the whole
H/16 x W/16 map) -> ``linear1`` (1x1 -> embedding). Every conv is bias-free and followed by a
BatchNorm (eps 1e-5); PReLUs are per channel. Module names mirror the PyTorch keys with ``.N``
written ``_N`` (``blocks.3.conv.4`` is ``blocks_3/conv_4``). NHWC; input 112 (H) x 96 (W) for the
released weights, pixels normalised as ``(x - 127.5) / 128``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxforget.models.iresnet import scaled_width
from jaxforget.models.layers import PReLU, batch_norm, check_input, conv, resolve_dtype

#: (expansion t, output channels c, repeats n, first stride s) for each bottleneck group.
MOBILEFACENET_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)


class ConvBlock(nn.Module):
    """conv -> bn (-> prelu unless ``linear``), named ``conv``/``bn``/``prelu`` like the checkpoint."""

    features: int
    kernel: tuple[int, int]
    stride: int = 1
    padding: int = 0
    depthwise: bool = False
    linear: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        groups = x.shape[-1] if self.depthwise else 1
        x = conv(self.features, self.kernel, self.stride, self.padding, groups=groups, dtype=self.dtype,
                 name="conv")(x)
        x = batch_norm(train, self.dtype, "bn")(x)
        if not self.linear:
            x = PReLU(dtype=self.dtype, name="prelu")(x)
        return x


class Bottleneck(nn.Module):
    """Inverted residual: 1x1 expand, depthwise 3x3, 1x1 linear projection (``conv_0 .. conv_7``)."""

    out_channels: int
    expansion: int
    stride: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        in_channels = x.shape[-1]
        hidden = in_channels * self.expansion
        y = conv(hidden, 1, dtype=self.dtype, name="conv_0")(x)
        y = batch_norm(train, self.dtype, "conv_1")(y)
        y = PReLU(dtype=self.dtype, name="conv_2")(y)
        y = conv(hidden, 3, self.stride, 1, groups=hidden, dtype=self.dtype, name="conv_3")(y)
        y = batch_norm(train, self.dtype, "conv_4")(y)
        y = PReLU(dtype=self.dtype, name="conv_5")(y)
        y = conv(self.out_channels, 1, dtype=self.dtype, name="conv_6")(y)
        y = batch_norm(train, self.dtype, "conv_7")(y)
        if self.stride == 1 and in_channels == self.out_channels:
            y = x + y
        return y


class MobileFaceNet(nn.Module):
    """MobileFaceNet mapping normalised NHWC images ``(B, H, W, 3)`` to embeddings ``(B, E)``.

    Attributes:
      embedding_size: output dimension (128 for ``068.ckpt``).
      input_size: ``(H, W)``, both divisible by 16; the global depthwise kernel is ``(H/16, W/16)``.
      width_mult: scales every channel count (1.0 = the released model).
      dropout: dropout rate before ``linear1`` (0 in the released model).
      dtype: computation dtype; parameters stay float32 and the output is float32.
    """

    embedding_size: int = 128
    input_size: tuple[int, int] = (112, 96)
    width_mult: float = 1.0
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        h, w = self.input_size
        check_input("MobileFaceNet", self.input_size, x, (112, 96))
        dtype = resolve_dtype(self.dtype)
        wm = self.width_mult
        x = x.astype(dtype)
        x = ConvBlock(scaled_width(64, wm), (3, 3), 2, 1, dtype=dtype, name="conv1")(x, train)
        x = ConvBlock(scaled_width(64, wm), (3, 3), 1, 1, depthwise=True, dtype=dtype, name="dw_conv1")(x, train)
        index = 0
        for t, c, n, s in MOBILEFACENET_SETTING:
            for i in range(n):
                x = Bottleneck(scaled_width(c, wm), t, s if i == 0 else 1, dtype=dtype, name=f"blocks_{index}")(
                    x, train
                )
                index += 1
        x = ConvBlock(scaled_width(512, wm), (1, 1), dtype=dtype, name="conv2")(x, train)
        x = ConvBlock(scaled_width(512, wm), (h // 16, w // 16), depthwise=True, linear=True, dtype=dtype,
                      name="linear7")(x, train)
        x = nn.Dropout(rate=self.dropout, deterministic=not train or self.dropout == 0.0)(x)
        x = ConvBlock(self.embedding_size, (1, 1), linear=True, dtype=dtype, name="linear1")(x, train)
        return x.reshape(x.shape[0], -1).astype(jnp.float32)
