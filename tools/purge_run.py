#!/usr/bin/env python3
"""Honour a deletion request: remove what still describes the forgotten people from finished runs.

A finished run ships ``unlearned_model/`` (and ``unlearned_backbone.pth`` with
``export_torch``, ``unlearned_backbone.onnx`` with ``export_onnx``). Everything else that holds
the forget identities' photos, embeddings, a model that still knows them, or the list of who they
are is removed:

* in the run directory: ``checkpoints/`` (training states: the CosFace head's rows of every
  identity and, for some methods, the original model), ``embeddings/``, ``split.json``,
  ``tsne.png``;
* in the shared cache (``cache_dir``): the original model's embeddings of this split, and the
  fine-tuned base model when the run made one. Other runs on the same split and base model share
  these entries; they lose them too (a re-run recomputes them), which is the point.

Kept: ``unlearned_model/``, ``unlearned_backbone.pth`` / ``.onnx``, ``config.json``,
``metrics_*.jsonl``, ``tensorboard/`` and ``results.*`` (metrics only; note that ``results.json``
lists the forget identities' ids, and ``config.json`` does too when they were given by
``forget.identities``: ``--keep_only_model`` removes those files as well).

Usage::

    python tools/purge_run.py runs/hard_disp_celeba             # list what would go
    python tools/purge_run.py runs/hard_disp_celeba --yes       # delete it
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys

from jaxforget import workdir as wd
from jaxforget.data import splits, synthetic
from jaxforget.errors import UserError

RUN_ITEMS = ("checkpoints", "embeddings", "split.json", "tsne.png")
MODEL_ITEMS = ("unlearned_model", "unlearned_backbone.pth", "unlearned_backbone.onnx")


def targets(run: pathlib.Path, keep_only_model: bool = False) -> list[pathlib.Path]:
    """The paths (files or folders) that a purge of ``run`` removes; only existing ones."""
    run = pathlib.Path(run)
    if not (run / "config.json").exists():
        raise UserError(f"{run}: no config.json; is this a jaxforget run directory?")
    if keep_only_model:
        out = [p for p in run.iterdir() if p.name not in MODEL_ITEMS]
    else:
        out = [run / name for name in RUN_ITEMS]
    if (run / "split.json").exists():
        cfg = wd.read_config(run)
        split = splits.Split.load(run / "split.json")
        version = synthetic.GENERATOR_VERSION
        out.append(wd.embedding_path(cfg, split, run, "original", "forget_test",
                                     data_version=version).parent)
        if int(cfg.pretrain.steps) > 0:
            out.append(wd.base_model_path(cfg, split, run, data_version=version))
    return [p for p in out if p.exists()]


def _size(path: pathlib.Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=pathlib.Path, help="run directories (seed_* folders "
                    "of a multi-seed run, or single runs)")
    ap.add_argument("--yes", action="store_true", help="delete (default: only list)")
    ap.add_argument("--keep_only_model", action="store_true",
                    help="also remove config.json, metrics and results (they name the identities)")
    args = ap.parse_args(argv)
    try:
        found = [(run, targets(run, args.keep_only_model)) for run in args.runs]
    except UserError as e:
        raise SystemExit(f"error: {e}") from e
    total = 0
    for run, paths in found:
        if not (run / "unlearned_model").exists():
            print(f"warning: {run} has no unlearned_model/ (unfinished run?)", file=sys.stderr)
        for p in paths:
            size = _size(p)
            total += size
            print(f"{'deleting' if args.yes else 'would delete'} {p} ({size / 1e6:.1f} MB)")
            if args.yes:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    verb = "deleted" if args.yes else "would delete (pass --yes)"
    print(f"{verb}: {sum(len(p) for _, p in found)} items, {total / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
