"""t-SNE figure of forget and retain identities before and after unlearning (paper Fig. 1 style).

Two panels ("Original", "Unlearned"), each its own t-SNE of the same images: forget identities in
strong colours with large filled markers, a sample of retain identities in light grey-blue small
markers. A good unlearning method scatters the forget clusters while retain clusters stay tight.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

from jaxforget.eval.embed import Embeddings  # noqa: E402


def _select_rows(labels: np.ndarray, forget: set[int], num_retain_ids: int, max_per_id: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    uniq = np.unique(labels[labels >= 0])
    retain_ids = np.array([u for u in uniq if int(u) not in forget])
    if retain_ids.size > num_retain_ids:
        retain_ids = np.sort(rng.choice(retain_ids, num_retain_ids, replace=False))
    rows = []
    for u in list(sorted(forget)) + retain_ids.tolist():
        idx = np.flatnonzero(labels == u)
        if idx.size > max_per_id:
            idx = np.sort(rng.choice(idx, max_per_id, replace=False))
        rows.append(idx)
    return np.concatenate(rows) if rows else np.zeros(0, np.int64)


def tsne_before_after(
    before: Embeddings,
    after: Embeddings,
    forget_labels: Sequence[int],
    path: str | os.PathLike,
    num_retain_ids: int = 10,
    max_per_id: int = 40,
    seed: int = 0,
    perplexity: float = 30.0,
    title: str | None = None,
    max_iter: int = 1000,
) -> pathlib.Path:
    """Save a two-panel t-SNE PNG and return its path.

    ``before`` and ``after`` must hold the same images in the same order (embedded by the original
    and the unlearned model). ``forget_labels`` names the forget identities; other labels are
    retain identities, of which ``num_retain_ids`` are drawn (seeded). ``max_iter`` is t-SNE's
    optimisation length (scikit-learn's minimum is 250).
    """
    if len(before) != len(after) or not np.array_equal(before.labels, after.labels):
        raise ValueError(
            f"before ({len(before)} rows) and after ({len(after)} rows) must hold the same images in the "
            "same order with the same labels; embed one source with both models"
        )
    forget = {int(x) for x in forget_labels}
    labels = np.asarray(before.labels).astype(np.int64)
    missing = sorted(forget - set(labels.tolist()))
    if missing:
        raise ValueError(f"forget_labels {missing} have no image among the embeddings")
    rows = _select_rows(labels, forget, num_retain_ids, max_per_id, seed)
    if rows.size < 5:
        raise ValueError(f"t-SNE needs at least 5 points, got {rows.size}")
    lab = labels[rows]
    is_f = np.isin(lab, list(forget))
    perp = float(min(perplexity, max(2.0, (rows.size - 1) / 3.0)))

    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2))
    colors = plt.get_cmap("tab10" if len(forget) <= 10 else "tab20")
    f_order = {u: i for i, u in enumerate(sorted(forget))}
    for ax, emb, name in ((axes[0], before.emb, "Original"), (axes[1], after.emb, "Unlearned")):
        xy = TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed, metric="cosine", max_iter=max_iter).fit_transform(
            np.asarray(emb[rows], np.float32)
        )
        ax.scatter(xy[~is_f, 0], xy[~is_f, 1], s=10, c="#9fb3c8", marker="x", linewidths=0.8, label="retain")
        for u in sorted(forget):
            m = lab == u
            ax.scatter(xy[m, 0], xy[m, 1], s=28, color=colors(f_order[u] % colors.N), edgecolors="k", linewidths=0.3)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [
        plt.Line2D([], [], marker="o", ls="", color=colors(0), markeredgecolor="k", label="forget identities (one colour each)"),
        plt.Line2D([], [], marker="x", ls="", color="#9fb3c8", label="retain identities"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=2, frameon=False)
    fig.suptitle(title or "t-SNE of face embeddings before and after unlearning")
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
