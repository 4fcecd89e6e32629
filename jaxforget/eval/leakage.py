"""Leakage check: does a distractor or retain set hold a forgotten person under another label?

The paper checks that its distractor gallery shares no identity with the forget set. This module
makes that check a measurement, using the (original) model's embeddings:

* identity centroids (L2-renormalised mean embedding) of every forget identity are compared with
  the centroids of every identity of the other set; images of the other set with a negative label
  (unlabelled distractors) each count as their own identity;
* the most similar cross-set image pairs (forget image, other image) are listed;
* anything above ``centroid_threshold`` / ``pair_threshold`` is flagged.

To make the thresholds interpretable the report also gives two references from the forget set
itself: the *same-identity* similarity (centroid of one half of an identity's images against the
centroid of the other half) and the largest *different-identity* centroid similarity between
forget identities. A flagged score near the same-identity reference means a likely leak.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxforget.eval.embed import Embeddings
from jaxforget.eval.metrics import _group_index, identity_centroids


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def _other_centroids(other: Embeddings) -> tuple[list[str], np.ndarray]:
    labels = np.asarray(other.labels).astype(np.int64)
    names: list[str] = []
    cents: list[np.ndarray] = []
    if np.any(labels >= 0):
        labs, c = identity_centroids(other.emb, labels)
        names += [f"label {int(l)}" for l in labs]
        cents.append(c)
    unl = np.flatnonzero(labels < 0)
    if unl.size:
        names += [f"image {other.image_ids[i]}" for i in unl]
        cents.append(_normalise(other.emb[unl]))
    return names, np.concatenate(cents) if cents else np.zeros((0, other.dim), np.float32)


def _top_pairs(a: np.ndarray, b: np.ndarray, k: int, chunk: int = 16384) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global top-k entries of a @ b.T, computed in chunks of b. Returns (rows, cols, scores) best first."""
    best_s = np.zeros(0, np.float32)
    best_r = np.zeros(0, np.int64)
    best_c = np.zeros(0, np.int64)
    for s in range(0, b.shape[0], chunk):
        sims = a @ b[s : s + chunk].T
        flat = sims.ravel()
        kk = min(k, flat.size)
        idx = np.argpartition(-flat, kk - 1)[:kk]
        r, c = np.unravel_index(idx, sims.shape)
        best_s = np.concatenate([best_s, flat[idx]])
        best_r = np.concatenate([best_r, r])
        best_c = np.concatenate([best_c, c + s])
        keep = np.argsort(-best_s, kind="stable")[:k]
        best_s, best_r, best_c = best_s[keep], best_r[keep], best_c[keep]
    return best_r, best_c, best_s


def leakage_check(
    forget: Embeddings,
    other: Embeddings,
    centroid_threshold: float = 0.5,
    pair_threshold: float = 0.6,
    top_identities: int = 3,
    top_pairs: int = 20,
) -> dict[str, Any]:
    """Compare forget identities with another set; returns a JSON-ready report (see module docstring)."""
    if forget.dim != other.dim:
        raise ValueError(f"forget embeddings have dimension {forget.dim} but the other set has {other.dim}")
    f_labels = np.asarray(forget.labels).astype(np.int64)
    if not np.any(f_labels >= 0):
        raise ValueError("leakage_check: the forget set has no labelled image (labels must be >= 0)")
    f_labs, f_cent = identity_centroids(forget.emb, f_labels)
    o_names, o_cent = _other_centroids(other)
    if len(o_names) == 0:
        raise ValueError("leakage_check: the other set is empty")

    sims = f_cent @ o_cent.T  # (F, O)
    per_identity = []
    for i, lab in enumerate(f_labs):
        k = min(top_identities, sims.shape[1])
        top = np.argsort(-sims[i], kind="stable")[:k]
        per_identity.append({
            "forget_label": int(lab),
            "max_similarity": float(sims[i, top[0]]),
            "nearest": [{"other": o_names[j], "similarity": float(sims[i, j])} for j in top],
            "flagged": bool(sims[i, top[0]] > centroid_threshold),
        })

    fe, oe = _normalise(forget.emb), _normalise(other.emb)
    r, c, s = _top_pairs(fe, oe, top_pairs)
    pairs = [{
        "forget_image": forget.image_ids[ri].item(),
        "forget_label": int(f_labels[ri]),
        "other_image": other.image_ids[ci].item(),
        "other_label": int(other.labels[ci]),
        "similarity": float(si),
        "flagged": bool(si > pair_threshold),
    } for ri, ci, si in zip(r, c, s)]

    # references from the forget set itself
    same = []
    for lab, idx in _group_index(f_labels).items():
        if lab < 0 or idx.size < 2:
            continue
        a, b = _normalise(fe[idx[0::2]].mean(0)), _normalise(fe[idx[1::2]].mean(0))
        same.append(float(a @ b))
    cross = f_cent @ f_cent.T
    np.fill_diagonal(cross, -np.inf)
    refs = {
        "same_identity_half_centroid_similarity_mean": float(np.mean(same)) if same else None,
        "same_identity_half_centroid_similarity_min": float(np.min(same)) if same else None,
        "max_different_forget_identity_centroid_similarity": float(cross.max()) if len(f_labs) > 1 else None,
    }
    return {
        "num_forget_identities": int(len(f_labs)),
        "num_other_identities": int(len(o_names)),
        "num_other_images": int(len(other)),
        "centroid_threshold": float(centroid_threshold),
        "pair_threshold": float(pair_threshold),
        "references": refs,
        "identities": per_identity,
        "top_pairs": pairs,
        "num_flagged_identities": int(sum(p["flagged"] for p in per_identity)),
        "num_flagged_pairs": int(sum(p["flagged"] for p in pairs)),
    }


def format_leakage_report(rep: dict[str, Any]) -> str:
    """Readable text version of :func:`leakage_check`'s report."""
    lines = [
        f"Leakage check: {rep['num_forget_identities']} forget identities vs "
        f"{rep['num_other_identities']} other identities ({rep['num_other_images']} images)",
        f"thresholds: centroid > {rep['centroid_threshold']:.3f}, image pair > {rep['pair_threshold']:.3f}",
    ]
    ref = rep["references"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines.append(
        "references: same identity (half vs half centroid) mean "
        f"{fmt(ref['same_identity_half_centroid_similarity_mean'])}, min "
        f"{fmt(ref['same_identity_half_centroid_similarity_min'])}; different forget identities max "
        f"{fmt(ref['max_different_forget_identity_centroid_similarity'])}"
    )
    lines.append("")
    lines.append(f"{'forget id':>10}  {'max sim':>8}  flag  nearest other identities")
    for p in rep["identities"]:
        near = ", ".join(f"{n['other']} ({n['similarity']:.3f})" for n in p["nearest"])
        lines.append(f"{p['forget_label']:>10}  {p['max_similarity']:8.3f}  {'YES ' if p['flagged'] else 'no  '}  {near}")
    lines.append("")
    lines.append("most similar cross-set image pairs:")
    for p in rep["top_pairs"]:
        lines.append(
            f"  {p['similarity']:.3f} {'FLAG' if p['flagged'] else '    '}  forget {p['forget_image']} "
            f"(label {p['forget_label']})  ~  other {p['other_image']} (label {p['other_label']})"
        )
    lines.append("")
    verdict = (
        "no identity or pair above the thresholds"
        if rep["num_flagged_identities"] == 0 and rep["num_flagged_pairs"] == 0
        else f"{rep['num_flagged_identities']} identities and {rep['num_flagged_pairs']} pairs flagged: inspect them"
    )
    lines.append("verdict: " + verdict)
    return "\n".join(lines)
