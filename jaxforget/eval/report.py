"""Results files: ``results.json`` and ``results.md`` for one run, mean +- std tables over runs.

``results.json`` layout::

    {"original":  {"forget_base": {"mAP": 0.887, "R@1": 0.98, ..., "CS": 0.61, "acc": 0.98}, ...},
     "unlearned": {...},
     "meta": {"method": "hard_disp", "seed": 0, ...}}

Every retrieval metric is a fraction in [0, 1]; the Markdown tables show percentages with two
decimals (``CS`` is a cosine and stays a plain number with three decimals), like the paper.

Aggregation (:func:`aggregate`): rows are ``Original`` and one row per unlearning method
(``meta['label']``, a variant's name, or else ``meta['method']``); each cell is ``mean +- std``
over the runs in that row, with the sample standard deviation (``ddof=1``; ``+- 0.00`` shown for
a single run). The original model is shared by every method run on the same seed, so
``Original`` counts each ``meta['seed']`` once.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxforget import workdir as workdir_lib

STATES = ("original", "unlearned")
PERCENT_KEYS = ("mAP", "R@1", "R@5", "R@10", "acc", "acc_std", "mAP@K", "knn_acc", "probe_acc", "chance")
AUDIT_COLS = ("knn_acc", "probe_acc", "chance")
RETRIEVAL_COLS = ("mAP", "R@1")
IDENTITY_COLS = ("acc", "CS")


def _is_percent(key: str) -> bool:
    return key in PERCENT_KEYS or key.startswith("TAR@")


def fmt(key: str, value: Any) -> str:
    """One cell: percentages with two decimals for fractions, three decimals for CS."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        return str(value)
    if _is_percent(key):
        return f"{100.0 * float(value):.2f}"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.3f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _protocol_columns(states: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> tuple[list[str], list[str], list[str]]:
    """Protocol names in first-seen order, split into retrieval, identity-set and verification."""
    order: list[str] = []
    for per_proto in states.values():
        for p in per_proto:
            if p not in order:
                order.append(p)
    retr = [p for p in order if any("mAP" in states[s].get(p, {}) for s in states)]
    ident = [p for p in order if any("CS" in states[s].get(p, {}) for s in states)]
    ver = [p for p in order if any("acc" in states[s].get(p, {}) and "mAP" not in states[s].get(p, {}) for s in states)]
    return retr, ident, ver


def _audit_columns(states: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[str]:
    """Protocols reporting re-identification attack accuracies (``reid_audit``)."""
    return sorted({p for per in states.values() for p, m in per.items() if "knn_acc" in m})


# Results key prefix of a step curve's models (``step_<n>``; config ``train.curve_steps``).
CURVE_PREFIX = "step_"


def _row_label(state: str, meta: Mapping[str, Any]) -> str:
    if state == "original":
        return "Original"
    method = str(meta.get("label") or meta.get("method", state))
    if state.startswith(CURVE_PREFIX):
        return f"{method} @ {state[len(CURVE_PREFIX):]} steps"
    return method


def results_markdown(results: Mapping[str, Any]) -> str:
    """The paper-style tables for one run's ``results`` dict."""
    meta = results.get("meta", {}) or {}
    states = {s: results[s] for s in results if s != "meta" and isinstance(results[s], Mapping)}
    retr, ident, ver = _protocol_columns(states)
    parts = ["# Results", ""]
    if meta:
        parts += ["Run: " + ", ".join(f"{k}={v}" for k, v in meta.items() if not isinstance(v, (dict, list))), ""]
    if retr:
        header = ["Model"] + [f"{p} {c}" for p in retr for c in RETRIEVAL_COLS]
        rows = [[_row_label(s, meta)] + [fmt(c, states[s].get(p, {}).get(c)) for p in retr for c in RETRIEVAL_COLS] for s in states]
        parts += ["## Retrieval (mAP and R@1, %)", "", _table(header, rows), ""]
    if ident:
        header = ["Model"] + [f"{p} {c}" for p in ident for c in IDENTITY_COLS]
        rows = [[_row_label(s, meta)] + [fmt(c, states[s].get(p, {}).get(c)) for p in ident for c in IDENTITY_COLS] for s in states]
        parts += ["## Identity sets (centroid Acc %, Cluster Compactness CS)", "", _table(header, rows), ""]
    if ver:
        cols = ["acc"] + sorted({k for s in states for p in ver for k in states[s].get(p, {}) if k.startswith("TAR@")})
        header = ["Model"] + [f"{p} {c}" for p in ver for c in cols]
        rows = [[_row_label(s, meta)] + [fmt(c, states[s].get(p, {}).get(c)) for p in ver for c in cols] for s in states]
        parts += ["## Verification (%)", "", _table(header, rows), ""]
    audit = _audit_columns(states)
    if audit:
        header = ["Model"] + [f"{p} {c}" for p in audit for c in AUDIT_COLS]
        rows = [[_row_label(s, meta)] + [fmt(c, states[s].get(p, {}).get(c)) for p in audit for c in AUDIT_COLS] for s in states]
        parts += ["## Re-identification audit (attack accuracy on forget test images, %)", "", _table(header, rows), ""]
    if retr:
        header = ["Model", "protocol", "R@5", "R@10", "queries", "skipped"]
        rows = [
            [_row_label(s, meta), p] + [fmt(c, states[s][p].get(c)) for c in ("R@5", "R@10", "num_queries", "num_skipped")]
            for s in states for p in retr if p in states[s]
        ]
        parts += ["## Details", "", _table(header, rows), ""]
    return "\n".join(parts)


def write_results(
    workdir: str | os.PathLike,
    results: Mapping[str, Mapping[str, Mapping[str, Any]]],
    meta: Mapping[str, Any] | None = None,
) -> tuple[pathlib.Path, pathlib.Path]:
    """Write ``results.json`` and ``results.md`` into ``workdir``; returns their paths.

    ``results`` maps a model state (``'original'``, ``'unlearned'``) to ``{protocol: metrics}``.
    """
    for state, per_proto in results.items():
        if state == "meta":
            continue
        if not isinstance(per_proto, Mapping) or not all(isinstance(m, Mapping) for m in per_proto.values()):
            raise TypeError(f"results[{state!r}] must map protocol names to metric dicts")
    wd = pathlib.Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    data = {k: v for k, v in results.items() if k != "meta"}
    data["meta"] = dict(meta or results.get("meta", {}) or {})
    data = workdir_lib.jsonable(data)
    jp, mp = wd / "results.json", wd / "results.md"
    workdir_lib.write_json(jp, data)  # atomic: an interruption leaves no torn file
    workdir_lib.write_atomic(mp, results_markdown(data) + "\n")
    return jp, mp


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    p = pathlib.Path(path)
    try:
        data = workdir_lib.read_json(p)
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not any(s in data for s in STATES):
        raise ValueError(f"{p}: not a results.json (expected top-level keys among {STATES} and 'meta')")
    data.setdefault("meta", {})
    data["meta"].setdefault("source", str(p))
    return data


def aggregate(runs: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """``{row: {protocol: {metric: {'mean', 'std', 'n'}}}}`` over runs (see the module docstring)."""
    buckets: dict[str, dict[str, dict[str, list[float]]]] = {}
    seen_original: set[Any] = set()
    for run in runs:
        meta = run.get("meta", {}) or {}
        for state in STATES:
            if state not in run:
                continue
            if state == "original":
                key = meta.get("seed", meta.get("source"))
                if key is not None and key in seen_original:
                    continue
                seen_original.add(key)
            row = _row_label(state, meta)
            for proto, mets in run[state].items():
                for k, v in mets.items():
                    if isinstance(v, bool) or not isinstance(v, (int, float)) or k.startswith("num_"):
                        continue
                    buckets.setdefault(row, {}).setdefault(proto, {}).setdefault(k, []).append(float(v))
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for row, protos in buckets.items():
        for proto, mets in protos.items():
            for k, vals in mets.items():
                a = np.asarray(vals, np.float64)
                out.setdefault(row, {}).setdefault(proto, {})[k] = {
                    "mean": float(a.mean()),
                    "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
                    "n": int(a.size),
                }
    return out


def _pm(key: str, cell: Mapping[str, float] | None) -> str:
    if cell is None:
        return "-"
    m, s = fmt(key, cell["mean"]), fmt(key, cell["std"])
    return f"{m} +- {s}"


def aggregate_markdown(agg: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]]) -> str:
    """Mean +- std tables (retrieval, identity sets, verification) like the paper's."""
    states = {row: {p: {k: v["mean"] for k, v in m.items()} for p, m in protos.items()} for row, protos in agg.items()}
    retr, ident, ver = _protocol_columns(states)
    rows_order = sorted(agg, key=lambda r: (r != "Original", r))
    n_runs = {r: max((c["n"] for p in agg[r].values() for c in p.values()), default=0) for r in agg}
    parts = ["# Aggregated results (mean +- std over runs)", ""]

    def table(title: str, protos: list[str], cols: Sequence[str]) -> None:
        header = ["Model", "runs"] + [f"{p} {c}" for p in protos for c in cols]
        rows = [[r, str(n_runs[r])] + [_pm(c, agg[r].get(p, {}).get(c)) for p in protos for c in cols] for r in rows_order]
        parts.extend([f"## {title}", "", _table(header, rows), ""])

    if retr:
        table("Retrieval (mAP and R@1, %)", retr, RETRIEVAL_COLS)
    if ident:
        table("Identity sets (centroid Acc %, CS)", ident, IDENTITY_COLS)
    if ver:
        tars = sorted({k for r in agg for p in ver for k in agg[r].get(p, {}) if k.startswith("TAR@")})
        table("Verification (%)", ver, ["acc"] + tars)
    audit = _audit_columns(states)
    if audit:
        table("Re-identification audit (attack accuracy on forget test images, %)", audit, AUDIT_COLS)
    return "\n".join(parts)
