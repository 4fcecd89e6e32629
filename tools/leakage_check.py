#!/usr/bin/env python3
"""Check that a distractor or retain set holds no forgotten person under another label.

Usage:
  python tools/leakage_check.py --forget forget_test.npz --other distractors.npz \
      [--centroid_threshold 0.5] [--pair_threshold 0.6] [--top_pairs 20] [--out leakage.json]

Both inputs are embedding files written by ``jaxforget.eval.embed.Embeddings.save`` (embed them
with the *original* model, before unlearning). Unlabelled images in --other (label < 0) count as
their own identity. Prints a readable report (exit status 1 when anything is flagged, so it can
guard a pipeline) and saves the full report as JSON.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from jaxforget.eval.embed import Embeddings
from jaxforget.eval.leakage import format_leakage_report, leakage_check


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--forget", required=True, type=pathlib.Path, help="forget identities' embeddings (.npz)")
    ap.add_argument("--other", required=True, type=pathlib.Path, help="distractor or retain embeddings (.npz)")
    ap.add_argument("--centroid_threshold", type=float, default=0.5)
    ap.add_argument("--pair_threshold", type=float, default=0.6)
    ap.add_argument("--top_pairs", type=int, default=20)
    ap.add_argument("--top_identities", type=int, default=3)
    ap.add_argument("--out", type=pathlib.Path, default=None, help="JSON report path (default: beside --forget)")
    args = ap.parse_args(argv)
    for p in (args.forget, args.other):
        if not p.exists():
            raise SystemExit(f"leakage_check: {p} does not exist (write it with Embeddings.save)")
    rep = leakage_check(
        Embeddings.load(args.forget), Embeddings.load(args.other),
        centroid_threshold=args.centroid_threshold, pair_threshold=args.pair_threshold,
        top_identities=args.top_identities, top_pairs=args.top_pairs,
    )
    rep["forget_file"], rep["other_file"] = str(args.forget), str(args.other)
    print(format_leakage_report(rep))
    out = args.out or args.forget.with_name("leakage.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rep, indent=2) + "\n")
    print(f"report written to {out}", file=sys.stderr)
    return 1 if rep["num_flagged_identities"] or rep["num_flagged_pairs"] else 0


if __name__ == "__main__":
    sys.exit(main())
