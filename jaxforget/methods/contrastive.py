"""Contrastive Unlearning (Lee et al. 2025, adapted): forget anchors against retain embeddings.

Loss: ``contrastive_unlearning_loss(z_forget, z_retain)`` (a reversed supervised-contrastive loss,
temperature ``contrastive_temperature``; see :mod:`jaxforget.losses.baselines`) plus
``retain_weight * CosFace(z_retain, y_retain)``. Forget and retain batches go through the model in
two forward passes (BatchNorm statistics are threaded through both in train mode).
"""

from __future__ import annotations

from jaxforget import losses
from jaxforget.methods.hparams import HParams
from jaxforget.methods.record import Method
from jaxforget.methods.step import forget_valid


def contrastive_unlearning_loss(fwd, head, batch, rng, hp: HParams, ctx):
    """Reversed SupCon of forget anchors against retain embeddings, + ``retain_weight`` times
    CosFace on the retain batch."""
    del rng
    forget, retain = batch["forget"], batch["retain"]
    zf = fwd(forget["image"])
    zr = fwd(retain["image"])
    vf, vr = forget_valid(forget), forget_valid(retain)
    cu = losses.contrastive_unlearning_loss(zf, forget["label"], zr, retain["label"],
                                            hp.contrastive_temperature, vf, vr)
    metrics = {"contrastive_loss": cu}
    loss = cu
    if hp.retain_weight > 0:
        ce = losses.margin_loss(zr, head, retain["label"], ctx.head_s, ctx.head_m, ctx.head_kind,
                                vr)
        metrics["retain_loss"] = ce
        loss = loss + hp.retain_weight * ce
    return loss, metrics


CONTRASTIVE = Method(
    name="contrastive", needs=("forget", "retain"), loss=contrastive_unlearning_loss,
    generic_retain=False, salun_loss="cosface",
    description="Contrastive Unlearning: reversed SupCon of forget anchors vs retain embeddings,"
                " + retain CosFace.")
