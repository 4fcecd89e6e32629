"""InsightFace's ONNX recognition models (arcface_torch exports) read as PyTorch state_dicts.

InsightFace's released recognition models (``w600k_r50.onnx``
and the like) are arcface_torch IResNets exported by ``torch2onnx.py`` (``torch.onnx.export(model.eval(),
img, path, keep_initializers_as_inputs=False, opset_version=11)``). In such a graph every conv that
a BatchNorm follows carries that BatchNorm folded in (one ``Conv`` with a bias), initializer names
may be generic (``onnx::Conv_123``), while the BatchNorms that come before a conv (each block's
``bn1``, ``bn2`` before ``fc``) and the ``features`` BatchNorm1d stay ``BatchNormalization`` nodes
(or ``Mul`` / ``Add`` by constants, after a graph simplifier); PReLU slopes are initializers.
Names are therefore not used: the graph is walked in data-flow order (a post-order walk from the
output that enters the deeper input of a residual ``Add`` first, which is the Flax call order)
and its layers are matched one by one to the modules of the detected model in
:func:`jaxforget.models.registry.module_order`. The architecture comes from the graph: IResNet
depth from the residual additions per stage (a stage starts at a 1x1 stride-2 shortcut conv),
width from the stem, embedding size from the last layer, input size from the graph's input.
:func:`onnx_state_dict` returns the model's InsightFace PyTorch state_dict, so loading goes on
exactly as for a ``.pth`` (:func:`jaxforget.models.torch_layout.detect_arch`, ``torch_to_flax``).

A BatchNorm that the export folded into the conv before it cannot be recovered; its module gets
an exact identity plus the conv's bias: scale 1, mean 0 and the running variance :data:`UNIT_VAR`,
for which ``var + eps`` is exactly 1 in float32, so ``rsqrt`` gives 1 and the layer adds the
bias and nothing else (the evaluation-mode function is the graph's, bit for bit in that layer).
Training such a model with ``method.bn_mode='train'`` normalises by batch statistics and so
differs from training the original ``.pth``; ``bn_mode='frozen'`` keeps the graph's function.

Writing Flax variables as ONNX is :mod:`jaxforget.models.onnx_export`'s job; both take the
input of InsightFace's ``ArcFaceONNX`` (:data:`ONNX_PIXEL_MEAN`, :data:`ONNX_PIXEL_STD`).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
from typing import Any, Callable, Mapping

import jax
import numpy as np

from jaxforget.io import onnx_format
from jaxforget.io.onnx_format import OnnxGraph
from jaxforget.models.iresnet import IRESNET_STAGES, STAGE_WIDTHS
from jaxforget.models.layers import BN_EPSILON
from jaxforget.models.mbf import MBF_BLOCKS, MBF_STEM
from jaxforget.models.registry import FAMILIES, ModelBundle, abstract_variables, build_model, module_order
from jaxforget.models.torch_layout import ArchInfo, CheckpointMismatchError, flax_to_torch

ONNX_INPUT = "data"
ONNX_OUTPUT = "embedding"
#: How InsightFace's ArcFaceONNX normalises the RGB pixels fed to an arcface_torch model.
ONNX_PIXEL_MEAN = 127.5
ONNX_PIXEL_STD = 127.5
_PASS_THROUGH = ("Identity", "Dropout", "Cast")
_ARITHMETIC = ("Add", "Sub", "Mul", "Div")


#: Running variance with ``UNIT_VAR + BN_EPSILON == 1`` exactly in float32 (the tests check it):
#: a BatchNorm with scale 1, mean 0 and this variance multiplies by exactly 1.
UNIT_VAR = np.float32(1) - np.float32(BN_EPSILON)


@dataclasses.dataclass
class _Layer:
    """A layer of the graph: ``conv`` / ``bn`` / ``prelu`` / ``dense`` carry weights in PyTorch's
    layouts; ``add`` (residual) and ``flatten`` only structure."""

    kind: str
    node: str
    output: str
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    mean: np.ndarray | None = None
    var: np.ndarray | None = None
    stride: int = 1
    group: int = 1

    def describe(self) -> str:
        shape = "" if self.weight is None else f" {tuple(self.weight.shape)}"
        return f"{self.kind}{shape} (node {self.node!r})"


def _ordered_nodes(graph: OnnxGraph, source: str) -> list[Any]:
    """Nodes reaching the single output, post-order from it, deeper inputs first."""
    if len(graph.outputs) != 1:
        raise CheckpointMismatchError(f"{source}: a face backbone has one output (the embedding); this graph has "
                                      f"{len(graph.outputs)}")
    producer = {out: i for i, node in enumerate(graph.nodes) for out in node.outputs if out}
    depth = [0] * len(graph.nodes)
    for i, node in enumerate(graph.nodes):  # the file's order is topological (the checker's rule)
        depth[i] = 1 + max((depth[producer[t]] for t in node.inputs if producer.get(t, i) < i), default=0)
    root = producer.get(graph.outputs[0].name)
    if root is None:
        raise CheckpointMismatchError(f"{source}: the output {graph.outputs[0].name!r} is not computed by any node")
    order, seen, stack = [], set(), [(root, False)]
    while stack:
        i, done = stack.pop()
        if done:
            order.append(graph.nodes[i])
            continue
        if i in seen:
            continue
        seen.add(i)
        stack.append((i, True))
        node = graph.nodes[i]  # a Reshape's target shape may be computed (Shape, Gather, ...): not a layer
        preds = [producer[t] for t in (node.inputs[:1] if node.op_type == "Reshape" else node.inputs) if t in producer]
        for p in sorted(dict.fromkeys(preds), key=lambda p: (depth[p], -preds.index(p))):
            stack.append((p, False))  # pushed shallowest first: the deepest is visited first
    return order


def _const(graph: OnnxGraph, name: str, node: Any, source: str) -> np.ndarray:
    if name not in graph.constants:
        raise CheckpointMismatchError(f"{source}: node {node.name!r} ({node.op_type}) reads {name!r} as a weight, "
                                      "but it is computed, not a constant")
    return np.asarray(graph.constants[name], np.float32)


def _conv_layer(graph: OnnxGraph, node: Any, source: str) -> _Layer:
    a = node.attributes
    w = _const(graph, node.inputs[1], node, source)
    strides, pads = list(a.get("strides", [1, 1])), list(a.get("pads", [0, 0, 0, 0]))
    if (w.ndim != 4 or len(strides) != 2 or strides[0] != strides[1] or len(pads) != 4
            or pads[:2] != pads[2:] or any(d != 1 for d in a.get("dilations", [1, 1]))
            or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
        raise CheckpointMismatchError(f"{source}: conv node {node.name!r} (weight {w.shape}, strides {strides}, "
                                      f"pads {pads}) is not a 2-D conv with equal strides and symmetric padding")
    bias = _const(graph, node.inputs[2], node, source) if len(node.inputs) > 2 and node.inputs[2] else None
    return _Layer("conv", node.name, node.outputs[0], w, bias, stride=int(strides[0]), group=int(a.get("group", 1)))


def _dense_layer(graph: OnnxGraph, node: Any, source: str) -> _Layer:
    a = node.attributes
    w = _const(graph, node.inputs[1], node, source)
    if node.op_type == "MatMul" or not a.get("transB", 0):
        w = w.T
    if a.get("transA", 0) or w.ndim != 2:
        raise CheckpointMismatchError(f"{source}: node {node.name!r} is not a linear layer x @ W^T + b")
    bias = _const(graph, node.inputs[2], node, source) if len(node.inputs) > 2 and node.inputs[2] else None
    w = w * np.float32(a.get("alpha", 1.0))
    bias = None if bias is None else bias.reshape(-1) * np.float32(a.get("beta", 1.0))
    return _Layer("dense", node.name, node.outputs[0], w, bias)


def _arithmetic(layers: list[_Layer], graph: OnnxGraph, node: Any, x: str, source: str) -> None:
    """``Add``/``Sub``/``Mul``/``Div`` by a constant: a bias of the conv/linear layer just before,
    or an affine map (a BatchNorm with mean 0 and :data:`UNIT_VAR`), merged with one just before."""
    const_pos = [k for k, t in enumerate(node.inputs) if t in graph.constants]
    if len(const_pos) != 1 or len(node.inputs) != 2:
        raise CheckpointMismatchError(f"{source}: node {node.name!r} ({node.op_type}) has {len(const_pos)} constant "
                                      "inputs; expected a residual Add or an op with one constant")
    c = np.asarray(graph.constants[node.inputs[const_pos[0]]], np.float32).reshape(-1)
    prev = layers[-1] if layers and layers[-1].output == x else None
    if (node.op_type == "Add" and prev is not None and prev.kind in ("conv", "dense") and prev.bias is None
            and c.size == prev.weight.shape[0]):
        prev.bias, prev.output = c, node.outputs[0]
        return
    if prev is None or prev.kind != "bn" or prev.mean is not None:
        prev = _Layer("bn", node.name, x, np.ones(1, np.float32), np.zeros(1, np.float32))
        layers.append(prev)
    s, b = prev.weight.astype(np.float64), prev.bias.astype(np.float64)
    c = c.astype(np.float64)
    if node.op_type == "Add":
        b = b + c
    elif node.op_type == "Sub":
        s, b = (s, b - c) if const_pos[0] == 1 else (-s, c - b)
    elif node.op_type == "Mul":
        s, b = s * c, b * c
    elif const_pos[0] == 1:  # Div by the constant (a constant divided by x is not affine)
        s, b = s / c, b / c
    else:
        raise CheckpointMismatchError(f"{source}: node {node.name!r} divides a constant by the data")
    prev.weight, prev.bias, prev.output = s.astype(np.float32), b.astype(np.float32), node.outputs[0]


def _layers(graph: OnnxGraph, source: str) -> list[_Layer]:
    """The graph as a list of layers in the Flax modules' call order."""
    layers: list[_Layer] = []
    alias: dict[str, str] = {}
    for node in _ordered_nodes(graph, source):
        op = node.op_type
        inputs = [alias.get(t, t) for t in node.inputs]
        x = inputs[0] if inputs else ""
        if node.domain not in ("", "ai.onnx"):
            raise CheckpointMismatchError(f"{source}: node {node.name!r} is in the custom domain {node.domain!r}")
        if op in _PASS_THROUGH:
            if op == "Cast" and node.attributes.get("to") != 1:  # 1: float32
                raise CheckpointMismatchError(f"{source}: Cast node {node.name!r} casts to ONNX type "
                                              f"{node.attributes.get('to')}, not float32")
            alias[node.outputs[0]] = x
        elif op == "Conv":
            layers.append(_conv_layer(graph, node, source))
        elif op in ("Gemm", "MatMul"):
            layers.append(_dense_layer(graph, node, source))
        elif op == "BatchNormalization":
            if len(inputs) < 5:
                raise CheckpointMismatchError(f"{source}: BatchNormalization node {node.name!r} lacks its statistics")
            scale, bias, mean, var = (_const(graph, t, node, source) for t in inputs[1:5])
            eps = float(node.attributes.get("epsilon", 1e-5))
            if eps != np.float32(BN_EPSILON):  # same normaliser with the model's epsilon
                var = (var.astype(np.float64) + eps - BN_EPSILON).astype(np.float32)
            layers.append(_Layer("bn", node.name, node.outputs[0], scale, bias, mean, var))
        elif op == "PRelu":
            slope = _const(graph, inputs[1], node, source).reshape(-1)
            layers.append(_Layer("prelu", node.name, node.outputs[0], slope))
        elif op in ("Flatten", "Reshape"):
            layers.append(_Layer("flatten", node.name, node.outputs[0]))
        elif op == "Add" and not any(t in graph.constants for t in inputs):
            layers.append(_Layer("add", node.name, node.outputs[0]))
        elif op in _ARITHMETIC:
            _arithmetic(layers, graph, node, x, source)
        else:
            raise CheckpointMismatchError(
                f"{source}: node {node.name!r} ({op}) is not part of an InsightFace IResNet / MobileFaceNet graph "
                "(Conv, BatchNormalization, PRelu, Add, Flatten, Gemm); is this a recognition model exported by "
                "arcface_torch?")
    return layers


def _input_size(graph: OnnxGraph, given: tuple[int, int] | None) -> tuple[int, int] | None:
    if given is not None:
        return (int(given[0]), int(given[1]))
    shape = graph.inputs[0].shape if len(graph.inputs) == 1 else ()
    if len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape[2:]):
        return (int(shape[2]), int(shape[3]))
    return None


def _detect_iresnet(layers: list[_Layer], size: tuple[int, int] | None, source: str) -> ArchInfo:
    counts: list[int] = []
    for layer in layers:
        if layer.kind == "conv" and layer.weight.shape[2:] == (1, 1) and layer.stride == 2:
            counts.append(0)  # a stage's downsampling shortcut
        elif layer.kind == "add":
            if not counts:
                raise CheckpointMismatchError(f"{source}: a residual Add ({layer.node!r}) before any 1x1 "
                                              "stride-2 shortcut conv; not an IResNet")
            counts[-1] += 1
    depth = next((d for d, s in IRESNET_STAGES.items() if list(s) == counts), None)
    if depth is None:
        raise CheckpointMismatchError(f"{source}: residual blocks per stage {counts} match no IResNet depth; known: "
                                      + ", ".join(f"r{d} {list(s)}" for d, s in IRESNET_STAGES.items()))
    dense = [layer for layer in layers if layer.kind == "dense"]
    channels = [layer for layer in layers if layer.kind == "conv"][-1].weight.shape[0]
    if len(dense) != 1 or dense[0].weight.shape[1] % channels:
        raise CheckpointMismatchError(f"{source}: expected one linear layer over the final {channels}-channel map")
    cells = dense[0].weight.shape[1] // channels
    if size is None:
        side = int(round(cells ** 0.5))
        if side * side != cells:
            raise CheckpointMismatchError(f"{source}: the linear layer implies a final map of {cells} cells, not a "
                                          "square, and the input has no static size; pass the input size")
        size = (16 * side, 16 * side)
    width = layers[0].weight.shape[0] / STAGE_WIDTHS[0]
    return ArchInfo(f"iresnet{depth}", width, int(dense[0].weight.shape[0]), size, depth)


def _detect_mobilefacenet(layers: list[_Layer], size: tuple[int, int] | None, source: str) -> ArchInfo:
    convs = [layer for layer in layers if layer.kind == "conv"]
    if len(convs) < 3 or convs[-2].group <= 1:
        raise CheckpointMismatchError(f"{source}: a stride-2 stem, no linear layer, and no global depthwise conv "
                                      "before the last conv: neither the CASIA MobileFaceNet nor arcface_torch's mbf")
    kernel = convs[-2].weight.shape[2:]
    if size is None:
        size = (16 * kernel[0], 16 * kernel[1])
    return ArchInfo("mobilefacenet", convs[0].weight.shape[0] / 64.0, int(convs[-1].weight.shape[0]), size)


def _detect_mbf(layers: list[_Layer], size: tuple[int, int] | None, source: str) -> ArchInfo:
    counts: list[int] = []  # residual Adds after each stride-2 depthwise conv (a stage's start)
    for layer in layers[1:]:
        if layer.kind == "conv" and layer.stride == 2 and layer.group > 1:
            counts.append(0)
        elif layer.kind == "add" and counts:
            counts[-1] += 1
    if tuple(counts) != MBF_BLOCKS:
        raise CheckpointMismatchError(f"{source}: a stride-2 stem and a linear layer (arcface_torch's mbf?), but "
                                      f"{counts} residual blocks per stage, not mbf's {list(MBF_BLOCKS)}")
    dense = [layer for layer in layers if layer.kind == "dense"]
    reduce = [layer for layer in layers if layer.kind == "conv"][-1].weight.shape[0]
    if len(dense) != 1 or dense[0].weight.shape[1] % reduce:
        raise CheckpointMismatchError(f"{source}: expected one linear layer over the final {reduce}-channel map")
    if size is None:
        cells = dense[0].weight.shape[1] // reduce
        side = int(round(cells ** 0.5))
        if side * side != cells:
            raise CheckpointMismatchError(f"{source}: the linear layer implies a final map of {cells} cells, not a "
                                          "square, and the input has no static size; pass the input size")
        size = (16 * side, 16 * side)
    return ArchInfo("mbf", layers[0].weight.shape[0] / MBF_STEM, int(dense[0].weight.shape[0]), size)


def _has_dense(layers: list[_Layer]) -> bool:
    return any(layer.kind == "dense" for layer in layers)


@dataclasses.dataclass(frozen=True)
class OnnxLayout:
    """How one family shows in a graph: ``matches(layers)`` (the graph's layers in call order),
    and ``detect(layers, input size, source)`` giving its :class:`ArchInfo`."""

    matches: Callable[[list[_Layer]], bool]
    detect: Callable[[list[_Layer], "tuple[int, int] | None", str], ArchInfo]


#: One row per family of :data:`jaxforget.models.registry.FAMILIES` (same keys). The stem's stride
#: tells an IResNet (1) from the MobileFaceNets (2); of those, arcface_torch's mbf ends in a
#: linear layer over the flattened map, the CASIA model in a global depthwise conv and a 1x1 conv.
ONNX_LAYOUTS: dict[str, OnnxLayout] = {
    "iresnet": OnnxLayout(lambda layers: layers[0].stride == 1, _detect_iresnet),
    "mobilefacenet": OnnxLayout(lambda layers: layers[0].stride == 2 and not _has_dense(layers),
                                _detect_mobilefacenet),
    "mbf": OnnxLayout(lambda layers: layers[0].stride == 2 and _has_dense(layers), _detect_mbf),
}
SUPPORTED = ("InsightFace / arcface_torch IResNet-18..200 (w600k_r50, glint360k_r100, ...), arcface_torch's "
             "MobileFaceNet mbf (w600k_mbf) and the CASIA MobileFaceNet layout")


def _template(bundle: ModelBundle) -> list[tuple[str, str, dict[str, tuple[int, ...]]]]:
    """``[(torch module, kind, {leaf: torch shape})]`` in PyTorch registration (= call) order."""
    zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, np.float32), abstract_variables(bundle))
    modules: dict[str, dict[str, tuple[int, ...]]] = collections.OrderedDict()
    for key, value in flax_to_torch(zeros, bundle.fixed_parameters(), module_order(bundle)).items():
        prefix, leaf = key.rsplit(".", 1)
        modules.setdefault(prefix, {})[leaf] = tuple(np.shape(value))
    out = []
    for prefix, leaves in modules.items():
        ndim = len(leaves.get("weight", ()))
        kind = "bn" if "running_mean" in leaves else {4: "conv", 2: "dense", 1: "prelu"}.get(ndim, "?")
        out.append((prefix, kind, leaves))
    return out


def _per_channel(value: np.ndarray, n: int, what: str, source: str) -> np.ndarray:
    value = np.asarray(value, np.float32).reshape(-1)
    if value.size == 1:
        return np.full(n, value[0], np.float32)
    if value.size != n:
        raise CheckpointMismatchError(f"{source}: {what} has {value.size} values; the model has {n} channels")
    return value


def _fill(template: list, layers: list[_Layer], fixed: Mapping[str, Any], stem_scale: float,
          source: str) -> "collections.OrderedDict[str, np.ndarray]":
    """The InsightFace state_dict: the weighted layers matched to the template's modules in order."""
    sd: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    queue = [layer for layer in layers if layer.kind not in ("add", "flatten")]
    j, pending, first_conv = 0, None, True
    for prefix, kind, leaves in template:
        n = leaves.get("running_mean", leaves.get("weight", (0,)))[0]
        if kind == "bn":
            layer = queue[j] if j < len(queue) and queue[j].kind == "bn" and pending is None else None
            j += layer is not None
            ones, zeros = np.ones(n, np.float32), np.zeros(n, np.float32)
            scale = ones if layer is None else _per_channel(layer.weight, n, layer.describe(), source)
            bias = layer.bias if layer is not None else pending
            bias = zeros if bias is None else _per_channel(bias, n, f"the bias for {prefix}", source)
            mean = zeros if layer is None or layer.mean is None else _per_channel(layer.mean, n, prefix, source)
            var = np.full(n, UNIT_VAR) if layer is None or layer.var is None else \
                _per_channel(layer.var, n, prefix, source)
            if f"{prefix}.weight" in fixed and np.any(scale != 1):  # a scale the model fixes at 1
                if np.any(scale <= 0):
                    raise CheckpointMismatchError(f"{source}: {prefix} has scales <= 0, which the model's fixed "
                                                  "scale of 1 cannot represent")
                var = ((var.astype(np.float64) + BN_EPSILON) / scale.astype(np.float64) ** 2 - BN_EPSILON)
                scale = ones
            sd.update({f"{prefix}.weight": scale, f"{prefix}.bias": bias, f"{prefix}.running_mean": mean,
                       f"{prefix}.running_var": np.asarray(var, np.float32)})
            pending = None
            continue
        if pending is not None:
            raise CheckpointMismatchError(f"{source}: a conv with a bias comes before {prefix} ({kind}); the model "
                                          "has no BatchNorm there to hold it")
        if j >= len(queue):
            raise CheckpointMismatchError(f"{source}: the graph ends before the model's {prefix} ({kind}); not the "
                                          "detected architecture")
        layer = queue[j]
        j += 1
        if layer.kind != kind:
            raise CheckpointMismatchError(f"{source}: the graph's {layer.describe()} comes where the model has "
                                          f"{prefix} ({kind})")
        weight = layer.weight
        if kind == "conv" and first_conv and stem_scale != 1.0:
            weight = (weight.astype(np.float64) * stem_scale).astype(np.float32)
        first_conv = first_conv and kind != "conv"
        if kind == "prelu":
            weight = _per_channel(weight, leaves["weight"][0], layer.describe(), source)
        sd[f"{prefix}.weight"] = weight
        if kind == "dense":
            sd[f"{prefix}.bias"] = layer.bias if layer.bias is not None else np.zeros(weight.shape[0], np.float32)
        elif kind == "conv":
            pending = layer.bias
    if pending is not None or j < len(queue):
        rest = [layer.describe() for layer in queue[j:]][:5]
        raise CheckpointMismatchError(f"{source}: the graph has layers the model does not: {rest}")
    return sd


class OnnxStateDict(collections.OrderedDict):
    """A state_dict read from an ONNX graph; ``input_size`` is the graph's ``(H, W)`` (which a
    non-square IResNet's weights do not tell), or None."""

    input_size: tuple[int, int] | None = None


def onnx_state_dict(path: str | os.PathLike, input_size: tuple[int, int] | None = None) -> OnnxStateDict:
    """Reads an InsightFace ONNX recognition model as its PyTorch state_dict (numpy values).

    ``input_size`` is needed only when the graph's input has no static height and width and
    the model is a non-square IResNet. Raises :class:`~jaxforget.io.onnx_format.OnnxFormatError`
    for a file that is not valid ONNX, ``CheckpointMismatchError`` for a graph that is not one of
    the supported backbones (both name the file).
    """
    graph = onnx_format.read_onnx(path)
    source = str(path)
    layers = _layers(graph, source)
    if not layers or layers[0].kind != "conv" or layers[0].weight.shape[1] != 3:
        raise CheckpointMismatchError(f"{source}: the graph does not start with a conv on 3 colour channels; not an "
                                      "InsightFace recognition model (an mxnet-era model with Sub/Mul first?)")
    found = [name for name, row in ONNX_LAYOUTS.items() if row.matches(layers)]
    if not found:
        raise CheckpointMismatchError(f"{source}: the stem conv has stride {layers[0].stride}; supported graphs: "
                                      f"{SUPPORTED}")
    info = ONNX_LAYOUTS[found[0]].detect(layers, _input_size(graph, input_size), source)
    try:
        bundle = build_model(info.model_config())
    except ValueError as e:  # sizes no model has (an input side not divisible by 16, ...)
        raise CheckpointMismatchError(f"{source}: the graph reads as {info.model_config()}, which is no model: {e}")
    # The declared input size sets the shape of the last layers; a size the weights cannot carry
    # (a fuzzed 2**40-row input) is refused before any template of that size is allocated.
    needed = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(abstract_variables(bundle)))
    carried = sum(a.size for layer in layers for a in (layer.weight, layer.bias, layer.mean, layer.var)
                  if a is not None)
    if needed > 2 * carried + 1_000_000:
        raise CheckpointMismatchError(f"{source}: the graph's input {tuple(info.input_size)} needs "
                                      f"{needed:,} parameters but its layers carry {carried:,}; the "
                                      "declared input size does not match the weights")
    stem_scale = bundle.pixel_std / ONNX_PIXEL_STD
    sd = OnnxStateDict(_fill(_template(bundle), layers, bundle.fixed_parameters(), stem_scale, source))
    sd.input_size = tuple(info.input_size)
    return sd


assert ONNX_LAYOUTS.keys() == FAMILIES.keys()
