"""Benchmark: MobileFaceNet with jaxforget's convolution layers vs plain ``nn.Conv``.

XLA's CPU backend runs grouped (depthwise) convolutions far slower than their FLOPs suggest;
:class:`jaxforget.models.layers.DepthwiseConv` computes the same function as a sum of
``kh * kw`` shifted, per-channel-scaled slices. This script times both implementations of the same
MobileFaceNet (same weights, same batch, one process) on

* embedding (inference) images/s, and
* the product's hard-dispersion unlearning step (SGD with momentum, BatchNorm in train mode),
  run by :func:`jaxforget.trainer.unlearn` and timed per step by it, images/s,

and prints the ratios and the largest difference between the two implementations' outputs::

    python3 -m benchmarks.bench_depthwise              # batch 32, 112x96, the released width
    python3 -m benchmarks.bench_depthwise --quick      # width 0.25, batch 8, for a smoke run

``--reference xla_convolutions`` compares instead against plain ``nn.Conv`` for the 1x1 (and 3x3
stride-1) layers (:func:`jaxforget.models.layers.xla_convolutions`), depthwise layers shifted in
both: the effect of :class:`~jaxforget.models.layers.Conv1x1`, MobileFaceNet's pointwise layers.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxforget import trainer
from jaxforget.methods import Context
from jaxforget.models import build_model, init_variables
from jaxforget.models.layers import grouped_depthwise, xla_convolutions
from jaxforget.ops import normalize_images

REFERENCES = {"grouped_depthwise": grouped_depthwise, "xla_convolutions": xla_convolutions}

METHOD_CFG = dict(name="hard_disp", lr=0.01, optimizer="sgd", momentum=0.9, weight_decay=5e-4,
                  schedule="constant", bn_mode="train", flip=False, margin=0.0)


def _median_time(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _median_step_time(ctx: Context, variables: Any, batch: dict[str, Any], warmup: int,
                      repeats: int) -> float:
    """Median ``step_time_s`` of the product's unlearning steps after ``warmup`` untimed ones (the
    first compiles): :func:`jaxforget.trainer.unlearn` on one device, the same batch every step."""
    hparams = {**METHOD_CFG, "steps": warmup + repeats}
    result = trainer.unlearn("hard_disp", hparams, ctx, variables,
                             {"forget": itertools.repeat(batch)}, rng=jax.random.PRNGKey(0))
    return statistics.median(r["step_time_s"] for r in result.metrics[warmup:])


def measure(reference: bool, args: argparse.Namespace, images: np.ndarray, labels: np.ndarray
            ) -> dict[str, Any]:
    """Times embedding and the unlearning step; traces inside the implementation switch."""
    bundle = build_model(dict(name="mobilefacenet", width_mult=args.width_mult))
    variables = init_variables(bundle, seed=0)
    x = normalize_images(images, bundle.pixel_mean, bundle.pixel_std)
    ctx = Context(apply_fn=bundle.module.apply, pixel_mean=bundle.pixel_mean,
                  pixel_std=bundle.pixel_std)
    batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
    embed = jax.jit(lambda v, x: bundle.module.apply(v, x, train=False))

    switch = REFERENCES[args.reference]() if reference else contextlib.nullcontext()
    with switch:
        emb = np.asarray(embed(variables, x))
        t_embed = _median_time(lambda: embed(variables, x), args.warmup, args.repeats)
        t_step = _median_step_time(ctx, variables, batch, args.warmup, args.repeats)
    n = len(images)
    return {"embed_images_per_s": n / t_embed, "embed_s": t_embed,
            "step_images_per_s": n / t_step, "step_s": t_step, "embedding": emb}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--ids-per-batch", type=int, default=8)
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="width 0.25, batch 8, one repeat")
    p.add_argument("--json-out", default="", help="also write the numbers here")
    p.add_argument("--reference", choices=sorted(REFERENCES), default="grouped_depthwise",
                   help="what jaxforget's layers are compared with (see the module docstring)")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.ids_per_batch, args.width_mult, args.repeats = 8, 4, 0.25, 1
    if args.batch % args.ids_per_batch:
        p.error("--batch must be a multiple of --ids-per-batch")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, 112, 96, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(args.ids_per_batch), args.batch // args.ids_per_batch)

    ours = measure(False, args, images, labels)
    ref = measure(True, args, images, labels)
    diff = float(np.max(np.abs(ours.pop("embedding") - ref.pop("embedding"))))
    report = {"config": {k: v for k, v in vars(args).items() if k != "json_out"},
              "ours": ours, args.reference: ref,
              "embed_speedup": ours["embed_images_per_s"] / ref["embed_images_per_s"],
              "step_speedup": ours["step_images_per_s"] / ref["step_images_per_s"],
              "embedding_max_abs_diff": diff, "devices": str(jax.devices())}
    print(f"MobileFaceNet width {args.width_mult}, batch {args.batch}, 112x96, {jax.devices()[0].platform}")
    print(f"{'':24}{'ours':>16}{args.reference:>18}{'ratio':>8}")
    for key, label in (("embed", "embedding images/s"), ("step", "hard_disp step images/s")):
        a, b = ours[f"{key}_images_per_s"], ref[f"{key}_images_per_s"]
        print(f"{label:24}{a:16.1f}{b:18.1f}{a / b:7.2f}x")
    print(f"largest embedding difference between the two: {diff:.2e}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
