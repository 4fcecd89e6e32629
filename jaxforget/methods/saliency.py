"""SalUn's ranking (Fan et al. 2024): which weights may change, from a forget-loss gradient.

:func:`compute_saliency_mask` sums the gradient of a forget loss over the forget batches given
(SalUn's recipe: sum the gradient over D_f, then take its magnitude) and keeps the top
``fraction`` of parameter elements. How the mask is applied during training (the last link of the
optax chain) is in :mod:`jaxforget.methods.optim`; the trainer
(:func:`jaxforget.trainer.unlearn`) calls this once, with the method's ``salun_loss``, before the
first step of a run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxforget import losses
from jaxforget.methods.hparams import resolve_hparams
from jaxforget.methods.optim import top_fraction_mask, trainable_leaves
from jaxforget.methods.record import SALUN_LOSSES
from jaxforget.methods.state import trainable_tree
from jaxforget.methods.step import normalize_images

PyTree = Any


def compute_saliency_mask(method, ctx, state, forget_batches: Iterable[Mapping[str, Any]],
                          fraction: float, loss: str | None = None,
                          method_cfg: Any = None) -> PyTree:
    """SalUn mask over the trained parameters from the gradient of a forget loss.

    Args:
      method: the :class:`~jaxforget.methods.record.Method` being run (decides whether the head
        is trained, in which case the mask covers ``{'params', 'head'}``, and the default loss).
      ctx: the :class:`~jaxforget.methods.state.Context`.
      state: a :class:`~jaxforget.methods.state.TrainState` holding the original model.
      forget_batches: forget batches ``{'image': uint8 NHWC, 'label': int32, optional 'mask'}``.
      fraction: keep this top fraction of elements (``method.salun_fraction``).
      loss: the forget loss whose gradient ranks the weights: ``'cosface'`` (CosFace of the true
        labels, the gradient Gradient Ascent follows -- the paper's CFGA choice), ``'dispersion'``
        or ``'hard_dispersion'`` (margin from ``method_cfg``); default (None): the method's own
        :attr:`~jaxforget.methods.record.Method.salun_loss`, which is what the trainer uses.
      method_cfg: the method config (the dispersion margin; with ``trainable`` set, only the
        matching parameters are ranked and ``fraction`` is of their elements).

    The network runs with eval-mode BatchNorm; no state is changed. Returns a boolean tree shaped
    like the trained parameters, ready for ``init_state(..., saliency_mask=...)``.
    """
    hp = resolve_hparams(method_cfg, method)
    loss = method.salun_loss if loss is None else loss
    if loss not in SALUN_LOSSES:
        raise ValueError(f"compute_saliency_mask: loss must be 'cosface', 'dispersion' or "
                         f"'hard_dispersion', got {loss!r}.")
    if loss == "cosface" and state.head is None:
        raise ValueError("compute_saliency_mask: loss='cosface' needs the CosFace head weights in "
                         "state.head; pass head_weights to init_state or use loss='dispersion'.")
    trainable = trainable_tree(method, state)

    def summed_loss(tr, images, labels, valid):
        x = normalize_images(images, ctx)
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
    eligible = trainable_leaves(hp.trainable, total) if hp.trainable else None
    return top_fraction_mask(jax.tree.map(jnp.abs, total), fraction, eligible)
