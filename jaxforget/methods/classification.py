"""CosFace-based methods: fine-tuning, retraining, Random Labeling, Gradient Ascent, Boundary Shrink.

Each loss reads the head weights ``W`` (``(C, d)``) and ``ctx.head_kind/s/m`` for the margin.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxforget import losses
from jaxforget.methods.base import Context, Forward, HParams, Method, forget_valid, pixel_range


def _accuracy(z: jax.Array, head: jax.Array, labels: jax.Array, valid: jax.Array | None):
    pred = jnp.argmax(losses.cosine_logits(z, head), axis=-1)
    hit = (pred == labels).astype(jnp.float32)
    if valid is None:
        return jnp.mean(hit)
    w = valid.astype(jnp.float32)
    return jnp.sum(hit * w) / jnp.maximum(jnp.sum(w), 1.0)


def _cosface_on(fwd: Forward, head, part: Mapping[str, Any], ctx: Context, labels=None):
    z = fwd(part["image"])
    labels = part["label"] if labels is None else labels
    valid = forget_valid(part)
    loss = losses.margin_loss(z, head, labels, ctx.head_s, ctx.head_m, ctx.head_kind, valid)
    return loss, z, valid


def finetune_loss(fwd, head, batch, rng, hp: HParams, ctx):
    """CosFace on ``batch['retain']``, training backbone and head.

    For making a base model the runner feeds every training identity under the ``'retain'`` key.
    """
    del rng, hp
    part = batch["retain"]
    loss, z, valid = _cosface_on(fwd, head, part, ctx)
    return loss, {"train_acc": _accuracy(z, head, part["label"], valid)}


def random_labeling_loss(fwd, head, batch, rng, hp: HParams, ctx):
    """RL (Eq. 7): CosFace of random labels on the forget batch (+ lambda * retain CosFace)."""
    part = batch["forget"]
    y_rand = losses.random_labels(rng, part["label"], head.shape[0], hp.rl_exclude_true)
    loss, z, valid = _cosface_on(fwd, head, part, ctx, labels=y_rand)
    return loss, {"forget_acc": _accuracy(z, head, part["label"], valid)}


def gradient_ascent_loss(fwd, head, batch, rng, hp: HParams, ctx):
    """GA (Eq. 8): minus the CosFace loss of the true labels on the forget batch."""
    del rng, hp
    part = batch["forget"]
    loss, z, valid = _cosface_on(fwd, head, part, ctx)
    return -loss, {"forget_cosface": loss, "forget_acc": _accuracy(z, head, part["label"], valid)}


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
    return loss, {"forget_acc": _accuracy(z, head, part["label"], valid)}


FINETUNE = Method(
    name="finetune", needs=("retain",), loss=finetune_loss, trains_head=True,
    generic_retain=False,
    description="CosFace training of backbone and head on batch['retain'] (base models).",
    defaults={"lr": 0.01, "schedule": "linear"})

RETRAIN = Method(
    name="retrain", needs=("retain",), loss=finetune_loss, trains_head=True,
    generic_retain=False,
    description="Fine-tune the original on retain data only (the exact-unlearning reference).",
    defaults={"lr": 0.01, "schedule": "linear"})

RANDOM_LABELING = Method(
    name="rl", needs=("forget",), loss=random_labeling_loss,
    description="Random Labeling: CosFace with uniform random labels on forget (+ lambda retain).",
    # Paper's lambda lost; 1.0 with retain CosFace is the project's choice.
    defaults={"retain_weight": 1.0})

GRADIENT_ASCENT = Method(
    name="ga", needs=("forget",), loss=gradient_ascent_loss,
    description="Gradient Ascent on the CosFace loss of the forget batch.",
    # Paper: lower lr than the dispersion methods (value lost).
    defaults={"lr": 1e-4})

BOUNDARY_SHRINK = Method(
    name="bs", needs=("forget",), loss=boundary_shrink_loss, needs_frozen=True,
    description="Boundary Shrink: CosFace towards the FGSM nearest wrong class of the original.",
    defaults={"lr": 1e-4})
