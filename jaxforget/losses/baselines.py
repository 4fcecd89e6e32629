"""Loss pieces of the paper's baselines, adapted to CosFace (paper Sec. 4.3 and 5.4).

Everything here is pure; the functions over arrays are jitted, the ones taking a network
(``fgsm``, ``boundary_shrink_labels``, ``lipschitz_loss``) are meant to be traced inside the jitted
update step. Functions that need the network take an ``embed_fn`` mapping normalised
float NHWC images to embeddings ``(N, d)`` (raw or normalised; they are normalised here), so the
same code serves the trained model and the frozen original.

* Random Labeling (Eq. 7): ``random_labels`` + ``margin_loss`` on the forget batch.
* Gradient Ascent (Eq. 8): ``gradient_ascent_loss = -margin_loss``.
* Boundary Shrink (Eq. 9): ``fgsm`` on the frozen original, then ``nearest_wrong_class`` with the
  margin-free cosine; the trained model learns ``margin_loss(f(x_f), y_nb)``. Variant: one
  untargeted FGSM step of size ``eps`` in normalised-pixel units (images live in about [-1, 1]),
  ascending the CosFace loss of the true label, clipped to the valid pixel range.
* Lipschitz Unlearning: ``lipschitz_loss``, the mean over ``n`` Gaussian draws of
  ``||z(x + e) - z(x)|| / ||e||``.
* Contrastive Unlearning: ``contrastive_unlearning_loss`` (a reversed supervised-contrastive loss).
* Retain terms: ``margin_loss`` on retain samples, or ``embedding_distillation_loss`` to the frozen
  original's embeddings.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp

from jaxforget.losses.margin import MarginKind, cosine_logits, margin_loss
from jaxforget.ops import l2_normalize

Array = jax.Array
EmbedFn = Callable[[Array], Array]


def _masked_mean(values: Array, mask: Array | None) -> Array:
    if mask is None:
        return jnp.mean(values)
    w = jnp.asarray(mask, values.dtype)
    return jnp.sum(values * w) / jnp.maximum(jnp.sum(w), 1.0)


@partial(jax.jit, static_argnames=("num_classes", "exclude_true"))
def random_labels(rng: Array, labels: Array, num_classes: int, exclude_true: bool = False) -> Array:
    """Labels drawn uniformly from ``0..num_classes-1`` (Random Labeling, Eq. 7).

    The paper draws uniformly over the whole label space (``exclude_true=False``), so a draw may
    hit the true label with probability ``1/C``; ``exclude_true=True`` draws from the other
    ``C - 1`` classes instead.
    """
    labels = jnp.asarray(labels, jnp.int32)
    if not exclude_true:
        return jax.random.randint(rng, labels.shape, 0, num_classes, dtype=jnp.int32)
    if num_classes < 2:
        raise ValueError("random_labels: exclude_true=True needs num_classes >= 2, got "
                         f"{num_classes}.")
    offset = jax.random.randint(rng, labels.shape, 1, num_classes, dtype=jnp.int32)
    return (labels + offset) % num_classes


@partial(jax.jit, static_argnames=("kind",))
def gradient_ascent_loss(z: Array, weights: Array, labels: Array, s: float = 64.0,
                         m: float = 0.4, kind: MarginKind = "cosface",
                         mask: Array | None = None) -> Array:
    """Gradient Ascent (Eq. 8): the negated CosFace loss of the true labels (minimise this)."""
    return -margin_loss(z, weights, labels, s, m, kind, mask)


def fgsm(embed_fn: EmbedFn, x: Array, weights: Array, labels: Array, eps: float,
         s: float = 64.0, m: float = 0.4, kind: MarginKind = "cosface",
         clip: tuple[float, float] | None = None) -> Array:
    """One untargeted FGSM step ``x + eps * sign(grad_x margin_loss(f(x), y))``.

    The per-sample gradient is taken of the summed loss (so every sample's step is independent of
    the batch size). ``clip=(lo, hi)`` keeps the result in the valid normalised-pixel range.
    """
    def total_loss(xx):
        logits_loss = margin_loss(embed_fn(xx), weights, labels, s, m, kind)
        return logits_loss * xx.shape[0]

    g = jax.grad(total_loss)(x)
    x_adv = x + eps * jnp.sign(g)
    if clip is not None:
        x_adv = jnp.clip(x_adv, clip[0], clip[1])
    return jax.lax.stop_gradient(x_adv)


@jax.jit
def nearest_wrong_class(z: Array, weights: Array, labels: Array) -> Array:
    """``argmax_{k != y} w_k . z`` with the margin-free cosine: the nearest class that is not ``y``."""
    cos = cosine_logits(z, weights)
    own = jax.nn.one_hot(jnp.asarray(labels, jnp.int32), cos.shape[-1], dtype=bool)
    return jnp.argmax(jnp.where(own, -jnp.inf, cos), axis=-1).astype(jnp.int32)


def boundary_shrink_labels(frozen_embed_fn: EmbedFn, x: Array, weights: Array, labels: Array,
                           eps: float, s: float = 64.0, m: float = 0.4,
                           kind: MarginKind = "cosface",
                           clip: tuple[float, float] | None = None) -> Array:
    """Boundary Shrink's new labels: FGSM on the frozen original, then the nearest wrong class.

    Needs at least two classes. The result never equals the true label.
    """
    if weights.shape[0] < 2:
        raise ValueError("boundary_shrink_labels: the head needs at least 2 classes, got "
                         f"weights of shape {tuple(weights.shape)}.")
    x_adv = fgsm(frozen_embed_fn, x, weights, labels, eps, s, m, kind, clip)
    z_adv = jax.lax.stop_gradient(frozen_embed_fn(x_adv))
    return nearest_wrong_class(z_adv, weights, labels)


def _safe_norm(x: Array, axis) -> Array:
    """Euclidean norm, exactly 0 with a zero (not NaN) gradient at zero (double-where trick)."""
    sq = jnp.sum(jnp.square(x), axis=axis)
    nonzero = sq > 0
    return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


def lipschitz_loss(embed_fn: EmbedFn, x: Array, rng: Array, num_draws: int, sigma: float,
                   mask: Array | None = None) -> Array:
    """Lipschitz Unlearning's forget term: mean over draws of ``||z(x + e) - z(x)|| / ||e||``.

    ``e ~ N(0, sigma^2)`` per pixel (normalised-pixel units); ``z`` is L2-normalised. The clean and
    the ``num_draws`` noisy copies go through ``embed_fn`` in ONE call of ``(1 + n) * B`` images (so
    in train-mode BatchNorm they share batch statistics).
    """
    if num_draws < 1:
        raise ValueError(f"lipschitz_loss: num_draws must be >= 1, got {num_draws}.")
    b = x.shape[0]
    noisy = x[None] + sigma * jax.random.normal(rng, (num_draws,) + x.shape, x.dtype)
    stacked = jnp.concatenate([x[None], noisy], axis=0).reshape((-1,) + x.shape[1:])
    z = l2_normalize(embed_fn(stacked).astype(jnp.float32)).reshape(num_draws + 1, b, -1)
    dz = _safe_norm(z[1:] - z[0][None], axis=-1)                      # (n, B)
    # The perturbation the model saw (in bfloat16, x + noise rounds), not the drawn noise.
    applied = (noisy.astype(jnp.float32) - x[None].astype(jnp.float32)).reshape(num_draws, b, -1)
    de = _safe_norm(applied, axis=-1)                                 # (n, B)
    per_sample = jnp.mean(dz / de, axis=0)
    return _masked_mean(per_sample, mask)


@jax.jit
def contrastive_unlearning_loss(z_forget: Array, y_forget: Array, z_retain: Array,
                                y_retain: Array, temperature: float = 0.1,
                                valid_forget: Array | None = None,
                                valid_retain: Array | None = None) -> Array:
    """Contrastive Unlearning's forget term: a reversed supervised-contrastive loss.

    Each forget embedding is an anchor; its candidates are the retain embeddings and the other
    forget embeddings of the batch. Reversing SupCon, the *positives* (pulled towards the anchor)
    are retain embeddings of a different identity, and the *negatives* (pushed away) are every
    candidate of the anchor's own identity -- the other forget images of the same person and, in
    sample-wise unlearning, retain images of that person. Forget images of other forget identities
    are left out. For anchor ``i`` with positives ``P_i`` and negatives ``N_i``::

        l_i = -1/|P_i| * sum_{p in P_i} log( exp(s_ip / t) / sum_{a in P_i u N_i} exp(s_ia / t) )

    averaged over the valid anchors with at least one positive (0 with zero gradient if none).
    """
    zf = l2_normalize(z_forget.astype(jnp.float32))
    zr = l2_normalize(z_retain.astype(jnp.float32))
    bf, br = zf.shape[0], zr.shape[0]
    vf = jnp.ones((bf,), bool) if valid_forget is None else jnp.asarray(valid_forget, bool)
    vr = jnp.ones((br,), bool) if valid_retain is None else jnp.asarray(valid_retain, bool)
    cand = jnp.concatenate([zr, zf], axis=0)
    cand_y = jnp.concatenate([jnp.asarray(y_retain), jnp.asarray(y_forget)])
    cand_valid = jnp.concatenate([vr, vf])
    is_retain = jnp.concatenate([jnp.ones((br,), bool), jnp.zeros((bf,), bool)])
    not_self = ~jnp.concatenate([jnp.zeros((bf, br), bool), jnp.eye(bf, dtype=bool)], axis=1)
    same = jnp.asarray(y_forget)[:, None] == cand_y[None, :]
    ok = vf[:, None] & cand_valid[None, :] & not_self
    pos = ok & is_retain[None, :] & ~same
    neg = ok & same
    logits = (zf @ cand.T) / temperature
    in_denominator = pos | neg
    masked = jnp.where(in_denominator, logits, -jnp.inf)
    # Rows with an empty denominator get a finite log-normaliser; they are masked out below.
    row_max = jnp.max(jnp.where(in_denominator, logits, jnp.min(logits)), axis=1, keepdims=True)
    row_max = jax.lax.stop_gradient(row_max)
    log_norm = row_max[:, 0] + jnp.log(
        jnp.maximum(jnp.sum(jnp.where(in_denominator, jnp.exp(masked - row_max), 0.0), axis=1),
                    1e-30))
    n_pos = jnp.sum(pos, axis=1)
    mean_pos_logit = jnp.sum(jnp.where(pos, logits, 0.0), axis=1) / jnp.maximum(n_pos, 1)
    per_anchor = log_norm - mean_pos_logit
    anchors = n_pos > 0
    return jnp.sum(jnp.where(anchors, per_anchor, 0.0)) / jnp.maximum(jnp.sum(anchors), 1)


@jax.jit
def embedding_distillation_loss(z: Array, z_ref: Array, mask: Array | None = None) -> Array:
    """Retain term ``mean(1 - cos(z, z_ref))`` pulling embeddings to the frozen original's."""
    cos = jnp.sum(l2_normalize(z.astype(jnp.float32))
                  * jax.lax.stop_gradient(l2_normalize(z_ref.astype(jnp.float32))), axis=-1)
    return _masked_mean(1.0 - cos, mask)
