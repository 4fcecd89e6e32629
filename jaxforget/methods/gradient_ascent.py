"""Gradient Ascent (paper Eq. 8): ascend the CosFace loss of the true labels on forget batches.

The paper runs it at a lower learning rate than the dispersion methods (value lost; the project's
is in ``configs/ga.py``).
"""

from __future__ import annotations

from jaxforget.methods.hparams import HParams
from jaxforget.methods.record import Method
from jaxforget.methods.step import cosface_on, head_accuracy


def gradient_ascent_loss(fwd, head, batch, rng, hp: HParams, ctx):
    """GA (Eq. 8): minus the CosFace loss of the true labels on the forget batch."""
    del rng, hp
    part = batch["forget"]
    loss, z, valid = cosface_on(fwd, head, part, ctx)
    return -loss, {"forget_cosface": loss,
                   "forget_acc": head_accuracy(z, head, part["label"], valid)}


GRADIENT_ASCENT = Method(
    name="ga", needs=("forget",), loss=gradient_ascent_loss, salun_loss="cosface",
    description="Gradient Ascent on the CosFace loss of the forget batch.")
