"""The update step: forward passes inside a loss, the generic retain term, ``make_update_step``.

``update = jax.jit(make_update_step(method, hp, ctx), donate_argnums=0)`` then
``state, metrics = update(state, batch)``, with ``batch`` holding the keys
``method.data_needs(hp)`` (``'forget'`` / ``'retain'``: ``{'image': uint8 NHWC, 'label': int32,
optional 'mask': bool}``). Images are normalised (and flipped) on device by :class:`Forward`; the
helpers here (:func:`normalize_images`, :func:`pixel_range`, :func:`random_flip`,
:func:`forget_valid`, :func:`cosface_on`, :func:`head_accuracy`) are what the method losses build
on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxforget import losses, ops
from jaxforget.methods.hparams import HParams, resolve_hparams
from jaxforget.methods.optim import frozen_where, make_optimizer
from jaxforget.methods.record import Method, Metrics
from jaxforget.methods.state import Context, TrainState, trainable_tree

PyTree = Any


def normalize_images(images: jax.Array, ctx: Context) -> jax.Array:
    """uint8 (or float 0..255) NHWC images to the model's normalised float32 input."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be NHWC RGB (B, H, W, 3), got shape {images.shape}.")
    return ops.normalize_images(images, ctx.pixel_mean, ctx.pixel_std)


def pixel_range(ctx: Context) -> tuple[float, float]:
    """The normalised values of pixel 0 and 255 (the valid input range)."""
    return ((0.0 - ctx.pixel_mean) / ctx.pixel_std, (255.0 - ctx.pixel_mean) / ctx.pixel_std)


def random_flip(rng: jax.Array, x: jax.Array) -> jax.Array:
    """Flips each image of an NHWC batch left-right with probability 1/2."""
    flip = jax.random.bernoulli(rng, 0.5, (x.shape[0],))
    return jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)


class Forward:
    """Embeds images with the trained model inside the loss, threading BatchNorm statistics.

    Each call in ``bn_mode='train'`` runs the model in train mode and keeps the returned running
    statistics for the next call (several forward passes in one step update them in sequence, as
    PyTorch would); in ``'frozen'`` mode the model runs in eval mode. ``frozen_embed`` runs the
    frozen original (eval mode, no gradient). Built only while tracing a step.
    """

    def __init__(self, ctx: Context, params: PyTree, batch_stats: PyTree, train_bn: bool,
                 rng: jax.Array, flip: bool, frozen: PyTree = None):
        self.ctx = ctx
        self.params = params
        self.batch_stats = batch_stats
        self.train_bn = train_bn
        self.flip = flip
        self.frozen = frozen
        self._rng = rng
        self._calls = 0

    def next_rng(self) -> jax.Array:
        self._calls += 1
        return jax.random.fold_in(self._rng, self._calls)

    def prepare(self, images: jax.Array) -> jax.Array:
        """Normalises uint8 images and applies the random flip when enabled."""
        x = normalize_images(images, self.ctx)
        return random_flip(self.next_rng(), x) if self.flip else x

    def embed(self, x: jax.Array) -> jax.Array:
        """Raw (unnormalised) float32 embeddings of normalised images ``x``."""
        variables = {"params": self.params}
        if self.batch_stats is not None:
            variables["batch_stats"] = self.batch_stats
        if self.train_bn:
            z, updates = self.ctx.apply_fn(variables, x, train=True, mutable=["batch_stats"],
                                           rngs={"dropout": self.next_rng()})
            if self.batch_stats is not None:
                self.batch_stats = updates.get("batch_stats", self.batch_stats)
        else:
            z = self.ctx.apply_fn(variables, x, train=False)
        return z.astype(jnp.float32)

    def __call__(self, images: jax.Array) -> jax.Array:
        """Raw float32 embeddings of a uint8 batch (normalised and flipped first)."""
        return self.embed(self.prepare(images))

    def frozen_embed(self, x: jax.Array) -> jax.Array:
        """Embeddings of normalised images under the frozen original (eval mode, no gradient)."""
        if self.frozen is None:
            raise ValueError("this method needs the frozen original model, but state.frozen is "
                             "None; build the state with init_state (it fills state.frozen).")
        frozen = jax.lax.stop_gradient(self.frozen)
        return self.ctx.apply_fn(frozen, x, train=False).astype(jnp.float32)


def forget_valid(part: Mapping[str, Any]) -> jax.Array | None:
    """The optional padding mask of a batch part."""
    m = part.get("mask")
    return None if m is None else jnp.asarray(m, bool)


def head_accuracy(z: jax.Array, head: jax.Array, labels: jax.Array,
                  valid: jax.Array | None) -> jax.Array:
    """Share of the (valid) samples whose nearest head row (margin-free cosine) is their label."""
    pred = jnp.argmax(losses.cosine_logits(z, head), axis=-1)
    hit = (pred == labels).astype(jnp.float32)
    if valid is None:
        return jnp.mean(hit)
    w = valid.astype(jnp.float32)
    return jnp.sum(hit * w) / jnp.maximum(jnp.sum(w), 1.0)


def cosface_on(fwd: Forward, head, part: Mapping[str, Any], ctx: Context, labels=None):
    """The margin loss of a batch part under the trained model (its own labels unless
    ``labels``); returns ``(loss, embeddings, valid mask)``."""
    z = fwd(part["image"])
    labels = part["label"] if labels is None else labels
    valid = forget_valid(part)
    loss = losses.margin_loss(z, head, labels, ctx.head_s, ctx.head_m, ctx.head_kind, valid)
    return loss, z, valid


def _check_batch(method: Method, needs: tuple[str, ...], batch: Mapping[str, Any]) -> None:
    for key in needs:
        if key not in batch:
            raise ValueError(
                f"method '{method.name}' needs batch['{key}'] (it reads {needs} under this "
                f"config), but the batch has keys {sorted(batch)}. Feed a {key} batch "
                "{'image': uint8 (B,H,W,3), 'label': int32 (B,)}.")
        part = batch[key]
        if "image" not in part or "label" not in part:
            raise ValueError(f"batch['{key}'] must hold 'image' and 'label', got keys "
                             f"{sorted(part)}.")
        img, lab = part["image"], part["label"]
        if img.ndim != 4 or img.shape[-1] != 3 or lab.shape != (img.shape[0],):
            raise ValueError(f"batch['{key}']: image must be (B, H, W, 3) and label (B,), got "
                             f"{img.shape} and {lab.shape}.")


def retain_term(fwd: Forward, head: jax.Array | None, retain: Mapping[str, Any], hp: HParams,
                ctx: Context) -> jax.Array:
    """CosFace on retain samples (``retain_loss='cosface'``) or distillation of their embeddings
    to the frozen original's (``'distill'``)."""
    x = fwd.prepare(retain["image"])
    z = fwd.embed(x)
    mask = retain.get("mask")
    if hp.retain_loss == "cosface":
        return losses.margin_loss(z, head, retain["label"], ctx.head_s, ctx.head_m,
                                  ctx.head_kind, mask)
    return losses.embedding_distillation_loss(z, fwd.frozen_embed(x), mask)


def make_update_step(method: Method, method_cfg: Any, ctx: Context
                     ) -> Callable[[TrainState, Mapping[str, Any]], tuple[TrainState, Metrics]]:
    """The pure update ``update(state, batch) -> (state, metrics)`` for ``method``.

    Jit it with ``donate_argnums=0``. ``batch`` holds ``'forget'`` and/or ``'retain'`` dicts of
    ``{'image': uint8 NHWC, 'label': int32, optional 'mask': bool}`` (see
    :meth:`Method.data_needs`); images are normalised (and randomly flipped when ``flip``) on
    device. Works unchanged with a batch sharded over devices and replicated parameters.

    ``metrics``: ``loss`` (total), ``grad_norm`` (global norm of the raw gradient), ``lr``
    (learning rate used for this step), plus the method's own scalars (and ``retain_loss`` when the
    generic retain term is on).
    """
    if method.closed_form:
        raise ValueError(f"method {method.name!r} is closed-form: it has no update step (the "
                         "runner applies it without training)")
    hp = resolve_hparams(method_cfg, method)
    needs = method.data_needs(method_cfg)
    tx, schedule = make_optimizer(hp)
    with_retain = method.generic_retain and hp.retain_weight > 0

    def update(state: TrainState, batch: Mapping[str, Any]) -> tuple[TrainState, Metrics]:
        _check_batch(method, needs, batch)
        rng, loss_rng, fwd_rng = jax.random.split(state.rng, 3)
        trainable = trainable_tree(method, state)

        def objective(tr):
            # Leaves outside method.trainable enter as constants: XLA drops their backward pass.
            params = frozen_where(hp.trainable, tr["params"], tr["params"])
            fwd = Forward(ctx, params, state.batch_stats, hp.bn_mode != "frozen", fwd_rng,
                          hp.flip, state.frozen)
            head = tr.get("head", state.head)
            loss, metrics = method.loss(fwd, head, batch, loss_rng, hp, ctx)
            metrics = dict(metrics)
            if with_retain:
                r = retain_term(fwd, head, batch["retain"], hp, ctx)
                metrics["retain_loss"] = r
                loss = loss + hp.retain_weight * r
            return loss, (metrics, fwd.batch_stats)

        (loss, (metrics, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
            trainable)
        if hp.bn_mode == "batch":  # batch statistics in the forward passes only
            batch_stats = state.batch_stats
        batch_stats = frozen_where(hp.trainable, batch_stats, state.batch_stats)
        updates, opt_state = tx.update(grads, state.opt_state, trainable)
        new = optax.apply_updates(trainable, updates)
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
        metrics.update(loss=loss, grad_norm=optax.tree.norm(grads),
                       lr=jnp.asarray(schedule(state.step), jnp.float32))
        new_state = state.replace(
            step=state.step + 1, params=new["params"], head=new.get("head", state.head),
            batch_stats=batch_stats, opt_state=opt_state, rng=rng)
        return new_state, metrics

    return update
