"""SalUn weight saliency (Fan et al. 2024) as an option on any method.

The mask keeps the top ``fraction`` of parameter *elements* ranked by ``|grad_w L_forget|``, where
the gradient is that of the forget loss summed over every forget batch given (SalUn's recipe: sum
the gradient over D_f, then take its magnitude). Elements outside the mask never change.

How the mask is applied: :func:`saliency_mask_transform` is the LAST link of the optax chain, so
it masks the final update -- after weight decay, momentum, Adam scaling and the learning rate --
and weight decay or momentum cannot move a masked-out element. Masked-out updates are set to
``-0.0`` (not ``+0.0``): ``p + (-0.0) == p`` bit for bit for every float ``p`` including ``-0.0``,
so ``optax.apply_updates`` leaves those elements bit-identical.

The mask lives in the transform's state (:class:`SaliencyMaskState`), i.e. in ``opt_state``, and
is therefore an input of the jitted update, not a constant baked into it; it is saved and restored
with the rest of the train state. ``init`` makes an all-True mask; put a computed one in with
:func:`set_saliency_mask` (or ``init_state(..., saliency_mask=mask)``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any


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


def compute_saliency_mask(method, ctx, state, forget_batches: Iterable[Mapping[str, Any]],
                          fraction: float, loss: str = "cosface",
                          method_cfg: Any = None) -> PyTree:
    """SalUn mask over the trained parameters from the gradient of a forget loss.

    Args:
      method: the :class:`~jaxforget.methods.base.Method` being run (decides whether the head is
        trained, in which case the mask covers ``{'params', 'head'}``).
      ctx: the :class:`~jaxforget.methods.base.Context`.
      state: a :class:`~jaxforget.methods.base.TrainState` holding the original model.
      forget_batches: forget batches ``{'image': uint8 NHWC, 'label': int32, optional 'mask'}``.
      fraction: keep this top fraction of elements (``method.salun_fraction``).
      loss: the forget loss whose gradient ranks the weights: ``'cosface'`` (CosFace of the true
        labels, the gradient Gradient Ascent follows -- the paper's CFGA choice), ``'dispersion'``
        or ``'hard_dispersion'`` (margin from ``method_cfg``).
      method_cfg: the method config (the dispersion margin; with ``trainable`` set, only the
        matching parameters are ranked and ``fraction`` is of their elements).

    The network runs with eval-mode BatchNorm; no state is changed. Returns a boolean tree shaped
    like the trained parameters, ready for ``init_state(..., saliency_mask=...)``.
    """
    from jaxforget import losses  # local import: losses does not depend on methods
    from jaxforget.methods import base

    hp = base.resolve_hparams(method_cfg, method)
    if loss not in ("cosface", "dispersion", "hard_dispersion"):
        raise ValueError(f"compute_saliency_mask: loss must be 'cosface', 'dispersion' or "
                         f"'hard_dispersion', got {loss!r}.")
    if loss == "cosface" and state.head is None:
        raise ValueError("compute_saliency_mask: loss='cosface' needs the CosFace head weights in "
                         "state.head; pass head_weights to init_state or use loss='dispersion'.")
    trainable = base.trainable_tree(method, state)

    def summed_loss(tr, images, labels, valid):
        x = base.normalize_images(images, ctx)
        variables = {"params": tr["params"]}
        if state.batch_stats is not None:
            variables["batch_stats"] = state.batch_stats
        z = ctx.apply_fn(variables, x, train=False)
        count = jnp.sum(valid.astype(jnp.float32))
        if loss == "cosface":
            head = tr.get("head", state.head)
            value = losses.margin_loss(z, head, labels, ctx.head_s, ctx.head_m, ctx.head_kind,
                                       valid)
            return value * count
        # Like CosFace above: the batch mean times the batch's valid samples, so batches of
        # different sizes weigh in proportion to their images.
        fn = losses.dispersion_loss if loss == "dispersion" else losses.hard_dispersion_loss
        return fn(z, labels, hp.margin, valid) * count

    grad_fn = jax.jit(jax.grad(summed_loss))
    total = None
    n_batches = 0
    for batch in forget_batches:
        images = jnp.asarray(batch["image"])
        labels = jnp.asarray(batch["label"], jnp.int32)
        valid = jnp.asarray(batch.get("mask", np.ones(labels.shape, bool)), bool)
        g = grad_fn(trainable, images, labels, valid)
        total = g if total is None else jax.tree.map(jnp.add, total, g)
        n_batches += 1
    if total is None:
        raise ValueError("compute_saliency_mask: forget_batches was empty; pass at least one "
                         "forget batch (method.salun_batches of them).")
    # Rank only what method.trainable lets train.
    eligible = base.trainable_leaves(hp.trainable, total) if hp.trainable else None
    return top_fraction_mask(jax.tree.map(jnp.abs, total), fraction, eligible)
