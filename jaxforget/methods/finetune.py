"""Fine-tuning and retraining: CosFace training of backbone and head on retain data.

``finetune`` makes base models (the runner feeds every training identity under ``'retain'``);
``retrain`` fine-tunes the original on the retain identities only (the exact-unlearning
reference). One loss, two records. The loss reads the head weights ``W`` (``(C, d)``) and
``ctx.head_kind/s/m`` for the margin.
"""

from __future__ import annotations

from jaxforget.methods.hparams import HParams
from jaxforget.methods.record import Method
from jaxforget.methods.step import cosface_on, head_accuracy


def finetune_loss(fwd, head, batch, rng, hp: HParams, ctx):
    """CosFace on ``batch['retain']``, training backbone and head.

    For making a base model the runner feeds every training identity under the ``'retain'`` key.
    """
    del rng, hp
    part = batch["retain"]
    loss, z, valid = cosface_on(fwd, head, part, ctx)
    return loss, {"train_acc": head_accuracy(z, head, part["label"], valid)}


FINETUNE = Method(
    name="finetune", needs=("retain",), loss=finetune_loss, trains_head=True,
    generic_retain=False, salun_loss="cosface",
    description="CosFace training of backbone and head on batch['retain'] (base models).")

RETRAIN = Method(
    name="retrain", needs=("retain",), loss=finetune_loss, trains_head=True,
    generic_retain=False, salun_loss="cosface",
    description="Fine-tune the original on retain data only (the exact-unlearning reference).")
