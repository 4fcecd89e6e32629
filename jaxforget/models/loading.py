"""Pretrained backbones: ``model.init`` (orbax directory or PyTorch file) -> bundle and variables,
and whole-checkpoint conversions between PyTorch files and orbax variables directories.

Reading and writing the files is :mod:`jaxforget.io`'s job, building the model
:mod:`.registry`'s, and mapping the layouts :mod:`.torch_layout`'s; this module strings them
together for ``model.init``, ``tools/convert_insightface.py`` and the runner's ``.pth`` export.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any, Mapping

import jax
import numpy as np

from jaxforget.io import checkpoint, onnx_format, torch_format
from jaxforget.models import onnx_export, onnx_layout
from jaxforget.models.registry import (
    ModelBundle,
    abstract_variables,
    build_model,
    canonical_name,
    config_field,
    family_of,
    init_variables,
    module_order,
)
from jaxforget.models.torch_layout import (
    ArchInfo,
    CheckpointMismatchError,
    detect_arch,
    flat_items,
    flax_to_torch,
    raise_mismatch,
    torch_to_flax,
)

#: What a checkpoint fixes (its architecture): taken from ``model.init`` when the config leaves
#: them unset (``None``, ``''`` or ``'auto'``); a value the config sets must agree with it.
FIXED_FIELDS = ("name", "width_mult", "input_size", "embedding_size")
_MODEL_FIELDS = FIXED_FIELDS + ("dtype", "dropout")
#: ``model.name='auto'`` without ``model.init``: the paper's backbone.
DEFAULT_MODEL = "iresnet50"


class ModelConfigError(ValueError):
    """Model fields set in the config disagree with what ``model.init`` fixes (one line naming
    each field and the value to use)."""


def count_elements(tree: Any) -> int:
    """Total number of array elements in a pytree (arrays or ShapeDtypeStructs)."""
    return int(sum(math.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(tree)))


def _check_against(variables: Mapping[str, Any], bundle: ModelBundle, source: str) -> dict[str, Any]:
    """Checks stored Flax variables against the bundle's shapes; returns them as float32 numpy."""
    expected = dict(flat_items(abstract_variables(bundle)))
    got = dict(flat_items(variables))
    problems = []
    for k in sorted(expected.keys() | got.keys(), key=lambda k: (k[0] != "params", k)):
        name = "/".join(k)
        if k not in got:
            problems.append(f"missing variable {name}: the model expects shape {tuple(expected[k].shape)}")
        elif k not in expected:
            problems.append(f"unexpected variable {name} with shape {tuple(np.shape(got[k]))}")
        elif tuple(np.shape(got[k])) != tuple(expected[k].shape):
            problems.append(
                f"shape mismatch for {name}: checkpoint has {tuple(np.shape(got[k]))}, the model expects "
                f"{tuple(expected[k].shape)}"
            )
    raise_mismatch(
        problems,
        f"{source}: {len(problems)} variable(s) do not fit model {bundle.config()}",
        "Leave model fields empty to use the checkpoint's stored config, or fix the config.",
    )
    return {c: jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), dict(t)) for c, t in variables.items()}


def _unset(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto"))


def _same(key: str, a: Any, b: Any) -> bool:
    if key == "name":
        return canonical_name(a) == canonical_name(b)
    if key == "input_size":
        return tuple(int(v) for v in a) == tuple(int(v) for v in b)
    if key == "width_mult":
        return math.isclose(float(a), float(b), rel_tol=1e-6)
    return int(a) == int(b)


def _show(key: str, value: Any) -> str:
    if key == "input_size":
        return f"({int(value[0])}, {int(value[1])})"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _flag(key: str, value: Any) -> str:
    """``--config.model.<key>=<value>`` as a shell takes it."""
    shown = _show(key, value)
    return f"--config.model.{key}=" + (f"'{shown}'" if key == "input_size" else shown)


def resolve_model_config(model_cfg: Any, fixed: Mapping[str, Any] | None = None, source: str = "") -> dict[str, Any]:
    """The config to build: ``model_cfg``'s fields, with each of :data:`FIXED_FIELDS` it leaves
    unset taken from ``fixed`` (what the checkpoint ``source`` fixes), or without a checkpoint from
    the family's row of ``FAMILIES`` (``name`` 'auto': :data:`DEFAULT_MODEL`). A set field that
    disagrees with ``fixed`` is a :class:`ModelConfigError` naming every such field and its value.
    """
    merged = {k: config_field(model_cfg, k, None) for k in _MODEL_FIELDS}
    defaults_only = fixed is None
    if defaults_only:
        if _unset(merged["name"]):
            merged["name"] = DEFAULT_MODEL
        family = family_of(merged["name"])
        fixed = {"width_mult": 1.0, "input_size": family.input_size, "embedding_size": family.embedding_size}
    conflicts = []
    for key in FIXED_FIELDS:
        if key not in fixed:
            continue
        if _unset(merged[key]):
            merged[key] = fixed[key]
        elif not defaults_only and not _same(key, merged[key], fixed[key]):
            conflicts.append(key)
    if conflicts:
        raise ModelConfigError(
            f"model.init={source} fixes "
            + "; ".join(f"model.{k}={_show(k, fixed[k])} (the config sets {_show(k, merged[k])})" for k in conflicts)
            + ": set " + " ".join(_flag(k, fixed[k]) for k in conflicts)
            + ", or leave " + ("it" if len(conflicts) == 1 else "them") + " unset to take the checkpoint's"
        )
    for key in ("dtype", "dropout"):
        if merged[key] is None and fixed.get(key) is not None:
            merged[key] = fixed[key]
    merged["name"] = canonical_name(merged["name"])
    merged["input_size"] = tuple(int(v) for v in merged["input_size"])
    return {k: v for k, v in merged.items() if v is not None}


def read_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """A checkpoint file as an InsightFace PyTorch state_dict: ``.onnx`` through
    :func:`onnx_layout.onnx_state_dict`, anything else as a PyTorch file."""
    if pathlib.Path(path).suffix.lower() == ".onnx":
        return onnx_layout.onnx_state_dict(path)
    return torch_format.load_torch_state_dict(path)


def _init_path(init: str) -> pathlib.Path:
    path = pathlib.Path(init).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model.init {init!r} does not exist; give an orbax directory or a .pth/.ckpt/.onnx file")
    return path


def _stored_model(metadata: Mapping[str, Any], path: pathlib.Path) -> Mapping[str, Any]:
    stored = metadata.get("model")
    if not isinstance(stored, Mapping):
        raise ValueError(f"{path}: metadata has no 'model' config; was it written by tools/convert_insightface.py?")
    return stored


def _detect(state_dict: Mapping[str, Any], model_cfg: Any, source: str) -> ArchInfo:
    """The architecture of a PyTorch state_dict; the config's input size (when set) only picks the
    aspect ratio of a non-square IResNet, a size the checkpoint cannot take is left to
    :func:`resolve_model_config` to report."""
    size = config_field(model_cfg, "input_size", None)
    if _unset(size):  # an ONNX graph's static input size, when it has one
        return detect_arch(state_dict, "auto", getattr(state_dict, "input_size", None), source=source)
    try:
        return detect_arch(state_dict, "auto", tuple(int(v) for v in size), source=source)
    except CheckpointMismatchError as e:
        try:
            return detect_arch(state_dict, "auto", None, source=source)
        except CheckpointMismatchError:
            raise e from None


def model_config(model_cfg: Any) -> dict[str, Any]:
    """What ``model_cfg`` builds, without building it: :func:`resolve_model_config` against what
    ``model_cfg.init`` fixes (an orbax directory's stored config, read without its arrays, or the
    architecture of a PyTorch file's keys and shapes). For the checks made before any work."""
    init = str(config_field(model_cfg, "init", "") or "")
    if not init:
        return resolve_model_config(model_cfg)
    path = _init_path(init)
    if path.is_dir():
        return resolve_model_config(model_cfg, _stored_model(checkpoint.load_metadata(path), path), init)
    info = _detect(read_state_dict(path), model_cfg, str(path))
    return resolve_model_config(model_cfg, info.model_config(), init)


def load_pretrained(model_cfg: Any) -> tuple[ModelBundle, dict[str, Any]]:
    """Builds the model and its variables from ``model_cfg.init``.

    * empty ``init``: random initialisation with ``model_cfg.seed`` (default 0);
    * a directory written by ``tools/convert_insightface.py`` / ``save_variables``: only its
      ``params`` and ``batch_stats`` are returned (other stored entries are ignored);
    * a PyTorch ``.pth`` / ``.pt`` / ``.ckpt``: read safely and converted on the fly; IResNet vs
      MobileFaceNet (and the depth) are detected from the keys.

    The fields the checkpoint fixes (:data:`FIXED_FIELDS`) come from it where ``model_cfg`` leaves
    them unset (:func:`resolve_model_config`; a disagreeing one is a :class:`ModelConfigError`).
    Raises a ``CheckpointMismatchError`` naming every key/shape that disagrees with the model.
    """
    init = str(config_field(model_cfg, "init", "") or "")
    if not init:
        bundle = build_model(resolve_model_config(model_cfg))
        return bundle, init_variables(bundle, int(config_field(model_cfg, "seed", 0)))

    path = _init_path(init)
    if path.is_dir():
        variables, metadata = checkpoint.load_variables(path)
        bundle = build_model(resolve_model_config(model_cfg, _stored_model(metadata, path), init))
        # Other entries a runner may store beside the backbone (e.g. a CosFace 'head') are not
        # backbone variables; only the flax collections are loaded.
        backbone = {c: variables[c] for c in ("params", "batch_stats") if c in variables}
        return bundle, _check_against(backbone, bundle, str(path))

    state_dict = read_state_dict(path)
    info = _detect(state_dict, model_cfg, str(path))
    bundle = build_model(resolve_model_config(model_cfg, info.model_config(), init))
    variables = torch_to_flax(state_dict, abstract_variables(bundle), bundle.fixed_parameters(), str(path))
    return bundle, variables


def torch_state_dict(bundle: ModelBundle, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The bundle's variables as an InsightFace-layout PyTorch state_dict (numpy values, keys in
    PyTorch's registration order, fixed parameters written as ones)."""
    return flax_to_torch(variables, bundle.fixed_parameters(), module_order(bundle))


def save_torch_backbone(bundle: ModelBundle, variables: Mapping[str, Any], path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Writes :func:`torch_state_dict` to ``path`` with ``torch.save`` (needs PyTorch); returns it."""
    state_dict = torch_state_dict(bundle, variables)
    torch_format.save_torch_state_dict(state_dict, path)
    return state_dict


def convert_torch_checkpoint(
    input_path: str | pathlib.Path,
    output_dir: str | pathlib.Path,
    arch: str = "auto",
    input_size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Converts a PyTorch IResNet/MobileFaceNet checkpoint into an orbax variables directory.

    Returns a summary: ``arch``, ``depth``, ``model`` (config), ``keys_converted``,
    ``keys_skipped`` (``num_batches_tracked`` and fixed parameters), ``param_elements``,
    ``fixed_elements``, ``stat_elements``, ``output``.
    """
    source = str(input_path)
    state_dict = read_state_dict(input_path)
    info = detect_arch(state_dict, arch, input_size or getattr(state_dict, "input_size", None), source=source)
    bundle = build_model(info.model_config())
    fixed = bundle.fixed_parameters()
    variables = torch_to_flax(state_dict, abstract_variables(bundle), fixed, source)
    written = checkpoint.save_variables(
        output_dir,
        variables,
        {"model": bundle.config(), "source": {"path": str(pathlib.Path(input_path).absolute()),
                                              "format": "onnx" if source.lower().endswith(".onnx") else "pytorch"}},
    )
    skipped = [k for k in state_dict if k.endswith("num_batches_tracked") or k in fixed]
    return {
        "arch": info.family,
        "name": info.name,
        "depth": info.depth,
        "model": bundle.config(),
        "keys_in_checkpoint": len(state_dict),
        "keys_converted": len(state_dict) - len(skipped),
        "keys_skipped": len(skipped),
        "param_elements": count_elements(variables["params"]),
        "fixed_elements": sum(math.prod(s) for s in fixed.values()),
        "stat_elements": count_elements(variables.get("batch_stats", {})),
        "output": str(written),
    }


def onnx_io(init: str | pathlib.Path) -> dict[str, str]:
    """The input and output names an export must keep to replace ``model.init`` (an ONNX file's,
    :func:`onnx_export.io_names`); ``{}`` for any other checkpoint (the export's defaults)."""
    init = str(init or "")
    return onnx_export.io_names(init) if init.lower().endswith(".onnx") else {}


def _exportable(variables_dir: str | pathlib.Path) -> tuple[ModelBundle, dict[str, Any], Mapping[str, Any]]:
    """The bundle, checked variables and metadata of an orbax variables directory, for an export."""
    variables, metadata = checkpoint.load_variables(variables_dir)
    model_cfg = metadata.get("model")
    if not isinstance(model_cfg, Mapping):
        raise ValueError(f"{variables_dir}: metadata has no 'model' config; cannot tell which layout to write")
    bundle = build_model(model_cfg)
    backbone = {c: variables[c] for c in ("params", "batch_stats") if c in variables}
    return bundle, _check_against(backbone, bundle, str(variables_dir)), metadata


def export_torch_checkpoint(variables_dir: str | pathlib.Path, output_path: str | pathlib.Path) -> dict[str, Any]:
    """Writes an orbax variables directory as a bare PyTorch state_dict ``.pth`` (InsightFace layout)."""
    bundle, variables, _ = _exportable(variables_dir)
    state_dict = save_torch_backbone(bundle, variables, output_path)
    return {
        "name": bundle.name,
        "model": bundle.config(),
        "keys_written": len(state_dict),
        "param_elements": sum(v.size for k, v in state_dict.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))),
        "output": str(pathlib.Path(output_path).absolute()),
    }


def export_onnx_checkpoint(variables_dir: str | pathlib.Path, output_path: str | pathlib.Path,
                           check: bool = True) -> dict[str, Any]:
    """Writes an orbax variables directory as an ONNX model InsightFace's loader runs
    (:func:`onnx_export.onnx_model`, with the input and output names of the ONNX file the model
    came from when its metadata records them: ``onnx_io``); ``check`` compares onnxruntime with
    the Flax model on two random images (``parity``: max abs differences, raw and L2-normalised)."""
    bundle, variables, metadata = _exportable(variables_dir)
    names = dict(metadata.get("onnx_io") or {})
    model = onnx_export.onnx_model(bundle, variables, **names)
    written = onnx_format.save_onnx(model, output_path)
    summary = {
        "name": bundle.name,
        "model": bundle.config(),
        "nodes": len(model.graph.node),
        "initializer_elements": sum(math.prod(t.dims) for t in model.graph.initializer),
        "input": f"{names.get('input_name', onnx_layout.ONNX_INPUT)} float32 (batch, 3, {bundle.input_size[0]}, "
                 f"{bundle.input_size[1]}), "
                 f"RGB (pixel - {onnx_layout.ONNX_PIXEL_MEAN}) / {onnx_layout.ONNX_PIXEL_STD}",
        "output": str(pathlib.Path(written).absolute()),
    }
    if check:
        summary["parity"] = onnx_export.onnx_parity(bundle, variables, written)
    return summary
