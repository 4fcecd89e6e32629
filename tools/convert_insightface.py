#!/usr/bin/env python3
"""Converts InsightFace IResNet / MobileFaceNet PyTorch checkpoints and ONNX models to Flax
variables and back.

PyTorch -> Flax (orbax directory that ``model.init`` can point at)::

    python tools/convert_insightface.py --input backbone.pth --output /tmp/r50_flax
    python tools/convert_insightface.py --input ../shared/weights/mobilefacenet_casia/068.ckpt \
        --output /tmp/mfn_flax --arch mobilefacenet

ONNX -> Flax (InsightFace's released recognition models, e.g. ``buffalo_l/w600k_r50.onnx``; the
architecture is read from the graph, and onnxruntime's embeddings are compared with the Flax
model's unless ``--no-check``)::

    python tools/convert_insightface.py --input w600k_r50.onnx --output /tmp/r50_flax

Flax -> PyTorch (a bare InsightFace-layout state_dict, ``torch.load`` + ``load_state_dict``)::

    python tools/convert_insightface.py --to-torch --input /tmp/r50_flax --output unlearned.pth

Flax -> ONNX (input ``data``, NCHW RGB, ``(pixel - 127.5) / 127.5``, dynamic batch: what
InsightFace's ``ArcFaceONNX`` feeds; checked against the Flax model unless ``--no-check``)::

    python tools/convert_insightface.py --to-onnx --input /tmp/r50_flax --output unlearned.onnx

Reading needs no PyTorch and refuses pickles that would run code; writing ``.pth`` needs PyTorch;
ONNX needs the ``onnx`` extra (``pip install 'jaxforget[onnx]'``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from jaxforget.io import UnsafePickleError
from jaxforget.models import loading, onnx_export


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True,
                        help="PyTorch .pth/.ckpt or ONNX .onnx (or, with --to-torch/--to-onnx, an orbax directory)")
    parser.add_argument("--output", required=True,
                        help="orbax directory to write (or, with --to-torch / --to-onnx, a .pth / .onnx file)")
    parser.add_argument("--arch", default="auto", choices=("auto", "iresnet", "mobilefacenet"),
                        help="architecture family; 'auto' detects it from the state_dict keys")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="input size; only needed for non-square IResNets")
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument("--to-torch", action="store_true", help="export an orbax variables directory to .pth")
    direction.add_argument("--to-onnx", action="store_true", help="export an orbax variables directory to .onnx")
    parser.add_argument("--no-check", action="store_true",
                        help="skip comparing onnxruntime's embeddings with the Flax model's (ONNX in or out)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.to_torch:
            summary = loading.export_torch_checkpoint(args.input, args.output)
        elif args.to_onnx:
            summary = loading.export_onnx_checkpoint(args.input, args.output, check=not args.no_check)
        else:
            summary = loading.convert_torch_checkpoint(
                args.input, args.output, args.arch, tuple(args.input_size) if args.input_size else None
            )
            if args.input.lower().endswith(".onnx") and not args.no_check:
                bundle, variables = loading.load_pretrained({"init": summary["output"]})
                summary["parity"] = onnx_export.onnx_parity(bundle, variables, args.input)
    except (ValueError, FileNotFoundError, ImportError, UnsafePickleError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    if args.to_onnx:
        print(f"exported {summary['name']} to {summary['output']}")
        print(f"  nodes:              {summary['nodes']}")
        print(f"  input:              {summary['input']}")
    elif args.to_torch:
        print(f"exported {summary['name']} to {summary['output']}")
        print(f"  keys written:       {summary['keys_written']}")
        print(f"  parameter elements: {summary['param_elements']:,} (PyTorch count, fixed scale included)")
    else:
        depth = f" (depth {summary['depth']})" if summary["depth"] else ""
        print(f"converted {args.input}: {summary['arch']}{depth} -> {summary['output']}")
        print(f"  model config:       {json.dumps(summary['model'])}")
        print(f"  keys converted:     {summary['keys_converted']} of {summary['keys_in_checkpoint']} "
              f"({summary['keys_skipped']} skipped: num_batches_tracked / fixed ones)")
        print(f"  parameter elements: {summary['param_elements']:,} trainable + {summary['fixed_elements']:,} fixed "
              f"= {summary['param_elements'] + summary['fixed_elements']:,}")
        print(f"  running statistics: {summary['stat_elements']:,} elements")
    if "parity" in summary:
        parity = summary["parity"]
        print(f"  onnxruntime vs flax on {parity['images']} random images: max abs difference "
              f"{parity['max_abs_raw']:.2e} (raw, values up to {parity['max_abs_embedding']:.3g}), "
              f"{parity['max_abs_normalized']:.2e} (L2-normalised)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
