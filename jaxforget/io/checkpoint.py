"""Orbax save/load of model variables with JSON metadata (the converter's output format).

A variables checkpoint is a directory holding two orbax items: ``variables`` (the flax
``{'params', 'batch_stats'}`` tree, float32) and ``metadata`` (JSON: at least ``model``, the model
config that :func:`jaxforget.models.build_model` accepts, so the model can be rebuilt from the
directory alone).
"""

from __future__ import annotations

import pathlib
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxforget.workdir import jsonable


def _handler() -> ocp.CompositeCheckpointHandler:
    return ocp.CompositeCheckpointHandler(
        variables=ocp.StandardCheckpointHandler(), metadata=ocp.JsonCheckpointHandler()
    )


def save_variables(path: str | pathlib.Path, variables: Mapping[str, Any], metadata: Mapping[str, Any]) -> pathlib.Path:
    """Writes ``variables`` and JSON ``metadata`` to the directory ``path`` (replaced if it exists).

    Returns the absolute path written. The save is finished when the function returns.
    """
    path = pathlib.Path(path).absolute()
    tree = jax.tree_util.tree_map(np.asarray, jax.device_get(dict(variables)))
    with ocp.Checkpointer(_handler()) as ckptr:
        ckptr.save(
            path,
            args=ocp.args.Composite(
                variables=ocp.args.StandardSave(tree),
                metadata=ocp.args.JsonSave(jsonable(metadata)),
            ),
            force=True,
        )
    return path


def is_variables_checkpoint(path: str | pathlib.Path) -> bool:
    """True when ``path`` is a directory written by :func:`save_variables`."""
    p = pathlib.Path(path)
    return p.is_dir() and (p / "variables").is_dir() and (p / "metadata").exists()


def load_variables(path: str | pathlib.Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads a directory written by :func:`save_variables`; returns ``(variables, metadata)``.

    Arrays come back as host numpy arrays (they are saved from numpy, so orbax restores numpy;
    place them with ``jax.device_put`` as needed).
    """
    path = pathlib.Path(path).absolute()
    if not is_variables_checkpoint(path):
        raise FileNotFoundError(
            f"{path} is not a variables checkpoint (expected a directory with 'variables/' and 'metadata' "
            "written by jaxforget.io.checkpoint.save_variables or tools/convert_insightface.py)"
        )
    with ocp.Checkpointer(_handler()) as ckptr:
        restored = ckptr.restore(
            path,
            args=ocp.args.Composite(variables=ocp.args.StandardRestore(), metadata=ocp.args.JsonRestore()),
        )
    variables = jax.tree_util.tree_map(np.asarray, dict(restored["variables"]))
    return variables, dict(restored["metadata"] or {})
