#!/usr/bin/env python3
"""Adds evaluation protocols to finished runs from their stored embeddings (no model is run).

Usage:
  python tools/reevaluate.py runs/celeba/*/seed_* --evals retain_search [--evals forget_base]

Every run of ``python -m jaxforget.main`` keeps the embeddings it evaluated: the original model's
in ``<cache_dir>/embeddings/<key>/`` and the unlearned model's in ``<run>/embeddings/``. This tool
reloads them with the run's own ``config.json`` and ``split.json``, runs the named protocols
(:mod:`jaxforget.eval.protocols`, same seed as the run) for both models, and merges the metrics
into the run's ``results.json`` / ``results.md`` (existing protocols are kept; a protocol named
again is recomputed). Protocols that need sets the run did not embed (distractors, CFP, ...) are
refused with the missing file named: re-run the experiment with them in ``evals`` instead.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from jaxforget.errors import UserError
from jaxforget.eval import protocols, report
from jaxforget.eval.report import STATES
from jaxforget.eval.sets import load_stored_sets


def reevaluate(run: pathlib.Path, evals: tuple[str, ...]) -> dict:
    """Recomputes ``evals`` for the original and unlearned model of ``run``; returns the results."""
    if not (run / "results.json").exists():
        raise SystemExit(f"{run}: no results.json; is this a finished jaxforget run directory?")
    results = report.load_results(run / "results.json")
    for state in STATES:
        try:
            cfg, _, sets = load_stored_sets(run, tuple(evals), state)
        except UserError as e:
            raise SystemExit(str(e)) from e
        results[state].update(protocols.run_protocols(tuple(evals), sets, seed=int(cfg.seed)))
    meta = results.pop("meta")
    meta.pop("source", None)
    report.write_results(run, results, meta)
    results["meta"] = meta
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=pathlib.Path, help="run directories")
    ap.add_argument("--evals", action="append", required=True, help="protocol (repeatable)")
    args = ap.parse_args(argv)
    for run in args.runs:
        reevaluate(run, tuple(args.evals))
        print(f"{run}: added {', '.join(args.evals)} to results.json / results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
