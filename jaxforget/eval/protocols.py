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
``cfp_fp_pairs``   CFP's ``Protocol/Split/FP`` pairs as a :class:`PairSet` with its 10 folds;
                   ``cfp_ff_pairs`` the ``Split/FF`` ones
any other name     a labelled source for ``retain_search:<name>`` (VGGFace2 test, ORL, ...) or
                   a :class:`PairSet` for ``verification:<name>``
=================  ==========================================================================

Each protocol is one :class:`Protocol` record in ``PROTOCOLS``: its name, what it computes, the
sets it reads and the function that runs it; :func:`required_sets`, :func:`run_protocols` and the
runner (:mod:`jaxforget.eval.sets`) derive everything from the records. A config lists names,
e.g. ``evals=('forget_base', 'retain_search')``; ``name:arg`` picks the source set:

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
  (plus distractors for extended); a frontal image's positives are its subject's profiles. The
  paper's "CFP-FP (frontal-to-profile search)": 5,000 queries, 4 positives each in 2,000.
* ``cfp_fp_verification`` / ``cfp_ff_verification``: the standard CFP verification accuracy,
  10-fold over the official ``Split/FP`` (frontal vs profile) or ``Split/FF`` (frontal vs frontal)
  folds of 350 same + 350 different pairs, the threshold of each fold chosen on the other nine
  (:func:`jaxforget.eval.verification.kfold_accuracy`).
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
from jaxforget.eval.audit import reid_audit
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
# The records: what each protocol computes and the sets it reads


@dataclasses.dataclass(frozen=True)
class Protocol:
    """One evaluation protocol: what it computes and which sets it reads.

    ``sets`` are the sets it needs, by their standard names; ``optional`` ones are read when given
    (the train sets whose centroids give ``acc``). ``arg`` is the one of ``sets`` that
    ``name:<set>`` replaces; when it is not among ``sets`` (``verification``), the plain name reads
    every given set of type ``kind``. A protocol with ``arg=None`` ignores a ``:<set>`` suffix.
    ``run(inputs, arg, seed, opts)`` gets ``inputs`` keyed by the names in ``sets`` and
    ``optional`` (``None`` for an absent optional set) and returns ``{result name: metrics}``.
    """

    name: str
    doc: str
    run: Callable[[Mapping[str, Any], str | None, int, Mapping[str, Any]], dict[str, Metrics]]
    sets: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    arg: str | None = None
    kind: type = Embeddings

    def needs(self, arg: str | None = None) -> tuple[str, ...]:
        """The sets ``name[:arg]`` cannot run without (empty: every given set of ``kind``)."""
        if not arg or self.arg is None:
            return self.sets
        if self.arg not in self.sets:
            return (arg,)
        return tuple(arg if s == self.arg else s for s in self.sets)

    def reads(self, arg: str | None = None) -> tuple[str, ...]:
        """Every set ``name[:arg]`` reads: :meth:`needs`, then the optional ones."""
        need = self.needs(arg)
        return need + tuple(s for s in self.optional if s not in need)

    def inputs(self, sets: EvalSets, arg: str | None = None) -> dict[str, Any]:
        """The sets given for ``name[:arg]``, keyed as ``run`` reads them (KeyError: one missing)."""
        full = self.name if arg is None else f"{self.name}:{arg}"
        if self.arg is not None and self.arg not in self.sets and not arg:
            found = {k: v for k, v in sets.items() if isinstance(v, self.kind)}
            if not found:
                raise KeyError(f"protocol {full!r} found no {self.kind.__name__} among the sets "
                               f"{sorted(sets)}")
            return found
        out = {slot: _need(sets, name, full, self.kind)
               for slot, name in zip(self.sets or (self.arg,), self.needs(arg))}
        for slot in self.optional:
            v = sets.get(slot)
            out[slot] = v if isinstance(v, Embeddings) else None
        return out


def _need(sets: EvalSets, key: str, protocol: str, kind: type = Embeddings) -> Any:
    v = sets.get(key)
    if not isinstance(v, kind):
        have = sorted(sets)
        raise KeyError(
            f"protocol {protocol!r} needs the embedding set {key!r} ({kind.__name__}); the sets "
            f"given are {have}. Embed that source, or remove {protocol!r} from config evals."
        )
    return v


CENTROID_SETS = ("forget_train", "retain_train")  # the model's label space, for centroid ``acc``


def _centroid_train(inputs: Mapping[str, Any]) -> Embeddings | None:
    parts = [inputs[k] for k in CENTROID_SETS if inputs.get(k) is not None]
    return Embeddings.concatenate(parts) if parts else None


def _run_forget_base(inputs, arg, seed, opts) -> dict[str, Metrics]:
    return {"forget_base": forget_base(inputs["forget_test"], _centroid_train(inputs), **opts)}


def _run_forget_extended(inputs, arg, seed, opts) -> dict[str, Metrics]:
    return {"forget_extended": forget_extended(inputs["forget_test"], inputs["distractors"],
                                               _centroid_train(inputs), **opts)}


def _run_retain_search(inputs, arg, seed, opts) -> dict[str, Metrics]:
    # Other sources have their own label spaces: centroid ``acc`` only for the retain test set.
    train = inputs["retain_train"] if (arg or "retain_test") == "retain_test" else None
    name = "retain_search" if arg is None else f"retain_search:{arg}"
    return {name: retain_search(inputs["retain_test"], seed=seed, centroid_train=train, **opts)}


def _run_cfp_fp(inputs, arg, seed, opts) -> dict[str, Metrics]:
    return {"cfp_fp": cfp_fp(inputs["cfp_frontal"], inputs["cfp_profile"], None, **opts)}


def _run_cfp_fp_extended(inputs, arg, seed, opts) -> dict[str, Metrics]:
    return {"cfp_fp_extended": cfp_fp(inputs["cfp_frontal"], inputs["cfp_profile"],
                                      inputs["distractors"], **opts)}


def _run_verification(inputs, arg, seed, opts) -> dict[str, Metrics]:
    pairs = {arg: inputs["pairs"]} if arg else inputs
    return {f"verification/{n}": verification(pairs[n]) for n in sorted(pairs)}


def _run_cfp_verification(result: str, slot: str):
    def run(inputs, arg, seed, opts) -> dict[str, Metrics]:
        return {result: verification(inputs[slot])}

    return run


def _run_reid_audit(inputs, arg, seed, opts) -> dict[str, Metrics]:
    return {"reid_audit": reid_audit(inputs["forget_train"], inputs["forget_test"])}


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("forget_base", "self-search of the forget test images (queries = gallery minus the "
             "query itself); CS, centroid acc", _run_forget_base,
             sets=("forget_test",), optional=CENTROID_SETS, arg="forget_test"),
    Protocol("forget_extended", "forget_base with every distractor added to the gallery",
             _run_forget_extended, sets=("forget_test", "distractors"), optional=CENTROID_SETS,
             arg="distractors"),
    Protocol("retain_search", "per-identity query / gallery halves of a labelled source; CS, "
             "centroid acc for the retain test set", _run_retain_search,
             sets=("retain_test",), optional=("retain_train",), arg="retain_test"),
    Protocol("cfp_fp", "frontal-to-profile search on CFP", _run_cfp_fp,
             sets=("cfp_frontal", "cfp_profile")),
    Protocol("cfp_fp_extended", "cfp_fp with every distractor added to the gallery",
             _run_cfp_fp_extended, sets=("cfp_frontal", "cfp_profile", "distractors"),
             arg="distractors"),
    Protocol("cfp_fp_verification", "CFP-FP verification: 10-fold accuracy over the official "
             "Split/FP folds", _run_cfp_verification("cfp_fp_verification", "cfp_fp_pairs"),
             sets=("cfp_fp_pairs",), kind=PairSet),
    Protocol("cfp_ff_verification", "CFP-FF verification: 10-fold accuracy over the official "
             "Split/FF folds", _run_cfp_verification("cfp_ff_verification", "cfp_ff_pairs"),
             sets=("cfp_ff_pairs",), kind=PairSet),
    Protocol("verification", "10-fold accuracy and TAR@FAR on pair sets (every PairSet given, "
             "or the one named)", _run_verification, arg="pairs", kind=PairSet),
    Protocol("reid_audit", "1-NN and linear-probe attackers fit on forget train, tested on "
             "forget test", _run_reid_audit, sets=("forget_train", "forget_test")),
)}

RETRIEVAL_OPTS = ("ks", "max_block_bytes", "gallery_chunk")


def get_protocol(full: str) -> tuple[Protocol, str | None]:
    """The record and the ``:<set>`` argument of a config's protocol entry ``name[:set]``."""
    name, _, arg = full.partition(":")
    if name not in PROTOCOLS:
        raise KeyError(f"unknown protocol {name!r}; known: {sorted(PROTOCOLS)}")
    return PROTOCOLS[name], arg or None


def required_sets(names: Iterable[str]) -> set[str]:
    """Names of the embedding sets the listed protocols read (for the runner to embed)."""
    need: set[str] = set()
    for full in names:
        protocol, arg = get_protocol(full)
        need.update(protocol.reads(arg))
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
        protocol, arg = get_protocol(full)
        results.update(protocol.run(protocol.inputs(sets, arg), arg, seed, dict(opts)))
    return results
