"""PyTorch state_dict <-> Flax variables for InsightFace IResNets and the two MobileFaceNets.

:func:`detect_arch` recognises the model a state_dict holds from its keys and shapes;
:func:`torch_to_flax` and :func:`flax_to_torch` map between the layouts (the state_dicts are numpy,
as :mod:`jaxforget.io.torch_format` reads and writes them):

* Flax module ``name_N`` is PyTorch ``name.N`` (``layer1_0/downsample_0`` <-> ``layer1.0.downsample.0``).
* conv ``kernel`` HWIO <-> ``weight`` OIHW; dense ``kernel`` (in, out) <-> ``weight`` (out, in);
  BatchNorm ``scale``/``bias`` <-> ``weight``/``bias``, ``mean``/``var`` <-> ``running_mean``/
  ``running_var``; PReLU ``slope`` <-> ``weight``.
* IResNet ``fc``: PyTorch flattens (C, H, W), the Flax model flattens (H, W, C); the input axis of
  the kernel is permuted accordingly.
* ``num_batches_tracked`` is dropped on import (flax BatchNorm uses a fixed momentum) and written as
  0 on export; IResNet's fixed ``features.weight`` must be all ones on import and is written as ones.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np

from jaxforget.models.iresnet import IRESNET_STAGES, STAGE_WIDTHS
from jaxforget.models.mbf import MBF_BLOCKS, MBF_LAYERS, MBF_STEM
from jaxforget.models.registry import FAMILIES, family_of

_MAX_LISTED = 25


class CheckpointMismatchError(ValueError):
    """Keys or shapes of a state_dict do not match the model (message lists every problem)."""


def raise_mismatch(problems: list[str], summary: str, advice: str) -> None:
    """Raises :class:`CheckpointMismatchError` listing ``problems`` (the first 25); none: returns.

    The message is ``summary``, the problems one per line, then ``advice``.
    """
    if not problems:
        return
    shown = problems[:_MAX_LISTED]
    more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    raise CheckpointMismatchError(f"{summary}:\n  " + "\n  ".join(shown) + more + "\n" + advice)


def flat_items(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """``[(path, leaf)]`` of a nested dict of variables, depth first in the dicts' order."""
    out = []
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.extend(flat_items(v, prefix + (k,)))
        else:
            out.append((prefix + (k,), v))
    return out


# ----------------------------------------------------------------------------------------------
# Architecture detection


@dataclasses.dataclass(frozen=True)
class ArchInfo:
    """What a state_dict says about its model; :meth:`model_config` feeds ``build_model``."""

    name: str  # 'iresnet50', 'mobilefacenet', ...
    width_mult: float
    embedding_size: int
    input_size: tuple[int, int]
    depth: int | None = None

    @property
    def family(self) -> str:
        return family_of(self.name).name

    def model_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "width_mult": self.width_mult,
            "input_size": tuple(self.input_size),
            "embedding_size": self.embedding_size,
            "dtype": "float32",
            "dropout": 0.0,
        }


def _shape(sd: Mapping[str, Any], key: str, source: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointMismatchError(f"{source}: key {key!r} missing; it is needed to recognise the architecture")
    return tuple(int(s) for s in np.shape(sd[key]))


def _detect_mobilefacenet(
    state_dict: Mapping[str, Any], input_size: tuple[int, int] | None, source: str
) -> ArchInfo:
    c1 = _shape(state_dict, "conv1.conv.weight", source)
    l7 = _shape(state_dict, "linear7.conv.weight", source)
    l1 = _shape(state_dict, "linear1.conv.weight", source)
    size = (16 * l7[2], 16 * l7[3])
    if input_size is not None and tuple(input_size) != size:
        raise CheckpointMismatchError(
            f"{source}: linear7.conv.weight {l7} fixes the input at {size}, not the requested {tuple(input_size)}"
        )
    return ArchInfo("mobilefacenet", c1[0] / 64.0, l1[0], size)


def _detect_iresnet(state_dict: Mapping[str, Any], input_size: tuple[int, int] | None, source: str) -> ArchInfo:
    counts = []
    for stage in range(1, 5):
        blocks = {int(m.group(1)) for k in state_dict if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        if blocks != set(range(len(blocks))):
            raise CheckpointMismatchError(f"{source}: blocks of layer{stage} are not numbered 0..n-1: {sorted(blocks)}")
        counts.append(len(blocks))
    depth = next((d for d, s in IRESNET_STAGES.items() if list(s) == counts), None)
    if depth is None:
        raise CheckpointMismatchError(
            f"{source}: blocks per stage {counts} match no IResNet depth; known: "
            + ", ".join(f"r{d} {list(s)}" for d, s in IRESNET_STAGES.items())
        )
    stem = _shape(state_dict, "conv1.weight", source)
    fc = _shape(state_dict, "fc.weight", source)
    size = _final_map(fc, _shape(state_dict, "bn2.weight", source)[0], "bn2", input_size, source)
    return ArchInfo(f"iresnet{depth}", stem[0] / STAGE_WIDTHS[0], fc[0], size, depth)


def _final_map(fc: tuple[int, ...], channels: int, what: str, input_size: tuple[int, int] | None,
               source: str) -> tuple[int, int]:
    """The input size a linear layer over a flattened ``channels``-channel map implies (square
    unless ``input_size`` picks the aspect ratio)."""
    if fc[1] % channels:
        raise CheckpointMismatchError(f"{source}: fc.weight {fc} is not a multiple of {what} channels {channels}")
    cells = fc[1] // channels
    if input_size is None:
        side = math.isqrt(cells)
        if side * side != cells:
            raise CheckpointMismatchError(
                f"{source}: fc.weight {fc} implies a final map of {cells} cells, not a square; pass the input size"
            )
        return (16 * side, 16 * side)
    if (input_size[0] // 16) * (input_size[1] // 16) != cells:
        raise CheckpointMismatchError(
            f"{source}: fc.weight {fc} implies {cells} final cells, but input_size {tuple(input_size)} gives "
            f"{(input_size[0] // 16) * (input_size[1] // 16)}"
        )
    return (int(input_size[0]), int(input_size[1]))


def _detect_mbf(state_dict: Mapping[str, Any], input_size: tuple[int, int] | None, source: str) -> ArchInfo:
    stem = _shape(state_dict, "layers.0.layers.0.weight", source)
    fc = _shape(state_dict, "fc.weight", source)
    reduce = _shape(state_dict, "conv_reduce.layers.0.weight", source)
    residual = [i for i, (kind, *_) in enumerate(MBF_LAYERS, start=1) if kind == "res"]
    counts = [len({int(m.group(1)) for k in state_dict if (m := re.match(rf"layers\.{i}\.layers\.(\d+)\.layers\.0\.", k))})
              for i in residual]
    if tuple(counts) != MBF_BLOCKS:
        raise CheckpointMismatchError(f"{source}: residual blocks per stage {counts}; arcface_torch's mbf has "
                                      f"{list(MBF_BLOCKS)} (get_mbf_large and other variants are not supported)")
    size = _final_map(fc, reduce[0], "conv_reduce", input_size, source)
    return ArchInfo("mbf", stem[0] / MBF_STEM, fc[0], size)


@dataclasses.dataclass(frozen=True)
class TorchKeys:
    """How one family's PyTorch state_dict looks: its telltale keys and how to read its sizes."""

    described: str  # for the "cannot tell the architecture" message
    matches: Callable[[Mapping[str, Any]], bool]
    detect: Callable[[Mapping[str, Any], "tuple[int, int] | None", str], ArchInfo]


#: One row per family of :data:`jaxforget.models.registry.FAMILIES` (same keys).
TORCH_KEYS: dict[str, TorchKeys] = {
    "iresnet": TorchKeys(
        "InsightFace IResNet keys (conv1.weight, layer1.0.*, fc.weight, features.*)",
        lambda sd: "fc.weight" in sd and any(re.match(r"layer1\.0\.", k) for k in sd),
        _detect_iresnet,
    ),
    "mobilefacenet": TorchKeys(
        "MobileFaceNet keys (conv1.conv.weight, dw_conv1.*, blocks.*, linear7.*, linear1.*)",
        lambda sd: "linear7.conv.weight" in sd or any(k.startswith("dw_conv1.") for k in sd),
        _detect_mobilefacenet,
    ),
    "mbf": TorchKeys(
        "arcface_torch mbf keys (layers.0.layers.0.weight, conv_sep.*, conv_reduce.*, fc.weight, features.*)",
        lambda sd: "conv_sep.layers.0.weight" in sd or "layers.0.layers.0.weight" in sd,
        _detect_mbf,
    ),
}


def detect_arch(
    state_dict: Mapping[str, Any],
    arch: str = "auto",
    input_size: tuple[int, int] | None = None,
    source: str = "<state_dict>",
) -> ArchInfo:
    """Recognises an InsightFace IResNet (depth from the blocks per stage) or a MobileFaceNet
    (the CASIA layout or arcface_torch's ``mbf``).

    Args:
      state_dict: key -> array (only shapes are read).
      arch: ``'auto'`` or a family of ``FAMILIES`` (``'iresnet'``, ``'mobilefacenet'``, ``'mbf'``)
        to insist on one.
      input_size: ``(H, W)``; needed only for a non-square IResNet (the fc input size fixes
        ``H/16 * W/16`` but not the aspect ratio).
    """
    if arch != "auto" and arch not in FAMILIES:
        raise ValueError(f"arch {arch!r} is not one of " + ", ".join(repr(a) for a in ("auto", *FAMILIES)))
    if arch == "auto":
        found = [family for family in FAMILIES if TORCH_KEYS[family].matches(state_dict)]
        if len(found) != 1:
            raise CheckpointMismatchError(
                f"{source}: cannot tell the architecture from the keys (first keys: {list(state_dict)[:8]}); "
                "expected " + " or ".join(TORCH_KEYS[family].described for family in FAMILIES)
            )
        arch = found[0]
    return TORCH_KEYS[arch].detect(state_dict, input_size, source)


# ----------------------------------------------------------------------------------------------
# Layout mapping


_PARAM_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "slope": "weight"}
_STAT_NAMES = {"mean": "running_mean", "var": "running_var"}


def _torch_module(path: Iterable[str]) -> str:
    return ".".join(m.group(1) + "." + m.group(2) if (m := re.fullmatch(r"(.+)_(\d+)", p)) else p for p in path)


def _torch_key(collection: str, path: tuple[str, ...]) -> str:
    names = _PARAM_NAMES if collection == "params" else _STAT_NAMES
    if path[-1] not in names:
        raise ValueError(f"no PyTorch name for flax variable {collection}/{'/'.join(path)}")
    return _torch_module(path[:-1]) + "." + names[path[-1]]


def _fc_channels(params: Mapping[str, Any], path: tuple[str, ...]) -> int | None:
    """Channels of the map flattened into an IResNet ``fc`` (from the sibling ``bn2``), else None."""
    if path != ("fc", "kernel"):
        return None
    bias = params.get("bn2", {}).get("bias")
    return None if bias is None else int(np.shape(bias)[0])


def _to_flax_layout(value: np.ndarray, leaf: str, fc_channels: int | None) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if leaf == "kernel" and value.ndim == 2:
        out_f, in_f = value.shape
        if fc_channels:
            cells = in_f // fc_channels
            return value.reshape(out_f, fc_channels, cells).transpose(2, 1, 0).reshape(in_f, out_f)
        return value.T
    return value


def _to_torch_layout(value: np.ndarray, leaf: str, fc_channels: int | None) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    if leaf == "kernel" and value.ndim == 2:
        in_f, out_f = value.shape
        if fc_channels:
            cells = in_f // fc_channels
            return value.reshape(cells, fc_channels, out_f).transpose(2, 1, 0).reshape(out_f, in_f)
        return value.T
    return value


def _torch_shape(shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
    if leaf == "kernel" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if leaf == "kernel" and len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)


def torch_to_flax(
    state_dict: Mapping[str, np.ndarray],
    template: Mapping[str, Any],
    fixed: Mapping[str, tuple[int, ...]] | None = None,
    source: str = "<state_dict>",
) -> dict[str, Any]:
    """Maps a PyTorch state_dict onto the Flax variables described by ``template``.

    Args:
      state_dict: PyTorch key -> numpy array (e.g. from :func:`jaxforget.io.torch_format.load_torch_state_dict`).
      template: Flax variables or their shapes (``jax.eval_shape(module.init, ...)``), with
        collections ``params`` and ``batch_stats``.
      fixed: PyTorch parameters the Flax model holds as constant ones (IResNet's
        ``features.weight``); they must be present and all ones.
    Returns:
      ``{'params': ..., 'batch_stats': ...}`` of float32 numpy arrays.
    Raises:
      CheckpointMismatchError listing every missing, unexpected or mis-shaped key with both shapes.
    """
    fixed = dict(fixed or {})
    problems: list[str] = []
    used: set[str] = set()
    out: dict[str, Any] = {}
    params_template = template.get("params", {})
    for collection in ("params", "batch_stats"):
        for path, leaf in flat_items(template.get(collection, {})):
            key = _torch_key(collection, path)
            want = tuple(int(s) for s in np.shape(leaf))
            flax_name = f"{collection}/{'/'.join(path)}"
            if key not in state_dict:
                problems.append(
                    f"missing key {key!r}: the model needs shape {_torch_shape(want, path[-1])} (flax {flax_name} {want})"
                )
                continue
            used.add(key)
            value = np.asarray(state_dict[key])
            fc_channels = _fc_channels(params_template, path) if collection == "params" else None
            expected_torch = _torch_shape(want, path[-1])
            if fc_channels and expected_torch[1] % fc_channels:
                fc_channels = None
            if tuple(value.shape) != expected_torch:
                problems.append(
                    f"shape mismatch for key {key!r}: checkpoint has {tuple(value.shape)}, the model expects "
                    f"{expected_torch} (flax {flax_name} {want})"
                )
                continue
            node = out.setdefault(collection, {})
            for p in path[:-1]:
                node = node.setdefault(p, {})
            node[path[-1]] = np.ascontiguousarray(_to_flax_layout(value, path[-1], fc_channels), dtype=np.float32)
    for key, shape in fixed.items():
        if key not in state_dict:
            problems.append(f"missing key {key!r}: the model needs shape {tuple(shape)} (fixed at ones)")
            continue
        used.add(key)
        value = np.asarray(state_dict[key])
        if tuple(value.shape) != tuple(shape):
            problems.append(f"shape mismatch for key {key!r}: checkpoint has {tuple(value.shape)}, the model expects {tuple(shape)}")
        elif not np.all(value == 1):
            problems.append(
                f"key {key!r} must be all ones (InsightFace fixes it and never trains it); found values in "
                f"[{float(value.min())}, {float(value.max())}]"
            )
    for key, value in state_dict.items():
        if key not in used and not key.endswith("num_batches_tracked"):
            problems.append(f"unexpected key {key!r} with shape {tuple(np.shape(value))}: the model has no such variable")
    raise_mismatch(
        problems,
        f"{source}: {len(problems)} problem(s) mapping the PyTorch state_dict onto the Flax model",
        "Check that the model config (name, width_mult, input_size, embedding_size) matches the checkpoint.",
    )
    out.setdefault("params", {})
    if "batch_stats" in template:
        out.setdefault("batch_stats", {})
    return out


def flax_to_torch(
    variables: Mapping[str, Any],
    fixed: Mapping[str, tuple[int, ...]] | None = None,
    order: Iterable[tuple[str, ...]] | None = None,
) -> "collections.OrderedDict[str, np.ndarray]":
    """Writes Flax variables as a PyTorch state_dict (numpy values) in InsightFace's layout.

    BatchNorm modules get ``weight, bias, running_mean, running_var, num_batches_tracked`` (the
    last as an int64 0); ``fixed`` parameters (IResNet's ``features.weight``) are written as ones.
    ``order`` (module paths, e.g. ``registry.module_order(bundle)``) orders the keys like PyTorch's
    registration order; without it modules come in Flax's (sorted) order.
    """
    fixed = dict(fixed or {})
    variables = jax.device_get(variables)
    params = variables.get("params", {})
    stats = variables.get("batch_stats", {})
    modules: "collections.OrderedDict[tuple[str, ...], dict[str, Any]]" = collections.OrderedDict()
    for path, value in flat_items(params):
        modules.setdefault(path[:-1], {})[("params", path[-1])] = value
    for path, value in flat_items(stats):
        modules.setdefault(path[:-1], {})[("batch_stats", path[-1])] = value
    if order is not None:
        rank = {tuple(p): i for i, p in enumerate(order)}
        modules = collections.OrderedDict(
            sorted(modules.items(), key=lambda kv: rank.get(kv[0], len(rank)))
        )
    sd: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    for mpath, leaves in modules.items():
        prefix = _torch_module(mpath)
        is_bn = ("batch_stats", "mean") in leaves
        fixed_weight = fixed.pop(prefix + ".weight", None)
        order = (
            [("params", "scale"), ("params", "bias"), ("batch_stats", "mean"), ("batch_stats", "var")]
            if is_bn
            else sorted(leaves, key=lambda cl: {"kernel": 0, "slope": 0, "bias": 1}.get(cl[1], 2))
        )
        for cl in order:
            if cl == ("params", "scale") and cl not in leaves and fixed_weight is not None:
                sd[prefix + ".weight"] = np.ones(fixed_weight, np.float32)
                continue
            if cl not in leaves:
                continue
            collection, leaf = cl
            fc_channels = _fc_channels(params, mpath + (leaf,)) if collection == "params" else None
            value = np.asarray(leaves[cl], dtype=np.float32)
            sd[_torch_key(collection, mpath + (leaf,))] = np.ascontiguousarray(_to_torch_layout(value, leaf, fc_channels))
        if is_bn:
            sd[prefix + ".num_batches_tracked"] = np.array(0, dtype=np.int64)
    for key, shape in fixed.items():
        sd[key] = np.ones(shape, np.float32)
    return sd

