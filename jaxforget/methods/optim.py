"""The optimiser: learning-rate schedule, optax chain, trainable-leaf masks, SalUn's mask.

What trains (every method):

* the whole backbone (every ``params`` leaf, BatchNorm scales/biases and PReLU slopes included),
  or, with ``method.trainable`` (a regular expression), only the leaves whose '/'-joined path
  matches it (e.g. ``'linear1/'``: MobileFaceNet's output layer). Frozen leaves get no gradient
  (``stop_gradient`` via :func:`frozen_where`, so XLA drops their backward pass), a final update
  of ``-0.0`` (:func:`freeze_transform`; bit-identical after any weight decay or momentum) and, in
  ``bn_mode='train'``, unchanged running statistics;
* BatchNorm running statistics: updated in train mode (``method.bn_mode='train'``, like PyTorch's
  ``model.train()``: each forward pass of the trained model moves them), left unchanged with
  eval-mode normalisation (``bn_mode='frozen'``), or left unchanged while the training forward
  passes normalise with their batch statistics (``bn_mode='batch'``: the parameters follow the
  'train' trajectory exactly; the deployed model keeps the original's running statistics
  instead of ones drifted towards the forget batches);
* the CosFace head (``TrainState.head``, class weights ``(C, d)``): frozen, except for the methods
  that train it (``finetune`` and ``retrain``, :attr:`Method.trains_head`).

The optax chain, from ``method.*`` config fields (:class:`~jaxforget.methods.hparams.HParams`)::

    clip_by_global_norm(clip_norm)          if clip_norm > 0
    sgd:   add_decayed_weights(wd) -> trace(momentum, nesterov) -> -lr(t)   (PyTorch SGD, L2 in grad)
    adam:  add_decayed_weights(wd) -> scale_by_adam -> -lr(t)               (PyTorch Adam, L2 in grad)
    adamw: scale_by_adam -> add_decayed_weights(wd) -> -lr(t)              (decoupled decay)
    freeze of the leaves ``trainable`` excludes   if trainable != ''
    SalUn mask of the final update          if salun_fraction > 0

``lr(t)``: ``schedule`` constant | cosine | linear | step (x ``step_factor`` at each fraction of
``steps`` in ``step_boundaries``), after a linear warm-up of ``warmup_steps``.

SalUn weight saliency (Fan et al. 2024) as an option on any method: the mask keeps the top
``fraction`` of parameter *elements* (:func:`top_fraction_mask`) ranked by ``|grad_w L_forget|``
(the ranking itself is :func:`jaxforget.methods.saliency.compute_saliency_mask`). Elements outside
the mask never change. :func:`saliency_mask_transform` is the LAST link of the chain, so it masks
the final update -- after weight decay, momentum, Adam scaling and the learning rate -- and weight
decay or momentum cannot move a masked-out element. Masked-out updates are set to ``-0.0`` (not
``+0.0``): ``p + (-0.0) == p`` bit for bit for every float ``p`` including ``-0.0``, so
``optax.apply_updates`` leaves those elements bit-identical. The mask lives in the transform's
state (:class:`SaliencyMaskState`), i.e. in ``opt_state``, and is therefore an input of the jitted
update, not a constant baked into it; it is saved and restored with the rest of the train state.
``init`` makes an all-True mask; put a computed one in with :func:`set_saliency_mask` (or
``init_state(..., saliency_mask=mask)``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxforget.methods.hparams import HParams

PyTree = Any


def make_schedule(hp: HParams) -> optax.Schedule:
    """The learning-rate schedule of :class:`HParams` (warm-up, then constant/cosine/linear/step)."""
    warm = min(hp.warmup_steps, hp.steps)
    rest = max(hp.steps - warm, 1)
    if hp.schedule == "constant":
        main = optax.constant_schedule(hp.lr)
    elif hp.schedule == "cosine":
        main = optax.cosine_decay_schedule(hp.lr, rest)
    elif hp.schedule == "linear":
        main = optax.linear_schedule(hp.lr, 0.0, rest)
    else:
        # Boundaries are fractions of all steps; the main schedule counts from the end of the
        # warm-up. A boundary inside the warm-up applies from its end; boundaries that round to
        # the same step multiply.
        scales: dict[int, float] = {}
        for f in hp.step_boundaries:
            b = max(int(round(f * hp.steps)) - warm, 0)
            scales[b] = scales.get(b, 1.0) * hp.step_factor
        main = optax.piecewise_constant_schedule(hp.lr * scales.pop(0, 1.0), scales)
    if warm == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, hp.lr, warm), main], [warm])


def make_optimizer(hp: HParams) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax chain described in the module docstring, and its schedule."""
    schedule = make_schedule(hp)
    links = []
    if hp.clip_norm > 0:
        links.append(optax.clip_by_global_norm(hp.clip_norm))
    if hp.optimizer == "sgd":
        if hp.weight_decay > 0:
            links.append(optax.add_decayed_weights(hp.weight_decay))
        if hp.momentum > 0:
            links.append(optax.trace(decay=hp.momentum, nesterov=hp.nesterov))
    elif hp.optimizer == "adam":
        if hp.weight_decay > 0:
            links.append(optax.add_decayed_weights(hp.weight_decay))
        links.append(optax.scale_by_adam())
    else:  # adamw
        links.append(optax.scale_by_adam())
        if hp.weight_decay > 0:
            links.append(optax.add_decayed_weights(hp.weight_decay))
    links.append(optax.scale_by_learning_rate(schedule))
    if hp.trainable:
        links.append(freeze_transform(hp.trainable))
    if hp.salun_fraction > 0:
        links.append(saliency_mask_transform())
    return optax.chain(*links), schedule


def _path_str(path: tuple[Any, ...]) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def trainable_mask(pattern: str, tree: PyTree) -> PyTree:
    """Python bools shaped like ``tree`` (backbone ``params`` or ``batch_stats``): True where the
    leaf's '/'-joined path (``'linear1/conv/kernel'``) contains a match of ``pattern``."""
    regex = re.compile(pattern)
    return jax.tree_util.tree_map_with_path(lambda p, _: bool(regex.search(_path_str(p))), tree)


def trainable_leaves(pattern: str, tree: Mapping[str, PyTree]) -> dict[str, PyTree]:
    """:func:`trainable_mask` over a :func:`trainable_tree`-shaped dict: the backbone ``'params'``
    follow ``pattern``; the head, when trained, always trains."""
    return {k: (trainable_mask(pattern, v) if k == "params" else jax.tree.map(lambda _: True, v))
            for k, v in tree.items()}


def check_trainable(pattern: str, params: PyTree) -> None:
    """Raises when ``method.trainable`` matches no backbone parameter (the run would train
    nothing); the message lists the model's top-level modules."""
    if pattern and not any(jax.tree.leaves(trainable_mask(pattern, params))):
        example = _path_str(jax.tree_util.tree_leaves_with_path(params)[-1][0])
        raise ValueError(f"config method.trainable={pattern!r} matches no backbone parameter. "
                         f"Paths look like '{example}'; top-level modules: "
                         f"{', '.join(sorted(params))}.")


def freeze_transform(pattern: str) -> optax.GradientTransformation:
    """Sets the final update of every backbone leaf that ``pattern`` does not match to ``-0.0``
    (``p + -0.0 == p`` bit for bit); the head, when trained, is never frozen by it."""

    def update_fn(updates, state, params=None):
        del params
        keep = trainable_leaves(pattern, updates)
        return jax.tree.map(lambda u, m: u if m else jnp.full_like(u, -0.0), updates, keep), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def frozen_where(pattern: str, new: PyTree, old: PyTree) -> PyTree:
    """``new`` where ``pattern`` matches the leaf's path, else ``old`` (no-op for '')."""
    if not pattern or new is None:
        return new
    return jax.tree.map(lambda m, a, b: a if m else jax.lax.stop_gradient(b),
                        trainable_mask(pattern, new), new, old)


# SalUn's mask of the final update.


class SaliencyMaskState(NamedTuple):
    """Optax state holding one boolean array per parameter leaf (True: the element may change)."""

    saliency_mask: PyTree


def saliency_mask_transform() -> optax.GradientTransformation:
    """Multiplies the final updates element-wise by the mask held in its own state."""

    def init_fn(params):
        return SaliencyMaskState(jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params))

    def update_fn(updates, state, params=None):
        del params
        masked = jax.tree.map(
            lambda u, m: jnp.where(m, u, jnp.asarray(-0.0, u.dtype)), updates, state.saliency_mask)
        return masked, state

    return optax.GradientTransformation(init_fn, update_fn)


def get_saliency_mask(opt_state: PyTree) -> PyTree | None:
    """The mask stored in ``opt_state`` (None when the chain has no SalUn link)."""
    found = optax.tree_utils.tree_get(opt_state, "saliency_mask", default=None)
    return found


def set_saliency_mask(opt_state: PyTree, mask: PyTree) -> PyTree:
    """Returns ``opt_state`` with its SalUn mask replaced by ``mask`` (same tree and shapes)."""
    current = get_saliency_mask(opt_state)
    if current is None:
        raise ValueError(
            "set_saliency_mask: this optimizer state has no SalUn mask; set method.salun_fraction "
            "> 0 in the config so init_state adds the SalUn link to the optax chain.")
    cur_struct = jax.tree.structure(current)
    new_struct = jax.tree.structure(mask)
    if cur_struct != new_struct:
        raise ValueError(
            "set_saliency_mask: the mask's tree does not match the trained parameters' tree.\n"
            f"  expected: {cur_struct}\n  got:      {new_struct}\n"
            "Pass the mask returned by compute_saliency_mask for the same model.")
    for a, b in zip(jax.tree.leaves(current), jax.tree.leaves(mask)):
        if jnp.shape(a) != jnp.shape(b):
            raise ValueError(f"set_saliency_mask: a mask leaf has shape {jnp.shape(b)}, the "
                             f"parameter has {jnp.shape(a)}.")
    # A copy: the state is donated to the update step, the caller's mask must stay valid.
    mask = jax.tree.map(lambda m: jnp.array(m, bool, copy=True), mask)
    return optax.tree_utils.tree_set(opt_state, saliency_mask=mask)


def top_fraction_mask(scores: PyTree, fraction: float, eligible: PyTree | None = None) -> PyTree:
    """Boolean tree marking the top ``fraction`` of all elements of ``scores`` (global ranking).

    Exactly ``ceil(fraction * n)`` elements are kept, ties broken by position (stable order), so
    the kept fraction is exact even when many scores are equal (e.g. zero gradients).
    ``eligible``: optional tree of Python bools shaped like ``scores``' leaves; only the elements
    of eligible leaves are ranked and counted in ``n`` (the others are never kept).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"SalUn: salun_fraction must be in (0, 1], got {fraction}.")
    leaves, treedef = jax.tree.flatten(scores)
    ok = [True] * len(leaves) if eligible is None else jax.tree.leaves(eligible)
    flat = jnp.concatenate([jnp.ravel(jnp.asarray(x, jnp.float32) if e else
                                      jnp.full(jnp.shape(x), -jnp.inf, jnp.float32))
                            for x, e in zip(leaves, ok)])
    n = sum(int(np.size(x)) for x, e in zip(leaves, ok) if e)
    k = int(min(n, max(1, int(np.ceil(fraction * n)))))
    if k == flat.shape[0]:
        return jax.tree.map(lambda x: jnp.ones(jnp.shape(x), bool), scores)
    order = jnp.argsort(-flat, stable=True)
    keep = jnp.zeros(flat.shape, bool).at[order[:k]].set(True)
    out, start = [], 0
    for x in leaves:
        size = int(np.prod(jnp.shape(x)))
        out.append(keep[start:start + size].reshape(jnp.shape(x)))
        start += size
    return jax.tree.unflatten(treedef, out)
