"""Boundary Shrink (paper Eq. 9): CosFace towards the nearest wrong class of an FGSM image.

The adversarial image is made on the frozen original model (``TrainState.frozen``), so the method
needs it (:attr:`~jaxforget.methods.record.Method.needs_frozen`).
"""

from __future__ import annotations

import jax

from jaxforget import losses
from jaxforget.methods.hparams import HParams
from jaxforget.methods.record import Method
from jaxforget.methods.step import forget_valid, head_accuracy, pixel_range


def boundary_shrink_loss(fwd, head, batch, rng, hp: HParams, ctx):
    """BS (Eq. 9): CosFace towards the nearest wrong class of an FGSM image under the original.

    Variant: one untargeted FGSM step of ``hp.bs_eps`` (normalised-pixel units) on the frozen
    original model in eval mode, ascending the CosFace loss of the true label, clipped to the
    valid pixel range; the new label is ``argmax_{k != y} w_k . z0(x_adv)`` (margin-free cosine).
    The trained model sees the clean (flipped) image.
    """
    del rng
    part = batch["forget"]
    x = fwd.prepare(part["image"])
    head_sg = jax.lax.stop_gradient(head)
    y_nb = losses.boundary_shrink_labels(fwd.frozen_embed, x, head_sg, part["label"], hp.bs_eps,
                                         ctx.head_s, ctx.head_m, ctx.head_kind, pixel_range(ctx))
    valid = forget_valid(part)
    z = fwd.embed(x)
    loss = losses.margin_loss(z, head, y_nb, ctx.head_s, ctx.head_m, ctx.head_kind, valid)
    return loss, {"forget_acc": head_accuracy(z, head, part["label"], valid)}


BOUNDARY_SHRINK = Method(
    name="bs", needs=("forget",), loss=boundary_shrink_loss, needs_frozen=True,
    salun_loss="cosface",
    description="Boundary Shrink: CosFace towards the FGSM nearest wrong class of the original.")
