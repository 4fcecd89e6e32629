#!/usr/bin/env python3
"""Runs the full method x seed table and writes mean +- std tables like the paper's.

Usage:
  python tools/run_table.py --arg=celeba --seeds=0,1,2 --workdir=runs/celeba \\
      [--methods=hard_disp,disp,rl,ga,bs,lipschitz,contrastive,retrain] [--set method.steps=100]
      [--tag=linear1 --set method.trainable=linear1/]

Each (method, seed) runs ``configs/<method>.py:<arg>`` with that seed in
``<workdir>/<method>/seed_<s>`` (``<method>+<tag>`` with ``--tag``: a variant of the methods,
whose rows sit beside theirs in the same page); a run whose ``results.json`` exists is skipped, so
an interrupted table resumes where it stopped (and an interrupted run resumes from its
checkpoint). The original model's embeddings are shared by every method of a seed through the
cache in ``<workdir>/cache``.
Writes ``<workdir>/table.md`` and ``<workdir>/table.json`` after every run: every finished run
under the workdir (so methods added by a later call join the same page).
"""

from __future__ import annotations

import argparse
import ast
import pathlib
import re
import sys
import time

from jaxforget import config as config_lib
from jaxforget import experiment
from jaxforget.errors import UserError
from jaxforget.eval import report
from jaxforget.workdir import write_atomic, write_json

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAPER_METHODS = ("rl", "ga", "bs", "lipschitz", "contrastive", "disp", "hard_disp", "retrain")


def load_config(method: str, arg: str):
    try:
        return config_lib.load_config_file(ROOT / "configs" / f"{method}.py", arg)
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from None


def apply_overrides(cfg, overrides: list[str]) -> None:
    """``--set a.b=value`` pairs; values are Python literals or plain strings."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected field=value")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise SystemExit(f"--set {item!r}: the config has no field {key!r}")
        node[leaf] = (
            type(node[leaf])(value)
            if isinstance(node[leaf], (int, float)) and not isinstance(node[leaf], bool)
            else value
        )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arg", default="demo",
                    help=f"config argument: {', '.join(config_lib.CONFIG_ARGS)}")
    ap.add_argument("--methods", default=",".join(PAPER_METHODS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--workdir", type=pathlib.Path, required=True)
    ap.add_argument("--tag", default="",
                    help="name these runs <method>+<tag> (their folder and their table rows)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        help="field=value applied to every run (repeatable)",
    )
    args = ap.parse_args(argv)

    methods = [m for m in args.methods.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    root = args.workdir.resolve()
    if args.tag and not re.fullmatch(r"[A-Za-z0-9_.-]+", args.tag):
        raise SystemExit(f"--tag={args.tag!r}: use letters, digits, '_', '.' or '-' (a folder name)")
    for method in methods:
        name = f"{method}+{args.tag}" if args.tag else method
        for seed in seeds:
            wd = root / name / f"seed_{seed}"
            done = wd / "results.json"
            if done.exists():
                print(f"[table] {name} seed {seed}: done earlier ({done})", file=sys.stderr)
                continue
            cfg = load_config(method, args.arg)
            apply_overrides(cfg, args.overrides)
            cfg.seed = seed
            cfg.label = name if args.tag else ""
            cfg.cache_dir = str(root / "cache")
            print(f"[table] {name} seed {seed} -> {wd}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                experiment.run(cfg, wd)
            except UserError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            print(
                f"[table] {name} seed {seed}: {time.perf_counter() - t0:.0f}s",
                file=sys.stderr,
                flush=True,
            )
            write_table(root)  # the rows so far: a stopped table still has its page
    md, n = write_table(root)
    print(md)
    print(f"[table] {n} runs; written {root / 'table.md'}", file=sys.stderr)
    return 0


def write_table(root: pathlib.Path) -> tuple[str, int]:
    """``table.md`` / ``table.json``: mean +- std per method over every finished run under
    ``root`` (``<method>/seed_<s>/results.json``, this call's methods or an earlier one's).
    Returns the Markdown and the number of runs."""
    runs = [report.load_results(p) for p in sorted(root.glob("*/seed_*/results.json"))]
    agg = report.aggregate(runs)
    md = report.aggregate_markdown(agg)
    write_atomic(root / "table.md", md + "\n")
    write_json(root / "table.json", agg)
    return md, len(runs)


if __name__ == "__main__":
    sys.exit(main())
