"""The training state and the static context of a run, and how a fresh state is built.

:class:`TrainState` is the one pytree the jitted update donates and returns (and the trainer
checkpoints); :class:`Context` holds what the step closes over (the model's ``apply`` and
normalisation, the head's margin); :func:`init_state` builds the state from the original model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from jaxforget.methods.hparams import resolve_hparams
from jaxforget.methods.optim import check_trainable, make_optimizer, set_saliency_mask
from jaxforget.methods.record import Method

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """The whole mutable training state: a plain pytree, donated to the jitted update.

    Fields: ``step`` (int32 scalar), ``params`` (backbone parameters), ``batch_stats`` (BatchNorm
    running statistics, or None), ``head`` (CosFace class weights ``(C, d)`` or None),
    ``opt_state`` (optax state over :func:`trainable_tree`, holding the SalUn mask when enabled),
    ``rng`` (PRNG key, split every step), ``frozen`` (the original model's variables for Boundary
    Shrink and distillation -- None when the method does not need them). The frozen copy lives in
    the state, not the context, so it is an input of the jitted step rather than a constant
    compiled into it.
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    head: jax.Array | None
    opt_state: PyTree
    rng: jax.Array
    frozen: PyTree = None


@flax.struct.dataclass
class Context:
    """Static things the update step closes over (nothing here is traced).

    ``apply_fn(variables, x, train=..., mutable=..., rngs=...)``: the backbone's
    ``module.apply`` (normalised float NHWC in, unnormalised embeddings out; with ``train=True``
    and ``mutable=['batch_stats']`` it returns ``(emb, {'batch_stats': ...})``).
    ``pixel_mean`` / ``pixel_std``: the model's normalisation constants. ``num_classes``: rows of
    the head. ``head_kind`` / ``head_s`` / ``head_m``: the margin loss (``config.head``).
    """

    apply_fn: Callable[..., Any] = flax.struct.field(pytree_node=False)
    pixel_mean: float = flax.struct.field(pytree_node=False, default=127.5)
    pixel_std: float = flax.struct.field(pytree_node=False, default=127.5)
    num_classes: int = flax.struct.field(pytree_node=False, default=0)
    head_kind: str = flax.struct.field(pytree_node=False, default="cosface")
    head_s: float = flax.struct.field(pytree_node=False, default=64.0)
    head_m: float = flax.struct.field(pytree_node=False, default=0.4)


def trainable_tree(method: Method, state: TrainState) -> dict[str, PyTree]:
    """What the optimiser updates: ``{'params': backbone}`` (+ ``'head'`` when the method trains it)."""
    tree = {"params": state.params}
    if method.trains_head:
        tree["head"] = state.head
    return tree


def init_state(method: Method, method_cfg: Any, variables: Mapping[str, PyTree],
               head_weights: jax.Array | None, rng: jax.Array,
               saliency_mask: PyTree | None = None) -> TrainState:
    """A fresh :class:`TrainState` for ``method`` starting from the original model.

    Args:
      method: from :func:`jaxforget.methods.get_method`.
      method_cfg: ``config.method`` (fields of :class:`HParams`), or resolved ``HParams``.
      variables: the original model's ``{'params': ..., 'batch_stats': ...}``.
      head_weights: CosFace class weights ``(C, d)``; required by methods that use the head.
      rng: PRNG key for the whole run.
      saliency_mask: SalUn mask from
        :func:`jaxforget.methods.saliency.compute_saliency_mask` (needs ``salun_fraction > 0``);
        shaped like the backbone params, or like ``{'params', 'head'}`` for head-training methods.

    Arrays are copied, so the caller's ``variables`` stay usable after the state is donated;
    ``frozen`` gets its own copy of ``variables`` when the method needs the original model.
    """
    hp = resolve_hparams(method_cfg, method)
    if "params" not in variables:
        raise ValueError("init_state: variables must be a flax dict with a 'params' entry, got "
                         f"keys {sorted(variables)}.")
    retain_cosface = (method.generic_retain and hp.retain_weight > 0
                      and hp.retain_loss == "cosface")
    if (method.uses_head or retain_cosface) and head_weights is None:
        raise ValueError(f"init_state: method '{method.name}' uses the CosFace head under this "
                         "config, but head_weights is None; pass the (num_classes, d) class "
                         "weights.")
    copy = lambda t: jax.tree.map(jnp.copy, t)  # noqa: E731
    params = copy(variables["params"])
    batch_stats = copy(variables.get("batch_stats")) if "batch_stats" in variables else None
    head = None if head_weights is None else jnp.array(head_weights, jnp.float32, copy=True)
    frozen = copy(dict(variables)) if method.uses_frozen(method_cfg) else None
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                       head=head, opt_state=None, rng=rng, frozen=frozen)
    check_trainable(hp.trainable, params)
    tx, _ = make_optimizer(hp)
    trainable = trainable_tree(method, state)
    opt_state = tx.init(trainable)
    if saliency_mask is not None:
        if hp.salun_fraction <= 0:
            raise ValueError("init_state: a saliency_mask was given but method.salun_fraction is "
                             "0; set it to the fraction the mask was computed with.")
        if method.trains_head and not (isinstance(saliency_mask, Mapping)
                                       and "head" in saliency_mask):
            saliency_mask = {"params": saliency_mask, "head": jnp.ones(head.shape, bool)}
        elif not method.trains_head and not (isinstance(saliency_mask, Mapping)
                                             and set(saliency_mask) == {"params"}):
            saliency_mask = {"params": saliency_mask}
        opt_state = set_saliency_mask(opt_state, saliency_mask)
    return state.replace(opt_state=opt_state)


def variables_of(state: TrainState) -> dict[str, PyTree]:
    """The flax variables ``{'params', 'batch_stats'?}`` of the model a state holds."""
    v = {"params": state.params}
    if state.batch_stats is not None:
        v["batch_stats"] = state.batch_stats
    return v
