"""BatchNorms that a deployed model's export folded away, re-created from the user's photos.

InsightFace's zoo files (``w600k_mbf.onnx``, ``w600k_r50.onnx``) were exported in eval mode:
every BatchNorm that follows a conv was folded into it, and its statistics are gone. Reading such
a graph (:mod:`.onnx_layout`) gives each of those BatchNorms the exact identity plus the conv's
bias (scale 1, mean 0, variance :data:`~.onnx_layout.UNIT_VAR`). That is the graph's function
in eval mode, but a recipe that trains with ``method.bn_mode='train'`` (the paper's, PyTorch's
``model.train()``) then normalises each of those layers by its batch statistics, a function the
model never had: its embeddings change before the first update.

:func:`recalibrate` re-creates each folded BatchNorm from statistics measured on real images
(the run's own train photos): with the per-channel mean ``mu`` and variance ``var`` of the layer's
input under the eval-mode model, it sets ``mean = mu``, ``var = var``, ``scale = sqrt(var + eps)``
and ``bias = b + mu``, so that the eval-mode function is unchanged (``scale * (y - mu) /
sqrt(var + eps) + bias = y + b``, to float rounding) and train-mode normalisation divides by the
statistics the layer really sees, as it would for the unfolded model. docs/RESULTS.md section 6
measures what each choice does to the zoo model on real faces.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxforget.models.layers import BN_EPSILON
from jaxforget.models.onnx_layout import UNIT_VAR
from jaxforget.models.registry import ModelBundle
from jaxforget.models.torch_layout import flat_items

#: ``model.folded_bn``: what a run does with BatchNorms an export folded away.
FOLDED_BN_MODES = ("recalibrate", "keep")


def folded_batchnorms(variables: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """Paths of the BatchNorm modules that are exact identities plus a bias (scale 1, mean 0,
    variance ``UNIT_VAR`` in every channel): the ones an ONNX export folded into a conv."""
    stats = dict(flat_items(variables.get("batch_stats", {})))
    params = dict(flat_items(variables.get("params", {})))
    out = []
    for path, mean in stats.items():
        if path[-1] != "mean":
            continue
        module = path[:-1]
        var, scale = stats.get(module + ("var",)), params.get(module + ("scale",))
        if (scale is not None and var is not None and np.all(np.asarray(mean) == 0)
                and np.all(np.asarray(var) == UNIT_VAR) and np.all(np.asarray(scale) == 1)):
            out.append(module)
    return out


def _input_moments(bundle: ModelBundle, modules: set[tuple[str, ...]]):
    """A jitted ``(variables, images, weights) -> {path: (sum, sum of squares, count)}`` of the
    inputs of the BatchNorms ``modules`` in the eval-mode model (``weights`` 0 drops a padded image)."""

    @jax.jit
    def moments(variables, images, weights):
        found: dict[tuple[str, ...], tuple[jax.Array, jax.Array, jax.Array]] = {}

        def record(next_fun, args, kwargs, context):
            module = context.module
            if isinstance(module, nn.BatchNorm) and context.method_name == "__call__" \
                    and tuple(module.path) in modules:
                x = args[0].astype(jnp.float32)
                w = weights.reshape((-1,) + (1,) * (x.ndim - 1))
                axes = tuple(range(x.ndim - 1))
                count = jnp.sum(weights) * (x[0].size // x.shape[-1])
                found[tuple(module.path)] = (jnp.sum(w * x, axes), jnp.sum(w * x * x, axes), count)
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(record):
            bundle.module.apply(variables, bundle.normalize(images), train=False)
        return found

    return moments


def recalibrate(bundle: ModelBundle, variables: Mapping[str, Any],
                batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The variables with every folded BatchNorm re-created from the images of ``batches``.

    Args:
      bundle: the model.
      variables: ``{'params', 'batch_stats'}``.
      batches: ``(images, mask)`` pairs: uint8 NHWC images at the model's input size and a
        boolean mask of the real (not padding) ones.
    Returns:
      ``(variables, info)``; ``info`` has ``layers`` (how many were re-created), ``images`` (how
      many photos measured them) and ``max_abs_change`` (the largest change of an embedding value
      on the first batch, eval mode: float rounding, since the function is unchanged).
    """
    folded = folded_batchnorms(variables)
    if not folded:
        return dict(variables), {"layers": 0, "images": 0, "max_abs_change": 0.0}
    moments = _input_moments(bundle, set(folded))
    sums: dict[tuple[str, ...], list[np.ndarray]] = {}
    first, images_seen = None, 0
    for images, mask in batches:
        weights = np.asarray(mask, np.float32)
        if first is None:
            first = (images, mask)
        images_seen += int(weights.sum())
        for path, values in jax.device_get(moments(variables, images, weights)).items():
            acc = sums.setdefault(path, [np.zeros_like(v, np.float64) for v in values])
            for a, v in zip(acc, values):
                a += np.asarray(v, np.float64)
    if images_seen == 0:
        raise ValueError("model.folded_bn='recalibrate' needs images to measure the BatchNorm statistics; none given")
    new = jax.tree_util.tree_map(lambda a: np.array(a, np.float32), dict(variables))
    for path, (total, squares, count) in sums.items():
        mean = total / count
        var = np.maximum(squares / count - mean * mean, 0.0)
        node_p, node_s = new["params"], new["batch_stats"]
        for p in path:
            node_p, node_s = node_p[p], node_s[p]
        node_p["scale"] = np.sqrt(var + BN_EPSILON).astype(np.float32)
        node_p["bias"] = (np.asarray(node_p["bias"], np.float64) + mean).astype(np.float32)
        node_s["mean"], node_s["var"] = mean.astype(np.float32), var.astype(np.float32)

    embed = jax.jit(lambda v, x: bundle.module.apply(v, bundle.normalize(x), train=False))
    valid = np.asarray(first[1], bool)
    change = np.abs(np.asarray(embed(new, first[0]))[valid] - np.asarray(embed(dict(variables), first[0]))[valid])
    return new, {"layers": len(sums), "images": images_seen, "max_abs_change": float(change.max())}


def restore(bundle: ModelBundle, variables: Mapping[str, Any], mode: str,
            batches: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]], source: str,
            train_modes: Sequence[str] = ()) -> tuple[Mapping[str, Any], str | None]:
    """What a run does with a checkpoint's folded BatchNorms (``model.folded_bn``): ``mode``
    'recalibrate' re-creates them from ``batches()`` (:func:`recalibrate`), 'keep' leaves them
    and warns when a recipe normalises them by batch statistics (``train_modes``: the config
    fields that do, e.g. ``["method.bn_mode='train'"]``). Returns the variables and the log line
    saying what was done (None when nothing was folded); ``source`` names the checkpoint."""
    folded = folded_batchnorms(variables)
    if not folded:
        return variables, None
    head = f"[model] {source}: {len(folded)} BatchNorms were folded into their convs by the export"
    if mode == "keep":
        warning = (f"; WARNING: {', '.join(train_modes)} normalises them by batch statistics, a function the model "
                   "never had (docs/RESULTS.md section 7); use model.folded_bn='recalibrate' or bn_mode='frozen'"
                   if train_modes else "")
        return variables, f"{head} and are kept as identities (model.folded_bn='keep'){warning}"
    t0 = time.perf_counter()
    new, info = recalibrate(bundle, variables, batches())
    return new, (f"{head}; re-created them from the statistics of {info['images']} train photos in "
                 f"{time.perf_counter() - t0:.0f}s (model.folded_bn='recalibrate': the same function, largest "
                 f"embedding change {info['max_abs_change']:.1e}; train-mode BatchNorm now divides by real statistics)")
