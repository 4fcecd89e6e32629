"""The method record: what an unlearning method is (its loss, its data, what it trains).

Each method file (``finetune.py``, ``dispersion.py``, ...) builds one :class:`Method`;
``registry.py`` collects them by name. The record holds no hyper-parameter values: those are the
fields of :class:`~jaxforget.methods.hparams.HParams`, set per method in ``configs/<method>.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax

from jaxforget.methods.hparams import HParams, resolve_hparams

Metrics = dict[str, jax.Array]
# ``loss(fwd, head, batch, rng, hp, ctx) -> (loss, metrics)``; ``fwd`` is a
# :class:`jaxforget.methods.step.Forward`, ``ctx`` a :class:`jaxforget.methods.state.Context`.
LossFn = Callable[[Any, jax.Array | None, Mapping[str, Any], jax.Array, HParams, Any],
                  tuple[jax.Array, Metrics]]

DATA_KEYS = ("forget", "retain")
# The forget losses whose gradient can rank weights for SalUn (see ``saliency.py``).
SALUN_LOSSES = ("cosface", "dispersion", "hard_dispersion")


@dataclasses.dataclass(frozen=True, eq=False)
class Method:
    """An unlearning method: its loss, the data it needs, and which parts of the model it trains.

    ``loss(fwd, head, batch, rng, hp, ctx) -> (loss, metrics)`` where ``fwd`` embeds images with
    the trained model (see :class:`~jaxforget.methods.step.Forward`), ``head`` is the head weights
    (a traced trainable when :attr:`trains_head`), ``batch`` the device batch (images still uint8),
    ``rng`` a fresh key. ``needs``: data the loss always reads; :meth:`data_needs` adds
    ``'retain'`` when the config turns on the generic retain term. ``salun_loss``: the forget loss
    whose gradient ranks the weights when SalUn is on (``'cosface'`` for the methods that use the
    CosFace head, ``'dispersion'`` for the others); the trainer reads it, nothing else chooses it.
    """

    name: str
    needs: tuple[str, ...]
    loss: LossFn
    description: str
    trains_head: bool = False
    uses_head: bool = True
    generic_retain: bool = True
    needs_frozen: bool = False
    closed_form: bool = False  # no training: the runner skips the update loop (``project``)
    salun_loss: str = "cosface"

    def __post_init__(self):
        if self.salun_loss not in SALUN_LOSSES:
            raise ValueError(f"method {self.name!r}: salun_loss={self.salun_loss!r} is not one of "
                             f"{SALUN_LOSSES}.")

    def data_needs(self, method_cfg: Any = None) -> tuple[str, ...]:
        """The batch keys the update step reads under this config (or resolved HParams)."""
        hp = resolve_hparams(method_cfg, self)
        needs = set(self.needs)
        if self.generic_retain and hp.retain_weight > 0:
            needs.add("retain")
        return tuple(k for k in DATA_KEYS if k in needs)

    def uses_frozen(self, method_cfg: Any = None) -> bool:
        """Whether the update needs the frozen original model (``TrainState.frozen``)."""
        hp = resolve_hparams(method_cfg, self)
        distill = (self.generic_retain and hp.retain_weight > 0 and hp.retain_loss == "distill")
        return self.needs_frozen or distill
