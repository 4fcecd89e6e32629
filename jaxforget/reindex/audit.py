"""The deletion request's audit on a re-built index: do the forgotten people's photos still find each other?

Every photo of a forgotten person is a query against the whole gallery (its own photo left out):
its positives are that person's other photos, everyone else's photos are negatives. The exact
ranking gives R@1 / R@5 / R@10, mAP and the rank of the first same-person hit
(:func:`jaxforget.eval.metrics.retrieval_metrics`); the index the service loads is searched too
(:func:`jaxforget.eval.index.search`, scored by :func:`jaxforget.eval.metrics.topk_retrieval_metrics`),
so an approximate index's own answers are audited. Beside the same on ``before`` (an earlier
``OUT``, e.g. the old model's), the people are matched by name.

The audit holds the gallery's embeddings in memory (4 N d bytes: 200 MB for 100,000 photos of
512-d embeddings).
"""

from __future__ import annotations

import pathlib
from typing import Any, Mapping, Sequence

import faiss
import numpy as np

from jaxforget import workdir
from jaxforget.data.splits import Split
from jaxforget.errors import UserError
from jaxforget.eval.index import search
from jaxforget.eval.metrics import retrieval_metrics, topk_retrieval_metrics
from jaxforget.reindex.layout import INDEX, MANIFEST, Layout, read_metadata

INDEX_K = 100
#: Photos of the other people searched as well, for scale.
OTHERS = 1000


def forget_ids(forget: str | None, split: str | None) -> list[str]:
    """The people to audit: ``--forget=a,b`` or the forget identities of a run's ``split.json``."""
    if split:
        return [str(i) for i in Split.load(split).forget_ids]
    ids = [s.strip() for s in (forget or "").split(",") if s.strip()]
    if not ids:
        raise UserError("--forget names no person; give --forget=<person>,<person> or --split=<run>/split.json")
    return ids


def load_out(out: pathlib.Path) -> dict[str, Any]:
    """A finished ``OUT``'s embeddings (float32, in shard order) with their persons and rows."""
    try:
        manifest = workdir.read_json(out / MANIFEST)
    except (OSError, ValueError):
        raise UserError(f"{out} holds no readable {MANIFEST}; give an OUT written by jaxforget.reindex") from None
    if manifest.get("status") != "complete":
        raise UserError(f"{out} is not a finished re-index (status {manifest.get('status')!r}); run it to the "
                        "end first")
    layout = Layout(out, manifest["shards"]["total"])
    emb, persons, rows = [], [], []
    columns = ["person", "row"] if manifest["settings"]["gallery"]["has_person"] else ["row"]
    for k in manifest["shards"]["with_embeddings"]:
        emb.append(np.asarray(np.load(layout.emb(k), mmap_mode="r"), np.float32))
        meta = read_metadata(layout.meta(k), columns)
        persons += meta.get("person", [None] * len(meta["row"]))
        rows += meta["row"]
    return {"manifest": manifest, "emb": np.concatenate(emb), "persons": persons,
            "rows": np.asarray(rows, np.int64), "index": out / INDEX}


def _ranks(emb: np.ndarray, labels: np.ndarray, rows: np.ndarray, q: np.ndarray) -> tuple[dict, np.ndarray]:
    """Exact metrics of queries ``q`` (indices) against the whole gallery, and their first ranks."""
    exact = retrieval_metrics(emb[q], labels[q], emb, labels, rows[q], rows, return_per_query=True)
    first = exact.pop("per_query_first_rank")
    exact.pop("per_query_ap")
    return exact, first


def _audit_one(data: Mapping[str, Any], people: Sequence[str], others: int = OTHERS, seed: int = 0) -> dict[str, Any]:
    label_of = {p: i for i, p in enumerate(people)}
    labels = np.asarray([label_of.get(p, -1) for p in data["persons"]], np.int64)
    q = np.flatnonzero(labels >= 0)
    found = sorted({data["persons"][i] for i in q})
    if not len(q):
        return {"photos": 0, "people_found": []}
    emb, rows = data["emb"], data["rows"]
    exact, first = _ranks(emb, labels, rows, q)
    evaluated = first > 0
    per_person = {}
    for person in found:
        mine = (labels[q] == label_of[person]) & evaluated
        if mine.any():
            per_person[person] = {"photos": int(np.sum(labels[q] == label_of[person])),
                                  "R@1": float(np.mean(first[mine] <= 1)),
                                  "median_first_rank": float(np.median(first[mine]))}
    out: dict[str, Any] = {
        "photos": int(len(q)), "gallery": int(len(emb)), "people_found": found, "exact": exact,
        "first_same_person_rank": {"median": float(np.median(first[evaluated])) if evaluated.any() else None,
                                   "mean": float(np.mean(first[evaluated])) if evaluated.any() else None,
                                   "best": int(first[evaluated].min()) if evaluated.any() else None},
        "per_person": per_person,
    }
    # everyone else, for scale: a sample of the other people's photos searched the same way
    names = {p: i for i, p in enumerate(sorted({p for p in data["persons"] if p is not None and p not in label_of}))}
    if names:
        other_labels = np.asarray([names.get(p, -1) for p in data["persons"]], np.int64)
        pool = np.flatnonzero(other_labels >= 0)
        sample = np.sort(np.random.default_rng(seed).choice(pool, min(others, len(pool)), replace=False))
        out["others"] = {"people": len(names), **_ranks(emb, other_labels, rows, sample)[0]}
    if pathlib.Path(data["index"]).exists():
        index = faiss.read_index(str(data["index"]))
        k = min(INDEX_K, index.ntotal)
        _, ids = search(index, emb[q], k)
        position = {int(r): i for i, r in enumerate(rows)}
        positions = np.vectorize(lambda r: position.get(int(r), -1), otypes=[np.int64])(ids)
        out["index"] = {"searched_top": int(k), **topk_retrieval_metrics(positions, labels[q], labels, rows[q], rows)}
    return out


def audit(out: pathlib.Path, people: Sequence[str], before: pathlib.Path | None = None) -> dict[str, Any]:
    """The audit of ``people`` on ``out`` (and on ``before`` when given)."""
    after = load_out(out)
    if not after["manifest"]["settings"]["gallery"]["has_person"]:
        raise UserError(f"the gallery of {out} has no people (photos directly in the folder, a list without a person "
                        "column, or tar shards without .cls): --forget needs ROOT/<person>/<photo>")
    result = {"people": list(people), "after": {"out": str(out), **_audit_one(after, people)}}
    if not result["after"]["photos"]:
        known = sorted({p for p in after["persons"] if p is not None})
        raise UserError(f"none of the people {', '.join(people)} is in the gallery of {out} (it has "
                        f"{len(known)}: {', '.join(known[:5])}{'...' if len(known) > 5 else ''})")
    if before is not None:
        result["before"] = {"out": str(before), **_audit_one(load_out(before), people)}
    return result


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:6.1f}%"


def format_audit(result: Mapping[str, Any]) -> str:
    """The printed audit table."""
    a = result["after"]
    lines = [f"audit of the forgotten people ({', '.join(result['people'])}): {a['photos']} photos, each searched "
             f"among the gallery's {a['gallery']} (its own photo left out)",
             f"  {'':<8} {'R@1':>7} {'R@10':>7} {'mAP':>7}   {'first same-person hit':>21}   {'R@1 in':>9}   "
             f"{'others':>7} {'others':>7}",
             f"  {'':<8} {'':>7} {'':>7} {'':>7}   {'median':>10} {'mean':>10}   {'the index':>9}   "
             f"{'R@1':>7} {'mAP':>7}"]
    for name in ("before", "after"):
        if name not in result or not result[name]["photos"]:
            continue
        r = result[name]
        e, f = r["exact"], r["first_same_person_rank"]
        idx = _pct(r["index"]["R@1"]) if "index" in r else "-"
        o = r.get("others", {})
        lines.append(f"  {name:<8} {_pct(e['R@1'])} {_pct(e['R@10'])} {_pct(e['mAP'])}   {f['median']:>10.0f} "
                     f"{f['mean']:>10.1f}   {idx:>9}   {_pct(o.get('R@1')):>7} {_pct(o.get('mAP')):>7}")
    for person in a["per_person"]:
        row = f"  {person}: after R@1 {_pct(a['per_person'][person]['R@1']).strip()}, median first hit rank " \
              f"{a['per_person'][person]['median_first_rank']:.0f}"
        b = result.get("before", {}).get("per_person", {}).get(person)
        if b:
            row += f" (before {_pct(b['R@1']).strip()}, rank {b['median_first_rank']:.0f})"
        lines.append(row)
    if "others" in a:
        lines.append(f"  others: {min(OTHERS, a['gallery'] - a['photos'])} photos of the {a['others']['people']} other "
                     "people, searched the same way")
    return "\n".join(lines)
