"""Flax IResNet / MobileFaceNet / mbf variables as an ONNX model that InsightFace's own loader runs.

:func:`onnx_model` writes the layers as ``Conv``, ``BatchNormalization``, ``PRelu``, ``Add``,
``Flatten`` and ``Gemm`` nodes in PyTorch's forward order, with the InsightFace state_dict's
names for the initializers (:func:`jaxforget.models.torch_layout.flax_to_torch`). Nothing is
folded, so reading the file back (:mod:`jaxforget.models.onnx_layout`) gives the same variables.
Opset 11 (arcface_torch's), input ``data`` float32 NCHW ``(batch, 3, H, W)`` with a dynamic batch,
output ``embedding`` (unnormalised, like the Flax model's). A model that came from an ONNX file
is written with that file's input and output names instead (:func:`io_names`: ``input.1`` and
``516`` for InsightFace's ``w600k_mbf.onnx``), so it replaces the file in a deployed system.

The input is normalised as InsightFace's ``ArcFaceONNX`` does for arcface_torch models: RGB,
``(pixel - 127.5) / 127.5`` (``onnx_layout.ONNX_PIXEL_MEAN`` / ``ONNX_PIXEL_STD``; :func:`insightface_blob`).
``ArcFaceONNX`` would switch to mean 0 / std 1 (mxnet models) on seeing nodes named ``Sub*`` and
``Mul*`` among the first eight, so node names here are the PyTorch modules' (``conv1.conv``,
``bn1.bn``...). IResNets are trained with that normalisation; MobileFaceNet's ``/ 128`` is folded
into its stem conv (a bias-free, zero-padded conv is linear in its input) and undone on reading.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Callable, Mapping

import jax
import numpy as np

from jaxforget.io import onnx_format
from jaxforget.io.onnx_format import GraphWriter
from jaxforget.models.layers import BN_EPSILON
from jaxforget.models.mbf import MBF_LAYERS
from jaxforget.models.mobilefacenet import MOBILEFACENET_SETTING
from jaxforget.models.onnx_layout import ONNX_INPUT, ONNX_OUTPUT, ONNX_PIXEL_MEAN, ONNX_PIXEL_STD
from jaxforget.models.registry import FAMILIES, ModelBundle, family_of, module_order
from jaxforget.models.torch_layout import flax_to_torch


def _conv(g: GraphWriter, x: str, sd: Mapping[str, np.ndarray], prefix: str, stride: int = 1,
          group: int = 1, pad: int | None = None) -> str:
    """A bias-free conv, padded by half the kernel (torch's 3x3 pad 1, 1x1 pad 0) unless ``pad``."""
    w = sd[f"{prefix}.weight"]
    kh, kw = w.shape[2:]
    pads = [kh // 2, kw // 2] * 2 if pad is None else [pad] * 4
    return g.node("Conv", [x, g.constant(f"{prefix}.weight", w)], f"{prefix}.conv", kernel_shape=[kh, kw],
                  strides=[stride, stride], pads=pads, dilations=[1, 1], group=group)


def _bn(g: GraphWriter, x: str, sd: Mapping[str, np.ndarray], prefix: str) -> str:
    names = [g.constant(f"{prefix}.{leaf}", sd[f"{prefix}.{leaf}"])
             for leaf in ("weight", "bias", "running_mean", "running_var")]
    return g.node("BatchNormalization", [x, *names], f"{prefix}.bn", epsilon=BN_EPSILON)


def _prelu(g: GraphWriter, x: str, sd: Mapping[str, np.ndarray], prefix: str) -> str:
    slope = sd[f"{prefix}.weight"]
    return g.node("PRelu", [x, g.constant(f"{prefix}.weight", slope.reshape(-1, 1, 1))], f"{prefix}.prelu")


def _write_iresnet(g: GraphWriter, sd: Mapping[str, np.ndarray], bundle: ModelBundle, x: str) -> str:
    x = _prelu(g, _bn(g, _conv(g, x, sd, "conv1"), sd, "bn1"), sd, "prelu")
    for stage, blocks in enumerate(bundle.module.stage_blocks, start=1):
        for i in range(blocks):
            p, stride = f"layer{stage}.{i}", 2 if i == 0 else 1
            y = _conv(g, _bn(g, x, sd, f"{p}.bn1"), sd, f"{p}.conv1")
            y = _prelu(g, _bn(g, y, sd, f"{p}.bn2"), sd, f"{p}.prelu")
            y = _bn(g, _conv(g, y, sd, f"{p}.conv2", stride), sd, f"{p}.bn3")
            if f"{p}.downsample.0.weight" in sd:
                x = _bn(g, _conv(g, x, sd, f"{p}.downsample.0", stride), sd, f"{p}.downsample.1")
            x = g.node("Add", [y, x], f"{p}.add")
    x = g.node("Flatten", [_bn(g, x, sd, "bn2")], "flatten", axis=1)
    x = g.node("Gemm", [x, g.constant("fc.weight", sd["fc.weight"]), g.constant("fc.bias", sd["fc.bias"])],
               "fc.gemm", transB=1)
    return _bn(g, x, sd, "features")


def _conv_block(g: GraphWriter, x: str, sd: Mapping[str, np.ndarray], prefix: str, stride: int = 1,
                depthwise: bool = False, pad: int | None = None) -> str:
    group = sd[f"{prefix}.conv.weight"].shape[0] if depthwise else 1
    x = _bn(g, _conv(g, x, sd, f"{prefix}.conv", stride, group, pad), sd, f"{prefix}.bn")
    return _prelu(g, x, sd, f"{prefix}.prelu") if f"{prefix}.prelu.weight" in sd else x


def _write_mobilefacenet(g: GraphWriter, sd: Mapping[str, np.ndarray], bundle: ModelBundle, x: str) -> str:
    x = _conv_block(g, _conv_block(g, x, sd, "conv1", 2), sd, "dw_conv1", depthwise=True)
    index = 0
    for _, _, repeats, first_stride in MOBILEFACENET_SETTING:
        for i in range(repeats):
            p, stride = f"blocks.{index}.conv", first_stride if i == 0 else 1
            hidden, c_in = sd[f"{p}.0.weight"].shape[:2]
            y = _prelu(g, _bn(g, _conv(g, x, sd, f"{p}.0"), sd, f"{p}.1"), sd, f"{p}.2")
            y = _prelu(g, _bn(g, _conv(g, y, sd, f"{p}.3", stride, hidden), sd, f"{p}.4"), sd, f"{p}.5")
            y = _bn(g, _conv(g, y, sd, f"{p}.6"), sd, f"{p}.7")
            connect = stride == 1 and c_in == sd[f"{p}.6.weight"].shape[0]
            x = g.node("Add", [x, y], f"blocks.{index}.add") if connect else y
            index += 1
    x = _conv_block(g, _conv_block(g, x, sd, "conv2"), sd, "linear7", depthwise=True, pad=0)
    return g.node("Flatten", [_conv_block(g, x, sd, "linear1")], "flatten", axis=1)


def _mbf_block(g: GraphWriter, x: str, c_in: int, sd: Mapping[str, np.ndarray], prefix: str,
               stride: int = 1) -> tuple[str, int]:
    """An arcface_torch ConvBlock / LinearBlock (``layers.0`` conv, ``.1`` bn, ``.2`` prelu when
    present) on a ``c_in``-channel input; returns the output and its channels."""
    w = sd[f"{prefix}.layers.0.weight"]
    y = _bn(g, _conv(g, x, sd, f"{prefix}.layers.0", stride, c_in // w.shape[1]), sd, f"{prefix}.layers.1")
    if f"{prefix}.layers.2.weight" in sd:
        y = _prelu(g, y, sd, f"{prefix}.layers.2")
    return y, int(w.shape[0])


def _mbf_depthwise(g: GraphWriter, x: str, c: int, sd: Mapping[str, np.ndarray], prefix: str, stride: int,
                   residual: bool) -> tuple[str, int]:
    y, h = _mbf_block(g, x, c, sd, f"{prefix}.layers.0")
    y, h = _mbf_block(g, y, h, sd, f"{prefix}.layers.1", stride)
    y, out = _mbf_block(g, y, h, sd, f"{prefix}.layers.2")
    return (g.node("Add", [x, y], f"{prefix}.add"), out) if residual else (y, out)


def _write_mbf(g: GraphWriter, sd: Mapping[str, np.ndarray], bundle: ModelBundle, x: str) -> str:
    x, c = _mbf_block(g, x, 3, sd, "layers.0", 2)
    for i, (kind, _, _, blocks) in enumerate(MBF_LAYERS, start=1):
        if kind == "conv":
            x, c = _mbf_block(g, x, c, sd, f"layers.{i}")
        elif kind == "down":
            x, c = _mbf_depthwise(g, x, c, sd, f"layers.{i}", 2, False)
        else:
            for k in range(blocks):
                x, c = _mbf_depthwise(g, x, c, sd, f"layers.{i}.layers.{k}", 1, True)
    x, c = _mbf_block(g, x, c, sd, "conv_sep")
    x, c = _mbf_block(g, x, c, sd, "conv_reduce")
    x = g.node("Flatten", [x], "flatten", axis=1)
    x = g.node("Gemm", [x, g.constant("fc.weight", sd["fc.weight"]), g.constant("fc.bias", sd["fc.bias"])],
               "fc.gemm", transB=1)
    return _bn(g, x, sd, "features")


#: One graph builder per family of :data:`jaxforget.models.registry.FAMILIES` (same keys).
ONNX_WRITERS: dict[str, Callable[[GraphWriter, Mapping[str, np.ndarray], ModelBundle, str], str]] = {
    "iresnet": _write_iresnet,
    "mobilefacenet": _write_mobilefacenet,
    "mbf": _write_mbf,
}


def io_names(path: str | os.PathLike) -> dict[str, str]:
    """``{'input_name', 'output_name'}`` of the ONNX file ``path`` (a recognition model has one
    of each), for :func:`onnx_model` to write a drop-in replacement of it."""
    graph = onnx_format.read_onnx(path)
    return {"input_name": graph.inputs[0].name, "output_name": graph.outputs[0].name}


def onnx_model(bundle: ModelBundle, variables: Mapping[str, Any], input_name: str = ONNX_INPUT,
               output_name: str = ONNX_OUTPUT) -> Any:
    """The bundle's variables as an ONNX ``ModelProto`` (see the module docstring)."""
    sd = flax_to_torch(variables, bundle.fixed_parameters(), module_order(bundle))
    stem = next(k for k, v in sd.items() if k.endswith(".weight") and np.ndim(v) == 4)
    scale = ONNX_PIXEL_STD / bundle.pixel_std
    if scale != 1.0:
        sd[stem] = (sd[stem].astype(np.float64) * scale).astype(np.float32)
    g = GraphWriter(bundle.name)
    out = ONNX_WRITERS[family_of(bundle.name).name](g, sd, bundle, input_name)
    out = g.node("Identity", [out], output_name)
    h, w = bundle.input_size
    return g.model([(input_name, ["batch", 3, h, w])], [(out, ["batch", bundle.embedding_size])])


def save_onnx_backbone(bundle: ModelBundle, variables: Mapping[str, Any], path: str | os.PathLike,
                       **names: str) -> pathlib.Path:
    """Writes :func:`onnx_model` (with ``input_name`` / ``output_name`` when given) to ``path``
    (atomically); returns the path."""
    return onnx_format.save_onnx(onnx_model(bundle, variables, **names), path)


def insightface_blob(images: np.ndarray) -> np.ndarray:
    """uint8 RGB NHWC images -> the NCHW float32 input InsightFace's ArcFaceONNX feeds a model."""
    x = (np.asarray(images, np.float32) - ONNX_PIXEL_MEAN) / ONNX_PIXEL_STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def onnx_parity(bundle: ModelBundle, variables: Mapping[str, Any], model: Any, images: np.ndarray | None = None,
                seed: int = 0) -> dict[str, float]:
    """Max abs differences between onnxruntime on ``model`` and the Flax model on the same images
    (uint8 NHWC; default two random ones): on raw and on L2-normalised embeddings, with the
    largest raw embedding value for scale."""
    if images is None:
        images = np.random.default_rng(seed).integers(0, 256, (2, *bundle.input_size, 3), dtype=np.uint8)
    with jax.default_matmul_precision("highest"):  # full float32 on GPUs too (not TF32)
        ours = np.asarray(jax.jit(lambda v, x: bundle.module.apply(v, bundle.normalize(x), train=False))(
            dict(variables), images), np.float64)
    # One image a run: an export may fix the batch at 1 (arcface_torch's only renames it).
    theirs = np.asarray(onnx_format.run_onnx(model, insightface_blob(images), batch_size=1)[0], np.float64)

    def unit(e: np.ndarray) -> np.ndarray:
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    return {"max_abs_raw": float(np.abs(ours - theirs).max()),
            "max_abs_normalized": float(np.abs(unit(ours) - unit(theirs)).max()),
            "max_abs_embedding": float(np.abs(ours).max()),
            "images": int(len(images))}


assert ONNX_WRITERS.keys() == FAMILIES.keys()
