#!/usr/bin/env python3
"""Aggregate several runs' results.json into mean +- std tables (paper layout).

Usage:
  python tools/aggregate.py 'runs/seed*/hard_disp/results.json' 'runs/seed*/ga/results.json' \
      [--out_md table.md] [--out_json table.json]

Each argument is a glob (quote it) or a file; a directory stands for its results.json. Rows:
``Original`` (each meta seed counted once) and one row per ``meta['label']`` (or, without a
label, ``meta['method']``); cells are ``mean +- std`` (sample std, ddof=1) of percentages, CS as
a plain cosine.
"""

from __future__ import annotations

import argparse
import glob
import json
import pathlib
import sys

from jaxforget.eval.report import aggregate, aggregate_markdown, load_results


def expand(patterns: list[str]) -> list[pathlib.Path]:
    files: list[pathlib.Path] = []
    for pat in patterns:
        hits = sorted(glob.glob(pat, recursive=True)) or ([pat] if pathlib.Path(pat).exists() else [])
        if not hits:
            raise SystemExit(f"aggregate: no file matches {pat!r}")
        for h in hits:
            p = pathlib.Path(h)
            files.append(p / "results.json" if p.is_dir() else p)
    return list(dict.fromkeys(files))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("patterns", nargs="+", help="results.json files, directories or globs")
    ap.add_argument("--out_md", type=pathlib.Path, help="write the Markdown tables here")
    ap.add_argument("--out_json", type=pathlib.Path, help="write {row: {protocol: {metric: {mean, std, n}}}} here")
    args = ap.parse_args(argv)
    files = expand(args.patterns)
    runs = [load_results(f) for f in files]
    agg = aggregate(runs)
    md = aggregate_markdown(agg)
    print(f"aggregated {len(files)} run(s)", file=sys.stderr)
    print(md)
    if args.out_md:
        args.out_md.write_text(md + "\n")
    if args.out_json:
        args.out_json.write_text(json.dumps(agg, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
