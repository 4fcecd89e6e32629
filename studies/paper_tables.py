#!/usr/bin/env python3
"""The paper's Tables 1-3 from a table run, each cell beside the paper's number.

Usage, from the repository root::

    python -m studies.paper_tables runs/celeba_wild/table.json [--out docs/celeba_wild_tables.md]
    python -m studies.paper_tables runs/celeba_wild/*/seed_0      # these runs only
    python -m studies.paper_tables docs/runs/celeba_wild/rl/seed_* \
        --into=docs/RESULTS.md:paper_tables_baselines     # regenerate that block of the page

The input is what ``tools/run_table.py`` (or ``tools/aggregate.py --out_json``) writes: rows
``Original`` and one per method, ``{protocol: {metric: {mean, std, n}}}``; or run folders /
``results.json`` files, aggregated here the same way. Methods are named as
the paper names them. Columns (ours, then the paper's IResNet-50 number in brackets):

* Table 1 (base retrieval): forget ``forget_base``; CFP-FP ``cfp_fp``; the paper's VGGFace2
  test retain column is filled with ``retain_search`` (the CelebA-wild retain people's unseen
  photos: another in-the-wild retain set, not VGGFace2).
* Table 2 (centroid accuracy and CS): forget ``forget_base``, retain ``retain_search``.
* Table 3 (extended galleries): ``forget_extended`` and ``cfp_fp_extended``.
* CFP verification (not in the paper; the issue's retain bound): ``cfp_fp_verification`` and
  ``cfp_ff_verification`` accuracy.
* The re-identification audit (not in the paper): ``reid_audit``'s 1-NN and linear-probe
  attackers, fit on the forget people's train photos, tested on their test photos.

Rows of a tagged variant (``tools/run_table.py --tag``, e.g. ``hard_disp+linear1``) are named
after their method with the tag ("Hard Dispersion Loss + linear1"), without the paper's numbers.

Then the targets of the CelebA-wild protocol, computed from the same numbers: the paper's shape
(which baselines leave forgetting within ~5 points of the Original, Boundary Shrink between them
and dispersion) and the bounds for one method (``--method``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any, Mapping

from jaxforget.eval import report

# Method names as the paper prints them (rows of the input are meta['method'] or 'Original'),
# and this project's closed-form method beside them.
PAPER_NAMES = {
    "Original": "Original",
    "rl": "Random Labeling",
    "ga": "Gradient Ascent",
    "lipschitz": "Lipschitz Unlearning",
    "contrastive": "Contrastive Unlearning",
    "bs": "Boundary Shrink",
    "disp": "Dispersion Loss",
    "hard_disp": "Hard Dispersion Loss",
    "project": "Identity Projection (ours)",  # beyond the paper: jaxforget.methods.projection
}
ORDER = ("Original", "rl", "ga", "lipschitz", "contrastive", "bs", "disp", "hard_disp", "project")

# The paper's means (IResNet-50 fine-tuned on CelebA, 3 seeds), from its Tables 1-3, in percent
# (CS as a cosine): {paper name: {column: value}}; a missing entry is a column it does not report.
PAPER = {
    "Original": dict(f_map=88.70, f_r1=98.17, c_map=91.00, c_r1=97.50, r_map=89.10, r_r1=98.80,
                     f_acc=98.20, f_cs=0.615, r_acc=96.60, r_cs=0.616,
                     fx_map=88.40, fx_r1=98.17, cx_map=70.10, cx_r1=74.10),
    "Random Labeling": dict(f_map=87.73, f_r1=98.17, c_map=90.00, c_r1=97.33, r_map=88.40,
                            r_r1=98.80, f_acc=0.00, f_cs=0.615, r_acc=96.50, r_cs=0.626,
                            fx_map=85.87, fx_r1=98.17, cx_map=68.27, cx_r1=73.70),
    "Gradient Ascent": dict(f_map=86.80, f_r1=98.17, c_map=89.40, c_r1=97.20, r_map=88.03,
                            r_r1=98.80, f_acc=0.57, f_cs=0.605, r_acc=96.33, r_cs=0.659,
                            fx_map=84.27, fx_r1=97.90, cx_map=67.27, cx_r1=73.53),
    "Lipschitz Unlearning": dict(f_map=84.57, f_r1=97.93, c_map=87.67, c_r1=97.07, r_map=86.17,
                                 r_r1=98.73, f_acc=56.63, f_cs=0.561, r_acc=96.33, r_cs=0.637,
                                 fx_map=82.33, fx_r1=97.67, cx_map=63.80, cx_r1=72.80),
    "Contrastive Unlearning": dict(f_map=88.57, f_r1=98.17, c_map=91.00, c_r1=97.57, r_map=89.00,
                                   r_r1=98.80, f_acc=98.17, f_cs=0.581, r_acc=96.60, r_cs=0.620,
                                   fx_map=88.23, fx_r1=98.17, cx_map=70.03, cx_r1=74.00),
    "Boundary Shrink": dict(f_map=60.23, f_r1=96.53, c_map=88.47, c_r1=97.13, r_map=87.03,
                            r_r1=98.73, f_acc=5.33, f_cs=0.255, r_acc=96.37, r_cs=0.594,
                            fx_map=49.70, fx_r1=92.50, cx_map=65.70, cx_r1=73.17),
    "Dispersion Loss": dict(f_map=17.83, f_r1=67.37, c_map=89.20, c_r1=97.30, r_map=87.50,
                            r_r1=98.80, f_acc=0.80, f_cs=0.089, r_acc=96.43, r_cs=0.599,
                            fx_map=13.03, fx_r1=57.37, cx_map=67.03, cx_r1=73.47),
    "Hard Dispersion Loss": dict(f_map=16.00, f_r1=65.87, c_map=89.20, c_r1=97.27, r_map=87.47,
                                 r_r1=98.80, f_acc=1.33, f_cs=0.086, r_acc=96.47, r_cs=0.597,
                                 fx_map=11.53, fx_r1=56.33, cx_map=67.03, cx_r1=73.43),
}

# (column key, protocol, metric, header) of each table.
TABLES = {
    "Table 1: forgetting and retention, base galleries (mAP / R@1, %)": [
        ("f_map", "forget_base", "mAP", "forget mAP"), ("f_r1", "forget_base", "R@1", "forget R@1"),
        ("c_map", "cfp_fp", "mAP", "CFP-FP mAP"), ("c_r1", "cfp_fp", "R@1", "CFP-FP R@1"),
        ("r_map", "retain_search", "mAP", "retain mAP (paper: VGGFace2)"),
        ("r_r1", "retain_search", "R@1", "retain R@1 (paper: VGGFace2)"),
    ],
    "Table 2: centroid accuracy (%) and cluster compactness CS": [
        ("f_acc", "forget_base", "acc", "forget Acc"), ("f_cs", "forget_base", "CS", "forget CS"),
        ("r_acc", "retain_search", "acc", "retain Acc"), ("r_cs", "retain_search", "CS", "retain CS"),
    ],
    "Table 3: extended galleries with distractors (mAP / R@1, %)": [
        ("fx_map", "forget_extended", "mAP", "forget mAP"),
        ("fx_r1", "forget_extended", "R@1", "forget R@1"),
        ("cx_map", "cfp_fp_extended", "mAP", "CFP-FP mAP"),
        ("cx_r1", "cfp_fp_extended", "R@1", "CFP-FP R@1"),
    ],
    "CFP verification accuracy (10 folds, %; not in the paper)": [
        ("", "cfp_fp_verification", "acc", "CFP-FP"), ("", "cfp_ff_verification", "acc", "CFP-FF"),
    ],
    "Re-identification audit (forget test photos, %; chance 10; not in the paper)": [
        ("", "reid_audit", "knn_acc", "1-NN attack"),
        ("", "reid_audit", "probe_acc", "linear-probe attack"),
    ],
}


def paper_name(row: str) -> str:
    """The paper's name of a row; a tagged variant's is its method's plus the tag."""
    method, _, tag = row.partition("+")
    return PAPER_NAMES.get(method, method) + (f" + {tag}" if tag else "")


def _cell(agg: Mapping[str, Any], row: str, proto: str, metric: str) -> dict | None:
    return agg.get(row, {}).get(proto, {}).get(metric)


def _ours(cell: Mapping[str, float] | None, metric: str) -> str:
    if cell is None:
        return "-"
    return f"{report.fmt(metric, cell['mean'])} +- {report.fmt(metric, cell['std'])}"


def _paper(value: float | None, metric: str) -> str:
    if value is None:
        return ""
    return f" ({value:.3f})" if metric == "CS" else f" ({value:.2f})"


def tables_markdown(agg: Mapping[str, Any]) -> str:
    """Tables 1-3 (and CFP verification) with the paper's numbers in brackets."""
    rows = [r for r in ORDER if r in agg] + sorted(r for r in agg if r not in ORDER)
    parts = []
    for title, cols in TABLES.items():
        if not any(_cell(agg, r, p, m) for r in rows for _, p, m, _ in cols):
            continue
        header = ["Method", "runs"] + [h for *_, h in cols]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in rows:
            name = paper_name(r)
            paper = PAPER.get(name, {})
            n = max((c["n"] for p in agg[r].values() for c in p.values()), default=0)
            cells = [_ours(_cell(agg, r, p, m), m) + _paper(paper.get(k), m) for k, p, m, _ in cols]
            lines.append("| " + " | ".join([name, str(n)] + cells) + " |")
        parts += [f"### {title}", "", *lines, ""]
    return "\n".join(parts)


def _mean(agg, row, proto, metric) -> float | None:
    cell = _cell(agg, row, proto, metric)
    return None if cell is None else cell["mean"]


SHAPE_NEAR = ("rl", "ga", "lipschitz", "contrastive")  # the paper: forget mAP within ~5 points
SHAPE_NEAR_POINTS = 5.0


def shape_markdown(agg: Mapping[str, Any]) -> str:
    """The paper's shape: RL / GA / Lipschitz / Contrastive leave forget mAP within ~5 points of
    the Original, Boundary Shrink forgets more than they do and less than the dispersion losses.
    Only the rows present are checked; '' when there is nothing to check."""
    f0 = _mean(agg, "Original", "forget_base", "mAP")
    if f0 is None:
        return ""
    lines = []
    near = {m: _mean(agg, m, "forget_base", "mAP") for m in SHAPE_NEAR}
    near = {m: v for m, v in near.items() if v is not None}
    for m, v in near.items():
        drop = 100 * (f0 - v)
        ok = drop <= SHAPE_NEAR_POINTS
        lines.append(f"- {PAPER_NAMES[m]}: forget mAP {100 * v:.2f} vs {100 * f0:.2f} (drop "
                     f"{drop:.2f} points); paper: within ~{SHAPE_NEAR_POINTS:.0f}: "
                     f"**{'as in the paper' if ok else 'not as in the paper'}**")
    bs = _mean(agg, "bs", "forget_base", "mAP")
    disp = [v for m in ("disp", "hard_disp") if (v := _mean(agg, m, "forget_base", "mAP")) is not None]
    if bs is not None and (near or disp):
        ok = (not disp or max(disp) < bs) and (not near or bs < min(near.values()))
        bounds = [f"below the baselines above ({100 * min(near.values()):.2f} at least)"] if near else []
        bounds += [f"above the dispersion losses ({100 * max(disp):.2f} at most)"] if disp else []
        lines.append(f"- Boundary Shrink: forget mAP {100 * bs:.2f}; paper: {' and '.join(bounds)}: "
                     f"**{'as in the paper' if ok else 'not as in the paper'}**")
    if not lines:
        return ""
    return "\n".join(["The paper's shape (forget mAP, mean over the runs):", "", *lines])


def targets_markdown(agg: Mapping[str, Any], method: str = "hard_disp") -> str:
    """The CelebA-wild targets for ``method`` against the Original: met or missed, by how much;
    '' when the table has no row ``method``. Hard dispersion is held to forget mAP <= 35% of the
    Original's; any other row (a beyond-the-paper variant) to the paper's own 18%."""
    if method not in agg:
        return ""
    checks = []
    f0, f1 = _mean(agg, "Original", "forget_base", "mAP"), _mean(agg, method, "forget_base", "mAP")
    if f0 and f1 is not None:
        ratio, bound = f1 / f0, (0.35 if method == "hard_disp" else 0.18)
        checks.append((f"forget mAP kept: {100 * ratio:.1f}% of the Original's (paper 18%)",
                       f"<= {100 * bound:.0f}%", ratio <= bound))
    cs = _mean(agg, method, "forget_base", "CS")
    if cs is not None:
        checks.append((f"forget CS {cs:.3f} (paper 0.086)", "<= 0.15", cs <= 0.15))
    for proto, metric, bound, what in (("cfp_fp", "mAP", 3.0, "CFP-FP mAP"),
                                       ("cfp_fp_verification", "acc", 1.5, "CFP-FP verification"),
                                       ("retain_search", "mAP", 3.0, "CelebA-wild retain mAP")):
        a, b = _mean(agg, "Original", proto, metric), _mean(agg, method, proto, metric)
        if a is not None and b is not None:
            drop = 100 * (a - b)
            checks.append((f"{what}: {100 * b:.2f} vs {100 * a:.2f} (drop {drop:.2f} points)",
                           f"drop <= {bound}", drop <= bound))
    r1 = _mean(agg, method, "forget_base", "R@1")
    if r1 is not None:
        checks.append((f"forget R@1 {100 * r1:.2f} (paper 65.87)", "<= 40 (beyond the paper)",
                       r1 <= 0.40))
    lines = [f"Targets for {paper_name(method)} (mean over the runs):", ""]
    lines += [f"- {text}; target {bound}: **{'met' if ok else 'missed'}**" for text, bound, ok in checks]
    return "\n".join(lines)


def load_table(inputs: list[pathlib.Path]) -> dict[str, Any]:
    """One ``table.json``, or the aggregate of run folders / ``results.json`` files."""
    if len(inputs) == 1 and inputs[0].is_file() and inputs[0].name != "results.json":
        try:
            return json.loads(inputs[0].read_text())
        except (OSError, ValueError) as e:
            raise SystemExit(f"{inputs[0]}: cannot read a table.json ({e})") from None
    files = []
    for p in inputs:
        if p.is_dir() and not (p / "results.json").exists():
            print(f"{p}: no results.json (unfinished run?); left out", file=sys.stderr)
            continue
        files.append(p / "results.json" if p.is_dir() else p)
    try:
        return report.aggregate([report.load_results(f) for f in files])
    except (OSError, ValueError) as e:
        raise SystemExit(f"cannot read the runs: {e}") from None


def fill_block(page: pathlib.Path, marker: str, md: str) -> None:
    """Puts ``md`` between ``<!-- marker:begin -->`` and ``<!-- marker:end -->`` of ``page``.

    Headings go one level down (the page holds the tables under its own sections); the rest of the
    page is left as it is.
    """
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    try:
        text = page.read_text()
    except OSError as e:
        raise SystemExit(f"--into: cannot read {page} ({e})") from None
    head, sep, rest = text.partition(begin + "\n")
    body, sep2, tail = rest.partition(end)
    if not sep or not sep2 or begin in tail:
        raise SystemExit(f"--into: {page} needs exactly one '{begin}' line followed by one "
                         f"'{end}'; add them where the tables should go")
    md = "\n".join("#" + line if line.startswith("#") else line for line in md.splitlines())
    page.write_text(head + sep + md + "\n" + sep2 + tail)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", type=pathlib.Path, nargs="+",
                    help="a table.json of tools/run_table.py, or run folders / results.json files")
    ap.add_argument("--method", default="hard_disp",
                    help="the rows the targets are checked for, comma-separated")
    ap.add_argument("--out", type=pathlib.Path, help="also write the Markdown here")
    ap.add_argument("--into", metavar="PAGE:MARKER",
                    help="also put the Markdown between <!-- MARKER:begin --> and "
                         "<!-- MARKER:end --> of PAGE (headings one level down)")
    args = ap.parse_args(argv)
    if args.into and ":" not in args.into:
        ap.error(f"--into={args.into}: expected PAGE:MARKER, e.g. docs/RESULTS.md:paper_tables")
    agg = load_table(args.inputs)
    parts = [tables_markdown(agg), shape_markdown(agg)]
    parts += [targets_markdown(agg, m) for m in args.method.split(",") if m]
    md = "\n\n".join(p.strip() for p in parts if p) + "\n"
    print(md, end="")
    if args.out:
        args.out.write_text(md)
    if args.into:
        page, marker = args.into.rsplit(":", 1)
        fill_block(pathlib.Path(page), marker, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
