"""The paper's methods: dispersion and hard dispersion on forget batches, and the multi-view extension.

One family file: the four records share one loss (:func:`make_dispersion_loss`), which differs
only in ``hard`` (Eq. 6 instead of Eq. 5) and in whether the views are always on.

``disp`` / ``hard_disp`` (paper Eq. 5 / 6): minimise the dispersion loss of the forget batch
(``hp.margin`` = ``m_d``); with ``augmented_views=True`` they switch to the multi-view loss.
``disp_aug`` / ``hard_disp_aug`` always use it: each forget image is augmented ``num_views`` times on
device (independent random flip, translation up to ``view_crop`` of the side with edge padding,
brightness and contrast jitter of strength ``view_jitter``), and the ``num_views * B`` embeddings
are dispersed together with positives chosen by ``view_positives`` (default ``'identity'``: other
views of the same image and all views of the same identity; see
:func:`jaxforget.losses.multiview_dispersion_loss`). Views go through the model in one call.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxforget import losses
from jaxforget.methods.hparams import HParams
from jaxforget.methods.record import Method
from jaxforget.methods.step import forget_valid, normalize_images, random_flip


def augment_views(rng: jax.Array, images: jax.Array, num_views: int, crop: float,
                  jitter: float, flip: bool = True) -> jax.Array:
    """``(V, B, H, W, 3)`` float32 pixel-space (0..255) augmented views of uint8 images.

    Each view of each image gets its own translation, colour jitter and (with ``flip``, the
    method's ``flip`` field) random horizontal flip.
    """
    b, h, w, _ = images.shape
    x = images.astype(jnp.float32)
    pad_h, pad_w = int(round(crop * h)), int(round(crop * w))
    padded = jnp.pad(x, ((0, 0), (pad_h, pad_h), (pad_w, pad_w), (0, 0)), mode="edge")

    def one_view(key):
        k_flip, k_dy, k_dx, k_b, k_c = jax.random.split(key, 5)
        dy = jax.random.randint(k_dy, (b,), 0, 2 * pad_h + 1)
        dx = jax.random.randint(k_dx, (b,), 0, 2 * pad_w + 1)
        shifted = jax.vmap(
            lambda img, y0, x0: jax.lax.dynamic_slice(img, (y0, x0, 0), (h, w, 3)))(padded, dy, dx)
        view = random_flip(k_flip, shifted) if flip else shifted
        bright = jax.random.uniform(k_b, (b, 1, 1, 1), minval=1 - jitter, maxval=1 + jitter)
        contrast = jax.random.uniform(k_c, (b, 1, 1, 1), minval=1 - jitter, maxval=1 + jitter)
        view = view * bright
        mean = jnp.mean(view, axis=(1, 2, 3), keepdims=True)
        view = (view - mean) * contrast + mean
        return jnp.clip(view, 0.0, 255.0)

    return jax.vmap(one_view)(jax.random.split(rng, num_views))


def make_dispersion_loss(hard: bool, always_views: bool):
    """The dispersion loss of the forget batch (``hard``: Eq. 6, else Eq. 5), over augmented
    views when ``always_views`` or ``hp.augmented_views``; metrics: positive-pair cosines."""

    def loss_fn(fwd, head, batch, rng, hp: HParams, ctx):
        del head
        part = batch["forget"]
        labels = part["label"]
        valid = forget_valid(part)
        if always_views or hp.augmented_views:
            views = augment_views(rng, part["image"], hp.num_views, hp.view_crop, hp.view_jitter,
                                  hp.flip)
            v, b = views.shape[:2]
            x = normalize_images(views.reshape((v * b,) + views.shape[2:]), ctx)
            z = fwd.embed(x).reshape(v, b, -1)
            loss = losses.multiview_dispersion_loss(z, labels, hp.margin, valid,
                                                    positives=hp.view_positives, hard=hard)
            stats = losses.positive_cosine_stats(z[0], labels, valid)
        else:
            z = fwd(part["image"])
            fn = losses.hard_dispersion_loss if hard else losses.dispersion_loss
            loss = fn(z, labels, hp.margin, valid)
            stats = losses.positive_cosine_stats(z, labels, valid)
        return loss, stats

    return loss_fn


_NOTE = " No retain loss by default (paper: lambda = 0)."

DISPERSION = Method(
    name="disp", needs=("forget",), loss=make_dispersion_loss(False, False), uses_head=False,
    salun_loss="dispersion",
    description="Dispersion loss (Eq. 5) on forget batches." + _NOTE)

HARD_DISPERSION = Method(
    name="hard_disp", needs=("forget",), loss=make_dispersion_loss(True, False), uses_head=False,
    salun_loss="dispersion",
    description="Hard dispersion loss (Eq. 6) on forget batches." + _NOTE)

DISPERSION_AUG = Method(
    name="disp_aug", needs=("forget",), loss=make_dispersion_loss(False, True), uses_head=False,
    salun_loss="dispersion",
    description="Dispersion over augmented views of each forget image (beyond the paper)." + _NOTE)

HARD_DISPERSION_AUG = Method(
    name="hard_disp_aug", needs=("forget",), loss=make_dispersion_loss(True, True),
    uses_head=False, salun_loss="dispersion",
    description="Hard dispersion over augmented views of each forget image (beyond the paper)."
                + _NOTE)
