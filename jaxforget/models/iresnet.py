"""InsightFace's IResNet family (arcface_torch ``backbones/iresnet.py``) as Flax linen modules.

The layer order, padding, BatchNorm constants and parameter layout follow ``docs/FORMATS.md`` so that
weights converted from PyTorch (:mod:`jaxforget.models.torch_layout`) reproduce InsightFace's embeddings. The
module works in NHWC. Module names mirror the PyTorch keys with ``.N`` written ``_N``
(``layer3.7.bn2`` is ``layer3_7/bn2``; ``layer1.0.downsample.0`` is ``layer1_0/downsample_0``).

Differences from the PyTorch module that matter for conversion:

* ``fc`` flattens an NHWC map, so its kernel's input axis is ordered (H, W, C) where PyTorch's is
  (C, H, W); the converter permutes it.
* The ``features`` BatchNorm1d has its scale fixed at 1 and never trained in InsightFace. Here it
  is a BatchNorm without a scale parameter (``use_scale=False``), so no optimiser can move it; the
  constant is reported by :func:`fixed_parameter_shapes` and written back as ones on export.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxforget.models.layers import PReLU, batch_norm, conv, resolve_dtype

#: Blocks per stage for each supported depth.
IRESNET_STAGES: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    200: (6, 26, 60, 6),
}

#: Stage widths at width multiplier 1.
STAGE_WIDTHS: tuple[int, int, int, int] = (64, 128, 256, 512)


def scaled_width(channels: int, width_mult: float) -> int:
    """Channels of a layer under a width multiplier (rounded, at least 1)."""
    return max(1, int(round(channels * width_mult)))


class IBasicBlock(nn.Module):
    """bn1 -> conv1 3x3 -> bn2 -> prelu -> conv2 3x3 (stride) -> bn3, plus identity/downsample."""

    planes: int
    stride: int = 1
    downsample: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        identity = x
        out = batch_norm(train, self.dtype, "bn1")(x)
        out = conv(self.planes, 3, 1, 1, dtype=self.dtype, name="conv1")(out)
        out = batch_norm(train, self.dtype, "bn2")(out)
        out = PReLU(dtype=self.dtype, name="prelu")(out)
        out = conv(self.planes, 3, self.stride, 1, dtype=self.dtype, name="conv2")(out)
        out = batch_norm(train, self.dtype, "bn3")(out)
        if self.downsample:
            identity = conv(self.planes, 1, self.stride, 0, dtype=self.dtype, name="downsample_0")(x)
            identity = batch_norm(train, self.dtype, "downsample_1")(identity)
        return out + identity


class IResNet(nn.Module):
    """IResNet backbone mapping normalised NHWC images ``(B, H, W, 3)`` to embeddings ``(B, E)``.

    Attributes:
      stage_blocks: blocks per stage, e.g. ``(3, 4, 14, 3)`` for r50 (see :data:`IRESNET_STAGES`).
      width_mult: multiplies the stem and stage widths 64/128/256/512 (1.0 = InsightFace).
      embedding_size: output dimension (512 in InsightFace); independent of ``width_mult``.
      input_size: ``(H, W)``; both divisible by 16. ``fc`` has ``512*w * H/16 * W/16`` inputs.
      dropout: dropout rate before ``fc`` (InsightFace default 0); needs a ``'dropout'`` rng in train.
      dtype: computation dtype up to the dropout (``float32`` or ``bfloat16``); ``fc`` and
        ``features`` always compute in float32, as under InsightFace's autocast. Parameters are
        float32 in every case.
    """

    stage_blocks: Sequence[int] = IRESNET_STAGES[50]
    width_mult: float = 1.0
    embedding_size: int = 512
    input_size: tuple[int, int] = (112, 112)
    dropout: float = 0.0
    dtype: Any = jnp.float32

    def setup_check(self) -> None:
        h, w = self.input_size
        if h % 16 or w % 16 or h <= 0 or w <= 0:
            raise ValueError(
                f"IResNet input_size {tuple(self.input_size)} must have both sides positive and divisible "
                "by 16 (four stride-2 stages); use e.g. (112, 112) or (32, 32)"
            )

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self.setup_check()
        if x.ndim != 4 or tuple(x.shape[1:3]) != tuple(self.input_size) or x.shape[3] != 3:
            raise ValueError(
                f"IResNet expects NHWC images of shape (B, {self.input_size[0]}, {self.input_size[1]}, 3); "
                f"got {tuple(x.shape)}. Resize the images or set model.input_size"
            )
        dtype = resolve_dtype(self.dtype)
        widths = [scaled_width(c, self.width_mult) for c in STAGE_WIDTHS]
        x = x.astype(dtype)
        x = conv(widths[0], 3, 1, 1, dtype=dtype, name="conv1")(x)
        x = batch_norm(train, dtype, "bn1")(x)
        x = PReLU(dtype=dtype, name="prelu")(x)
        for stage, (planes, blocks) in enumerate(zip(widths, self.stage_blocks), start=1):
            for i in range(blocks):
                x = IBasicBlock(
                    planes=planes,
                    stride=2 if i == 0 else 1,
                    downsample=i == 0,
                    dtype=dtype,
                    name=f"layer{stage}_{i}",
                )(x, train)
        x = batch_norm(train, dtype, "bn2")(x)
        x = x.reshape(x.shape[0], -1)  # NHWC flatten: (H, W, C) order
        x = nn.Dropout(rate=self.dropout, deterministic=not train or self.dropout == 0.0)(x)
        x = x.astype(jnp.float32)
        x = nn.Dense(
            self.embedding_size,
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            kernel_init=nn.initializers.lecun_normal(),
            name="fc",
        )(x)
        x = batch_norm(train, jnp.float32, "features", use_scale=False)(x)
        return x


def fixed_parameter_shapes(module: IResNet) -> dict[str, tuple[int, ...]]:
    """PyTorch parameters that the Flax module holds as constants (name -> shape).

    InsightFace's ``features.weight`` is fixed at 1 (``requires_grad=False``); the Flax module
    computes with that constant instead of storing a parameter. Counting parameter elements like
    PyTorch does means adding these shapes.
    """
    return {"features.weight": (module.embedding_size,)}


def iresnet(depth: int, **kwargs: Any) -> IResNet:
    """Builds ``IResNet`` for a depth in {18, 34, 50, 100, 200}."""
    if depth not in IRESNET_STAGES:
        raise ValueError(f"IResNet depth {depth} is not supported; choose one of {sorted(IRESNET_STAGES)}")
    return IResNet(stage_blocks=IRESNET_STAGES[depth], **kwargs)
