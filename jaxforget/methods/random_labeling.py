"""Random Labeling (paper Eq. 7): CosFace of uniform random labels on the forget batch.

Plus ``retain_weight`` times the generic retain term (the paper's lambda is lost; the value the
project runs with is in ``configs/rl.py``).
"""

from __future__ import annotations

from jaxforget import losses
from jaxforget.methods.hparams import HParams
from jaxforget.methods.record import Method
from jaxforget.methods.step import cosface_on, head_accuracy


def random_labeling_loss(fwd, head, batch, rng, hp: HParams, ctx):
    """RL (Eq. 7): CosFace of random labels on the forget batch (+ lambda * retain CosFace)."""
    part = batch["forget"]
    y_rand = losses.random_labels(rng, part["label"], head.shape[0], hp.rl_exclude_true)
    loss, z, valid = cosface_on(fwd, head, part, ctx, labels=y_rand)
    return loss, {"forget_acc": head_accuracy(z, head, part["label"], valid)}


RANDOM_LABELING = Method(
    name="rl", needs=("forget",), loss=random_labeling_loss, salun_loss="cosface",
    description="Random Labeling: CosFace with uniform random labels on forget (+ lambda retain).")
