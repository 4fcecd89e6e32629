"""Identity-subspace projection: closed-form forgetting folded into the backbone (beyond the paper).

The original model's embeddings of the forget **train** images give one centroid direction per
forget identity. The unlearned model is the original followed by the linear map
``M = I - Q Q^T`` (``Q``: an orthonormal basis of the centroid directions), which removes those
``k`` directions from every embedding before L2 normalisation. What is left of a forget image is
its residual around its identity's mean (pose, light, expression, and whatever the centroid of
a few train images misses); retain identities lose only their small components along the ``k``
removed directions.

``M`` is folded into the backbone's last linear layer and the BatchNorm after it (eval-mode
statistics), so the result is an ordinary backbone checkpoint with the same parameter names and
shapes, exportable to PyTorch like any other. Both architectures end with ``linear -> BatchNorm``::

    y = D * (K^T h + b - mu) + beta,        D = scale / sqrt(var + eps)

and ``M y`` is the same form with ``K' = K diag(D) M^T diag(1/D)``, ``b' = b`` and
``beta' = M (D (b - mu) + beta) - D (b - mu)``.

Used as the method ``project`` (no training) or as ``method.project=True`` before any trained
method (the training then starts from the projected model).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxforget.methods.record import Method
from jaxforget.models.layers import BN_EPSILON
from jaxforget.models.registry import FAMILIES



def identity_basis(emb: np.ndarray, labels: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """An orthonormal basis ``(d, k)`` of the identities' centroid directions.

    ``emb``: ``(N, d)`` embeddings (normalised per row here), ``labels``: ``(N,)``. Each
    identity's centroid is the mean of its normalised embeddings; centroids that are (numerically)
    linear combinations of the others add no direction.
    """
    emb = np.asarray(emb, np.float64)
    labels = np.asarray(labels)
    if emb.ndim != 2 or labels.shape != (emb.shape[0],) or not len(emb):
        raise ValueError(f"identity_basis: need (N, d) embeddings with (N,) labels, N >= 1; got "
                         f"{emb.shape} and {labels.shape}")
    z = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    cents = np.stack([z[labels == lab].mean(0) for lab in np.unique(labels)], axis=1)  # (d, k)
    u, s, _ = np.linalg.svd(cents, full_matrices=False)
    return u[:, s > tol * max(float(s.max()), 1e-12)]


def removal_matrix(basis: np.ndarray) -> np.ndarray:
    """``I - Q Q^T``: the orthogonal projection removing the span of ``basis`` (orthonormal)."""
    q = np.asarray(basis, np.float64)
    return np.eye(q.shape[0]) - q @ q.T


def _get(tree: Mapping[str, Any], path: tuple[str, ...]) -> Mapping[str, Any]:
    for key in path:
        tree = tree[key]
    return tree


def _replace(tree: Mapping[str, Any], path: tuple[str, ...], leaf: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``tree`` with the dict at ``path`` replaced (other branches shared)."""
    out = dict(tree)
    if len(path) == 1:
        out[path[0]] = leaf
    else:
        out[path[0]] = _replace(tree[path[0]], path[1:], leaf)
    return out


def fold_output_map(family: str, variables: Mapping[str, Any], m: np.ndarray) -> dict[str, Any]:
    """Variables whose eval-mode embedding is ``m @ y`` where ``y`` is the original embedding."""
    if family not in FAMILIES:
        raise ValueError(f"fold_output_map: no output layer known for model family {family!r}; "
                         f"known: {sorted(FAMILIES)}")
    # (last linear layer, BatchNorm after it) as paths into ``params`` / ``batch_stats``.
    lin_path, bn_path = FAMILIES[family].output_layer
    params, stats = variables["params"], variables["batch_stats"]
    lin, bn, st = dict(_get(params, lin_path)), dict(_get(params, bn_path)), _get(stats, bn_path)
    k = np.asarray(lin["kernel"], np.float64)
    d = k.shape[-1]
    m = np.asarray(m, np.float64)
    if m.shape != (d, d):
        raise ValueError(f"fold_output_map: map has shape {m.shape}, the embedding has {d} dims")
    scale = np.asarray(bn["scale"], np.float64) if "scale" in bn else np.ones(d)
    dvec = scale / np.sqrt(np.asarray(st["var"], np.float64) + BN_EPSILON)
    if np.any(np.abs(dvec) < 1e-8):
        raise ValueError("fold_output_map: the output BatchNorm has a (near-)zero scale; the map "
                         "cannot be folded into the layer before it")
    b = np.asarray(lin["bias"], np.float64) if "bias" in lin else np.zeros(d)
    c = dvec * (b - np.asarray(st["mean"], np.float64))
    dtype = np.asarray(lin["kernel"]).dtype
    lin["kernel"] = ((k * dvec) @ m.T / dvec).astype(dtype)
    bn["bias"] = (m @ (c + np.asarray(bn["bias"], np.float64)) - c).astype(dtype)
    out = dict(variables)
    params = _replace(params, lin_path, lin)
    out["params"] = _replace(params, bn_path, bn)
    return out


def project_identities(family: str, variables: Mapping[str, Any], emb: np.ndarray,
                       labels: np.ndarray) -> tuple[dict[str, Any], dict[str, Any]]:
    """Folds the removal of the identities' centroid directions (from ``emb``, ``labels``: the
    original model's forget-train embeddings) into ``variables``; returns (variables, info)."""
    basis = identity_basis(emb, labels)
    info = {"removed_dims": int(basis.shape[1]), "identities": int(len(np.unique(labels)))}
    return fold_output_map(family, variables, removal_matrix(basis)), info


def _no_loss(*args, **kwargs):
    raise RuntimeError("method 'project' is closed-form: it has no loss")


PROJECT = Method(
    name="project",
    needs=(),
    loss=_no_loss,
    description="remove the forget identities' centroid directions from the embedding "
                "(closed form, folded into the last layer; no training)",
    uses_head=False,
    generic_retain=False,
    closed_form=True,
    salun_loss="dispersion",
)
