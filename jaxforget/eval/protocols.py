"""The paper's evaluation protocols, assembled from embedding sets and chosen by name in configs.

A protocol reads named embedding sets (``EvalSets``: a mapping from set name to
:class:`~jaxforget.eval.embed.Embeddings` or :class:`PairSet`) and returns a flat dict of metrics.
Standard set names (the runner embeds what the configured protocols need):

=================  ==========================================================================
``forget_train``   D_f train (unlearning images of the forget identities); centroids for ``acc``
``forget_test``    D_f test (queries of the forget benchmark)
``retain_train``   retain identities' training images; centroids for ``acc``
``retain_test``    held-out images of retain identities (default source of ``retain_search``)
``distractors``    distractor gallery (IJB-B in the paper); labels are ignored and set to -1
``cfp_frontal``    CFP frontal images, ``cfp_profile`` CFP profile images (labels = subject)
any other name     a labelled source for ``retain_search:<name>`` (VGGFace2 test, ORL, ...) or
                   a :class:`PairSet` for ``verification:<name>``
=================  ==========================================================================

Protocols (``PROTOCOLS``; a config lists names, e.g. ``evals=('forget_base', 'retain_search')``;
``name:arg`` picks the source set):

* ``forget_base``: queries = forget test, gallery = the same set minus the query's own image.
  Adds ``CS`` over the forget test embeddings and, when ``forget_train`` is present, centroid
  ``acc`` of forget test images against the centroids of every train identity present
  (``forget_train`` plus ``retain_train``, the model's label space).
* ``forget_extended``: as base, the gallery also holds every distractor (label -1, never a match).
* ``retain_search[:source]``: each identity's images (source ``retain_test`` by default) are split
  into a query half (``n // 2`` images) and a gallery half (the rest), by a permutation seeded
  with ``(seed, label)`` over the identity's rows in set order (the runner's sets are in record
  order, so the split is deterministic for a given split and seed); identities
  with a single image can't be queried and join the gallery as negatives (counted in
  ``num_single_image_identities``). ``CS`` over the whole source; ``acc`` only for the default
  source when ``retain_train`` is present (other sources have their own label spaces).
* ``cfp_fp`` / ``cfp_fp_extended``: queries = frontal images, gallery = profile images
  (plus distractors for extended); a frontal image's positives are its subject's profiles.
* ``reid_audit``: attackers (1-NN and a linear probe) fit on forget train embeddings identify
  forget test images (:mod:`jaxforget.eval.audit`): ``knn_acc``, ``probe_acc``, ``chance``.
* ``verification[:name]``: 10-fold accuracy and TAR@FAR on a :class:`PairSet` (all pair sets when
  no name is given; results are keyed ``verification/<name>``).

Every retrieval protocol returns ``mAP``, ``R@1``, ``R@5``, ``R@10`` (fractions in [0, 1]),
``num_queries`` and ``num_skipped`` (see :mod:`jaxforget.eval.metrics` for the exact rules).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Union

import numpy as np

from jaxforget.eval import metrics as M
from jaxforget.eval import verification as V
from jaxforget.eval.embed import Embeddings


@dataclasses.dataclass
class PairSet:
    """Verification pairs: ``emb`` (2N, d) with pair i on rows 2i, 2i+1; ``issame`` (N,) bool."""

    emb: np.ndarray
    issame: np.ndarray
    folds: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.emb = np.asarray(self.emb, np.float32)
        self.issame = np.asarray(self.issame, bool)
        if self.emb.ndim != 2 or self.emb.shape[0] != 2 * self.issame.shape[0]:
            raise ValueError(
                f"PairSet: emb has shape {self.emb.shape} for {self.issame.shape[0]} pairs; "
                "expected (2 * num_pairs, d) with each pair on consecutive rows"
            )


EvalSets = Mapping[str, Union[Embeddings, PairSet]]
Metrics = dict[str, Any]


def _distractor_gallery(base: Embeddings, distractors: Embeddings | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gallery = base (+ distractors labelled -1). Ids are rows of ``base``; distractors get -1-j."""
    ids = np.arange(len(base), dtype=np.int64)
    if distractors is None:
        return base.emb, base.labels.astype(np.int64), ids
    if distractors.dim != base.dim:
        raise ValueError(f"distractors have dimension {distractors.dim} but the base set has {base.dim}")
    emb = np.concatenate([base.emb, distractors.emb])
    labels = np.concatenate([base.labels.astype(np.int64), np.full(len(distractors), -1, np.int64)])
    ids = np.concatenate([ids, -1 - np.arange(len(distractors), dtype=np.int64)])
    return emb, labels, ids


def _self_search(base: Embeddings, distractors: Embeddings | None, **kw: Any) -> Metrics:
    g_emb, g_lab, g_ids = _distractor_gallery(base, distractors)
    out = M.retrieval_metrics(
        base.emb, base.labels.astype(np.int64), g_emb, g_lab,
        query_ids=np.arange(len(base), dtype=np.int64), gallery_ids=g_ids, **kw,
    )
    out["gallery_size"] = int(len(g_emb) - 1)
    out["num_distractors"] = 0 if distractors is None else len(distractors)
    return out


def _identity_metrics(test: Embeddings, train: Embeddings | None) -> Metrics:
    out: Metrics = {}
    cs = M.compactness_score(test.emb, test.labels.astype(np.int64))
    out["CS"] = cs["CS"]
    out["num_identities"] = cs["num_identities"] + cs["num_identities_skipped"]
    if train is not None and len(train):
        acc = M.centroid_accuracy(train.emb, train.labels.astype(np.int64), test.emb, test.labels.astype(np.int64))
        out["acc"] = acc["acc"]
        out["acc_num_skipped"] = acc["num_skipped"]
    return out


def _centroid_train(sets: EvalSets) -> Embeddings | None:
    parts = [sets[k] for k in ("forget_train", "retain_train") if isinstance(sets.get(k), Embeddings)]
    return Embeddings.concatenate(parts) if parts else None


def forget_base(forget_test: Embeddings, centroid_train: Embeddings | None = None, **kw: Any) -> Metrics:
    """Queries = forget test images; gallery = the same set minus the query itself."""
    out = _self_search(forget_test, None, **kw)
    out.update(_identity_metrics(forget_test, centroid_train))
    return out


def forget_extended(
    forget_test: Embeddings, distractors: Embeddings, centroid_train: Embeddings | None = None, **kw: Any
) -> Metrics:
    """As :func:`forget_base` with every distractor added to the gallery (never a positive)."""
    out = _self_search(forget_test, distractors, **kw)
    out.update(_identity_metrics(forget_test, centroid_train))
    return out


def split_query_gallery(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Per identity: a seeded permutation; the first ``n // 2`` rows are queries, the rest gallery.

    Returns ``(query_rows, gallery_rows, num_single_image_identities)``; single-image identities
    (and negative labels) go to the gallery only.
    """
    labels = np.asarray(labels).astype(np.int64)
    q_rows, g_rows, singles = [], [], 0
    for lab, idx in M._group_index(labels).items():
        if lab < 0 or idx.size < 2:
            singles += int(lab >= 0)
            g_rows.append(idx)
            continue
        perm = idx[np.random.default_rng([int(seed), int(lab)]).permutation(idx.size)]
        q_rows.append(perm[: idx.size // 2])
        g_rows.append(perm[idx.size // 2 :])
    cat = lambda xs: np.sort(np.concatenate(xs)) if xs else np.zeros(0, np.int64)  # noqa: E731
    return cat(q_rows), cat(g_rows), singles


def retain_search(source: Embeddings, seed: int = 0, centroid_train: Embeddings | None = None, **kw: Any) -> Metrics:
    """Query / gallery halves per identity of a labelled source (see the module docstring)."""
    q_rows, g_rows, singles = split_query_gallery(source.labels, seed)
    if q_rows.size == 0:
        raise ValueError("retain_search: no identity in the source has two or more images")
    out = M.retrieval_metrics(
        source.emb[q_rows], source.labels[q_rows].astype(np.int64),
        source.emb[g_rows], source.labels[g_rows].astype(np.int64), **kw,
    )
    out["gallery_size"] = int(g_rows.size)
    out["num_single_image_identities"] = singles
    out.update(_identity_metrics(source, centroid_train))
    return out


def cfp_fp(frontal: Embeddings, profile: Embeddings, distractors: Embeddings | None = None, **kw: Any) -> Metrics:
    """Frontal-to-profile search: queries = frontal images, gallery = profiles (+ distractors)."""
    g_emb, g_lab, _ = _distractor_gallery(profile, distractors)
    out = M.retrieval_metrics(frontal.emb, frontal.labels.astype(np.int64), g_emb, g_lab, **kw)
    out["gallery_size"] = int(len(g_emb))
    out["num_distractors"] = 0 if distractors is None else len(distractors)
    return out


def verification(pairs: PairSet, **kw: Any) -> Metrics:
    """10-fold accuracy and TAR@FAR on a pair set."""
    return V.verify_bin(pairs.emb, pairs.issame, folds=pairs.folds, **kw)


# ----------------------------------------------------------------------------------------------
# Registry


def _need(sets: EvalSets, key: str, protocol: str, kind: type = Embeddings) -> Any:
    v = sets.get(key)
    if not isinstance(v, kind):
        have = sorted(sets)
        raise KeyError(
            f"protocol {protocol!r} needs the embedding set {key!r} ({kind.__name__}); the sets "
            f"given are {have}. Embed that source, or remove {protocol!r} from config evals."
        )
    return v


def _run_forget_base(sets: EvalSets, arg: str | None, opts: Mapping[str, Any]) -> dict[str, Metrics]:
    return {"forget_base": forget_base(_need(sets, arg or "forget_test", "forget_base"), _centroid_train(sets), **opts)}


def _run_forget_extended(sets: EvalSets, arg: str | None, opts: Mapping[str, Any]) -> dict[str, Metrics]:
    return {
        "forget_extended": forget_extended(
            _need(sets, "forget_test", "forget_extended"),
            _need(sets, arg or "distractors", "forget_extended"),
            _centroid_train(sets), **opts,
        )
    }


def _run_retain_search(sets: EvalSets, arg: str | None, opts: Mapping[str, Any]) -> dict[str, Metrics]:
    key = arg or "retain_test"
    train = sets.get("retain_train") if key == "retain_test" else None
    name = "retain_search" if arg is None else f"retain_search:{arg}"
    seed = int(opts.get("seed", 0))
    kw = {k: v for k, v in opts.items() if k != "seed"}
    return {name: retain_search(_need(sets, key, name), seed=seed, centroid_train=train, **kw)}


def _run_cfp(extended: bool) -> Callable[[EvalSets, str | None, Mapping[str, Any]], dict[str, Metrics]]:
    def run(sets: EvalSets, arg: str | None, opts: Mapping[str, Any]) -> dict[str, Metrics]:
        name = "cfp_fp_extended" if extended else "cfp_fp"
        d = _need(sets, arg or "distractors", name) if extended else None
        return {name: cfp_fp(_need(sets, "cfp_frontal", name), _need(sets, "cfp_profile", name), d, **opts)}

    return run


def _run_verification(sets: EvalSets, arg: str | None, opts: Mapping[str, Any]) -> dict[str, Metrics]:
    names = [arg] if arg else sorted(k for k, v in sets.items() if isinstance(v, PairSet))
    if not names:
        raise KeyError(f"protocol 'verification' found no PairSet among the sets {sorted(sets)}")
    return {f"verification/{n}": verification(_need(sets, n, "verification", PairSet)) for n in names}


def _run_reid_audit(sets: EvalSets, arg: str | None, opts: Mapping[str, Any]) -> dict[str, Metrics]:
    from jaxforget.eval.audit import reid_audit  # pylint: disable=import-outside-toplevel

    return {"reid_audit": reid_audit(_need(sets, "forget_train", "reid_audit"),
                                     _need(sets, "forget_test", "reid_audit"))}


PROTOCOLS: dict[str, Callable[[EvalSets, str | None, Mapping[str, Any]], dict[str, Metrics]]] = {
    "forget_base": _run_forget_base,
    "forget_extended": _run_forget_extended,
    "retain_search": _run_retain_search,
    "cfp_fp": _run_cfp(False),
    "cfp_fp_extended": _run_cfp(True),
    "verification": _run_verification,
    "reid_audit": _run_reid_audit,
}

RETRIEVAL_OPTS = ("ks", "max_block_bytes", "gallery_chunk")


def required_sets(names: Iterable[str]) -> set[str]:
    """Names of the embedding sets the listed protocols read (for the runner to embed)."""
    need: set[str] = set()
    for full in names:
        name, _, arg = full.partition(":")
        if name not in PROTOCOLS:
            raise KeyError(f"unknown protocol {name!r}; known: {sorted(PROTOCOLS)}")
        if name in ("forget_base", "forget_extended", "reid_audit"):
            need |= {"forget_test", "forget_train"}
        if name == "forget_extended":
            need.add(arg or "distractors")
        if name == "retain_search":
            need |= {arg} if arg else {"retain_test", "retain_train"}
        if name.startswith("cfp_fp"):
            need |= {"cfp_frontal", "cfp_profile"}
        if name == "cfp_fp_extended":
            need.add(arg or "distractors")
        if name == "verification" and arg:
            need.add(arg)
    return need


def run_protocols(names: Iterable[str], sets: EvalSets, seed: int = 0, **opts: Any) -> dict[str, Metrics]:
    """Run each named protocol (``name`` or ``name:set``) and return ``{result_name: metrics}``.

    ``seed`` drives the retain query/gallery split; ``opts`` may hold retrieval options
    (``ks``, ``max_block_bytes``, ``gallery_chunk``).
    """
    bad = sorted(set(opts) - set(RETRIEVAL_OPTS))
    if bad:
        raise TypeError(f"run_protocols: unknown option(s) {bad}; allowed: {RETRIEVAL_OPTS}")
    results: dict[str, Metrics] = {}
    for full in names:
        name, _, arg = full.partition(":")
        if name not in PROTOCOLS:
            raise KeyError(f"unknown protocol {name!r} in evals; known: {sorted(PROTOCOLS)}")
        o = dict(opts, seed=seed) if name == "retain_search" else dict(opts)
        results.update(PROTOCOLS[name](sets, arg or None, o))
    return results
