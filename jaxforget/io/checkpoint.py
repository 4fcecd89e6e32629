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

from jaxforget.io.torch_format import CheckpointFormatError
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


def _restore(path: str | pathlib.Path, arrays: bool) -> dict[str, Any]:
    """The ``metadata`` (and, with ``arrays``, the ``variables`` as host numpy arrays) of a
    directory written by :func:`save_variables`. Raises ``FileNotFoundError`` when ``path`` is not
    such a directory, :class:`~jaxforget.io.torch_format.CheckpointFormatError` naming it when its
    files are corrupt or incomplete."""
    path = pathlib.Path(path).absolute()
    if not is_variables_checkpoint(path):
        raise FileNotFoundError(
            f"{path} is not a variables checkpoint (expected a directory with 'variables/' and 'metadata' "
            "written by jaxforget.io.checkpoint.save_variables or tools/convert_insightface.py)"
        )
    items = {"metadata": ocp.args.JsonRestore()}
    if arrays:
        items["variables"] = ocp.args.StandardRestore()
    try:
        with ocp.Checkpointer(_handler()) as ckptr:
            restored = ckptr.restore(path, args=ocp.args.Composite(**items))
        out = {"metadata": restored["metadata"] or {}}
        if arrays:
            out["variables"] = jax.tree_util.tree_map(np.asarray, dict(restored["variables"]))
    except Exception as e:  # noqa: BLE001 - orbax, tensorstore and json raise many types on a corrupt directory
        first = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointFormatError(
            f"{path}: corrupt or incomplete variables checkpoint ({type(e).__name__}: {first}); "
            "write it again with tools/convert_insightface.py"
        ) from e
    if not isinstance(out["metadata"], dict):
        raise CheckpointFormatError(f"{path}: its metadata is a {type(out['metadata']).__name__}, not a JSON object")
    return out


def load_metadata(path: str | pathlib.Path) -> dict[str, Any]:
    """The JSON ``metadata`` of a directory written by :func:`save_variables`, without reading
    its arrays (what ``model.init`` fixes is known before the model is built). Errors as
    :func:`load_variables`'s."""
    return dict(_restore(path, arrays=False)["metadata"])


def load_variables(path: str | pathlib.Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads a directory written by :func:`save_variables`; returns ``(variables, metadata)``.

    Arrays come back as host numpy arrays (they are saved from numpy, so orbax restores numpy;
    place them with ``jax.device_put`` as needed). Raises ``FileNotFoundError`` when ``path`` is
    not such a directory, :class:`~jaxforget.io.torch_format.CheckpointFormatError` naming it when
    its files are corrupt or incomplete.
    """
    out = _restore(path, arrays=True)
    return out["variables"], dict(out["metadata"])
