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

from jaxforget.io import checkpoint, torch_format
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
from jaxforget.models.torch_layout import detect_arch, flat_items, flax_to_torch, raise_mismatch, torch_to_flax

_MODEL_FIELDS = ("name", "width_mult", "input_size", "embedding_size", "dtype", "dropout")


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


def _merge_cfg(model_cfg: Any, stored: Mapping[str, Any]) -> dict[str, Any]:
    """Fields given in ``model_cfg`` win over the checkpoint's; the architecture must agree."""
    merged = dict(stored)
    for key in _MODEL_FIELDS:
        value = config_field(model_cfg, key, None)
        if value not in (None, "", "auto"):
            merged[key] = value
    return merged


def load_pretrained(model_cfg: Any) -> tuple[ModelBundle, dict[str, Any]]:
    """Builds the model and its variables from ``model_cfg.init``.

    * empty ``init``: random initialisation with ``model_cfg.seed`` (default 0);
    * a directory written by ``tools/convert_insightface.py`` / ``save_variables``: the stored model
      config fills any field ``model_cfg`` leaves empty (``name`` may be ``''`` or ``'auto'``); only
      its ``params`` and ``batch_stats`` are returned (other stored entries are ignored);
    * a PyTorch ``.pth`` / ``.pt`` / ``.ckpt``: read safely and converted on the fly; IResNet vs
      MobileFaceNet (and the depth) are detected from the keys.

    Raises a ``CheckpointMismatchError`` naming every key/shape that disagrees with the config.
    """
    init = str(config_field(model_cfg, "init", "") or "")
    if not init:
        bundle = build_model(model_cfg)
        return bundle, init_variables(bundle, int(config_field(model_cfg, "seed", 0)))

    path = pathlib.Path(init).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model.init {init!r} does not exist; give an orbax directory or a .pth/.ckpt file")
    if path.is_dir():
        variables, metadata = checkpoint.load_variables(path)
        stored = metadata.get("model")
        if not isinstance(stored, Mapping):
            raise ValueError(f"{path}: metadata has no 'model' config; was it written by tools/convert_insightface.py?")
        merged = _merge_cfg(model_cfg, stored)
        if canonical_name(merged["name"]) != canonical_name(stored["name"]):
            raise ValueError(
                f"{path}: holds a {stored['name']} but model.name is {merged['name']!r}; set model.name to "
                f"{stored['name']!r} or leave it empty"
            )
        bundle = build_model(merged)
        # Other entries a runner may store beside the backbone (e.g. a CosFace 'head') are not
        # backbone variables; only the flax collections are loaded.
        backbone = {c: variables[c] for c in ("params", "batch_stats") if c in variables}
        return bundle, _check_against(backbone, bundle, str(path))

    state_dict = torch_format.load_torch_state_dict(path)
    name = config_field(model_cfg, "name", "")
    arch = "auto"
    if name not in ("", "auto"):
        arch = family_of(name).name
    size = config_field(model_cfg, "input_size", None)
    info = detect_arch(state_dict, arch, tuple(size) if size else None, source=str(path))
    merged = _merge_cfg(model_cfg, info.model_config())
    if canonical_name(merged["name"]) != info.name:
        raise ValueError(f"{path}: holds a {info.name} but model.name is {merged['name']!r}")
    bundle = build_model(merged)
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
    state_dict = torch_format.load_torch_state_dict(input_path)
    info = detect_arch(state_dict, arch, input_size, source=source)
    bundle = build_model(info.model_config())
    fixed = bundle.fixed_parameters()
    variables = torch_to_flax(state_dict, abstract_variables(bundle), fixed, source)
    written = checkpoint.save_variables(
        output_dir,
        variables,
        {"model": bundle.config(), "source": {"path": str(pathlib.Path(input_path).absolute()), "format": "pytorch"}},
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


def export_torch_checkpoint(variables_dir: str | pathlib.Path, output_path: str | pathlib.Path) -> dict[str, Any]:
    """Writes an orbax variables directory as a bare PyTorch state_dict ``.pth`` (InsightFace layout)."""
    variables, metadata = checkpoint.load_variables(variables_dir)
    model_cfg = metadata.get("model")
    if not isinstance(model_cfg, Mapping):
        raise ValueError(f"{variables_dir}: metadata has no 'model' config; cannot tell which layout to write")
    bundle = build_model(model_cfg)
    _check_against(variables, bundle, str(variables_dir))
    state_dict = save_torch_backbone(bundle, variables, output_path)
    return {
        "name": bundle.name,
        "model": bundle.config(),
        "keys_written": len(state_dict),
        "param_elements": sum(v.size for k, v in state_dict.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))),
        "output": str(pathlib.Path(output_path).absolute()),
    }
