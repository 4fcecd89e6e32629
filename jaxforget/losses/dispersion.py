"""Dispersion losses (paper Eq. 5 and 6) over a batch of identity-labelled embeddings.

Notation (see ``docs/METHOD_SPEC.md``): a batch of ``B`` L2-normalised embeddings ``z_i`` with labels
``y_i``; ``P(i) = {p != i : y_p = y_i}`` are the positives of anchor ``i``; ``A`` are the anchors with
at least one positive; ``m_d`` is the dispersion margin.

* ``dispersion_loss``:      ``1/|A| sum_{i in A} 1/|P(i)| sum_{p in P(i)} max(z_i . z_p, m_d)``
* ``hard_dispersion_loss``: ``1/|A| sum_{i in A} max(max_{p in P(i)} z_i . z_p, m_d)``

Both are computed from one ``B x B`` cosine matrix with boolean masks, with no Python loop over
anchors. Every function here is jitted once per input shape (the margin is a traced argument, so a
sweep over margins does not retrace).

Numerical care, so the losses are safe to differentiate anywhere:

* ``l2_normalize`` (:func:`jaxforget.ops.l2_normalize`) multiplies by ``rsqrt(max(|x|^2, eps))``;
  a zero vector maps to zero, and its gradient there is finite (``rsqrt(eps)`` times the
  identity: large, but never NaN).
* Masked-out entries are removed with ``jnp.where`` on values that are always finite (cosines in
  ``[-1, 1]``, fill value ``-2`` for the hardest-positive search), so no ``inf * 0`` can reach a
  gradient.
* When no anchor has a positive the loss is exactly 0 and every gradient is exactly 0.
* A fully collapsed identity (all its embeddings equal, cosine 1) is a stationary point of both
  losses: the gradient of ``z_i . z_p`` through the normalisation is orthogonal to ``z_i``, which
  is where ``z_p`` points. Real embeddings are never exactly collapsed, so this only matters for
  synthetic inputs.

Beyond the paper, ``multiview_dispersion_loss`` disperses several augmented views of each image
(SimCLR-style, the paper's "future work"); see its docstring for the choice of positives.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jaxforget.ops import l2_normalize

Array = jax.Array

# Fill value for non-positive entries in the hardest-positive search: below every cosine.
_NO_POSITIVE_FILL = -2.0


def positive_mask(labels: Array, valid: Array | None = None) -> Array:
    """Boolean ``(B, B)`` mask: ``[i, p]`` is True when ``p != i``, ``y_p == y_i`` and both are valid."""
    labels = jnp.asarray(labels)
    b = labels.shape[0]
    same = labels[:, None] == labels[None, :]
    mask = same & ~jnp.eye(b, dtype=bool)
    if valid is not None:
        valid = jnp.asarray(valid, dtype=bool)
        mask = mask & valid[:, None] & valid[None, :]
    return mask


def _check_batch(name: str, z: Array, labels: Array, valid: Array | None) -> None:
    if z.ndim != 2:
        raise ValueError(
            f"jaxforget.losses.{name}: embeddings must be (B, d), got shape {z.shape}; "
            "flatten extra axes first.")
    if labels.shape != (z.shape[0],):
        raise ValueError(
            f"jaxforget.losses.{name}: labels must be ({z.shape[0]},) to match embeddings "
            f"{z.shape}, got {labels.shape}.")
    if valid is not None and valid.shape != (z.shape[0],):
        raise ValueError(
            f"jaxforget.losses.{name}: valid mask must be ({z.shape[0]},), got {valid.shape}.")


def masked_dispersion(cos: Array, pos: Array, margin: Array | float, hard: bool) -> tuple[Array, Array]:
    """Dispersion from a cosine matrix and a positive mask (the shared core of every variant).

    Args:
      cos: ``(N, M)`` cosines between anchors (rows) and candidates (columns).
      pos: ``(N, M)`` boolean mask, True where the candidate is a positive of the anchor.
      margin: ``m_d``; pairs with cosine below it get no gradient.
      hard: use only the hardest (most similar) positive of each anchor (Eq. 6) instead of the mean
        over positives (Eq. 5).

    Returns:
      ``(loss, num_anchors)``: the scalar loss (0 when no anchor has a positive) and ``|A|``.
    """
    margin = jnp.asarray(margin, cos.dtype)
    counts = jnp.sum(pos, axis=1)
    is_anchor = counts > 0
    num_anchors = jnp.sum(is_anchor)
    if hard:
        hardest = jnp.max(jnp.where(pos, cos, _NO_POSITIVE_FILL), axis=1)
        per_anchor = jnp.maximum(hardest, margin)
    else:
        clipped = jnp.where(pos, jnp.maximum(cos, margin), 0.0)
        per_anchor = jnp.sum(clipped, axis=1) / jnp.maximum(counts, 1).astype(cos.dtype)
    total = jnp.sum(jnp.where(is_anchor, per_anchor, 0.0))
    loss = total / jnp.maximum(num_anchors, 1).astype(cos.dtype)
    return loss, num_anchors


def _dispersion(z: Array, labels: Array, margin: Array, valid: Array | None, hard: bool) -> Array:
    z = l2_normalize(jnp.asarray(z, jnp.float32))
    cos = z @ z.T
    loss, _ = masked_dispersion(cos, positive_mask(labels, valid), margin, hard)
    return loss


@jax.jit
def dispersion_loss(z: Array, labels: Array, margin: Array | float = 0.0,
                    valid: Array | None = None) -> Array:
    """Dispersion loss (paper Eq. 5): mean over anchors of the mean clipped cosine to positives.

    Args:
      z: ``(B, d)`` embeddings, raw or normalised (they are L2-normalised here).
      labels: ``(B,)`` integer identity labels.
      margin: ``m_d``; ``max(cos, m_d)`` floors each pair so pairs already below it get no gradient.
      valid: optional ``(B,)`` boolean mask; False marks padding that is neither anchor nor positive.

    Returns:
      Scalar float32 loss; exactly 0 with zero gradient when no sample has a positive.
    """
    _check_batch("dispersion_loss", z, jnp.asarray(labels), valid)
    return _dispersion(z, labels, margin, valid, hard=False)


@jax.jit
def hard_dispersion_loss(z: Array, labels: Array, margin: Array | float = 0.0,
                         valid: Array | None = None) -> Array:
    """Hard dispersion loss (paper Eq. 6): mean over anchors of ``max(hardest positive cosine, m_d)``.

    Arguments as ``dispersion_loss``. Always ``>=`` the dispersion loss on the same batch, with
    equality when every anchor has exactly one positive.
    """
    _check_batch("hard_dispersion_loss", z, jnp.asarray(labels), valid)
    return _dispersion(z, labels, margin, valid, hard=True)


@partial(jax.jit, static_argnames=("positives", "hard"))
def multiview_dispersion_loss(z_views: Array, labels: Array, margin: Array | float = 0.0,
                              valid: Array | None = None, positives: str = "identity",
                              hard: bool = False) -> Array:
    """Dispersion across ``V`` augmented views of each image (beyond the paper; SimCLR-style).

    The ``V * B`` view embeddings form one cosine matrix. Positives of view ``(v, i)``:

    * ``positives='identity'`` (default): every other view whose image has the same identity --
      the other views of the same image *and* all views of other images of that identity. Views of
      one image always share its identity, so this is the paper's positive set grown by the views:
      an image whose identity appears once in the batch still has ``V - 1`` positives (its own
      views), so every forget image is pushed away from its own augmentations as well as from the
      rest of its identity. This is the project's default because it keeps the identity-level
      dispersion that drives the forgetting while adding the view-level term the paper proposes.
    * ``positives='image'``: only the other views of the same image (pure SimCLR-style view
      dispersion, no identity information).

    Args:
      z_views: ``(V, B, d)`` embeddings, view-major (``z_views[v, i]`` is view ``v`` of image ``i``).
      labels: ``(B,)`` identity labels of the images.
      margin: ``m_d`` as in ``dispersion_loss``.
      valid: optional ``(B,)`` mask of real (non-padded) images.
      positives: ``'identity'`` or ``'image'`` (static).
      hard: use the hardest positive per anchor (Eq. 6 style) instead of the mean (static).
    """
    if z_views.ndim != 3:
        raise ValueError(
            "jaxforget.losses.multiview_dispersion_loss: z_views must be (V, B, d), got shape "
            f"{z_views.shape}; stack the views on a new leading axis.")
    if positives not in ("identity", "image"):
        raise ValueError(
            "jaxforget.losses.multiview_dispersion_loss: positives must be 'identity' or 'image', "
            f"got {positives!r}.")
    v, b, d = z_views.shape
    labels = jnp.asarray(labels)
    _check_batch("multiview_dispersion_loss", z_views[0], labels, valid)
    z = l2_normalize(jnp.asarray(z_views, jnp.float32).reshape(v * b, d))
    image = jnp.tile(jnp.arange(b), v)
    key = jnp.tile(labels, v) if positives == "identity" else image
    valid_flat = None if valid is None else jnp.tile(jnp.asarray(valid, bool), v)
    pos = positive_mask(key, valid_flat)
    loss, _ = masked_dispersion(z @ z.T, pos, margin, hard)
    return loss


@jax.jit
def positive_cosine_stats(z: Array, labels: Array, valid: Array | None = None) -> dict[str, Array]:
    """Monitoring scalars: mean and max positive-pair cosine and the number of anchors."""
    z = l2_normalize(jnp.asarray(z, jnp.float32))
    cos = z @ z.T
    pos = positive_mask(labels, valid)
    n = jnp.sum(pos)
    mean = jnp.sum(jnp.where(pos, cos, 0.0)) / jnp.maximum(n, 1)
    mx = jnp.where(n > 0, jnp.max(jnp.where(pos, cos, _NO_POSITIVE_FILL)), 0.0)
    return {"pos_cos_mean": mean, "pos_cos_max": mx,
            "num_anchors": jnp.sum(jnp.any(pos, axis=1)).astype(jnp.float32)}
