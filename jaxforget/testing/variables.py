"""Random Flax variables for conversion tests, and the relative error used to compare outputs."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxforget.models import ModelBundle, abstract_variables, build_model


def random_variables(model_cfg: Any, seed: int) -> tuple[ModelBundle, dict[str, Any]]:
    """The bundle of ``model_cfg`` and random variables for it: host numpy float32, no compilation,
    with non-trivial running statistics (scales and variances in [0.5, 1.5], PReLU slopes in
    [0, 0.5], He-normal kernels)."""
    bundle = build_model(model_cfg)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            return rng.normal(0, (2.0 / fan_in) ** 0.5, shape)
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, shape)
        if name == "slope":
            return rng.uniform(0.0, 0.5, shape)
        return rng.normal(0, 0.2, shape)  # bias, mean

    shapes = abstract_variables(bundle)
    variables = jax.tree_util.tree_map_with_path(lambda p, l: draw(p, l).astype(np.float32), shapes)
    return bundle, dict(variables)


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """``||a - b|| / ||b||`` in float64."""
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(np.asarray(b, np.float64)))
