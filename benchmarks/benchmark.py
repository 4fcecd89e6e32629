#!/usr/bin/env python3
"""Performance benchmark of jaxforget against a PyTorch eager reference, side by side.

One command (from the repository root)::

    python3 -m benchmarks.benchmark                 # IResNet-50, 112x112, batch 32 (slow on CPU)
    python3 -m benchmarks.benchmark --quick         # tiny sizes, seconds (CI smoke)
    python3 -m benchmarks.benchmark --width-mult 0.25 --image-size 64 --steps 3   # quick iteration

It prints a table and writes JSON (``--json-out``, default ``benchmark.json``) with, each figure
measured in the same run as its reference:

1. **Unlearning step** (hard dispersion, SGD momentum 0.9, weight decay 5e-4, BatchNorm in train
   mode, no flip): images/s of the product's step -- :func:`jaxforget.trainer.unlearn`, the one
   unlearning recipe (jitted ``make_update_step`` with the state donated), timed per step by the
   trainer -- against PyTorch eager on the same IResNet
   (:class:`jaxforget.testing.torch_reference.TorchIResNet`), with the loss and optimiser written
   below; in float32 and in
   bfloat16 compute with float32 parameters (jax ``model.dtype='bfloat16'``; torch
   ``autocast(bfloat16)``). Both start from the *same* weights (the jax initialisation exported
   with :func:`jaxforget.models.torch_state_dict`) and the same batch, and the first steps' losses
   are compared, so the two sides are shown to compute the same thing. FLOPs per step come from
   XLA's cost analysis of the lowered step; achieved FLOP/s are compared with the matmul ceiling
   measured in the same run (a large ``jnp.dot`` / ``torch.mm`` in fp32 and bf16).
2. **Embedding export** (inference): images/s of ``jaxforget.eval.make_embed_fn`` (jitted, no
   flip) against the same PyTorch model in eval mode under ``torch.inference_mode``.
3. **Retrieval evaluation**: time of ``jaxforget.eval.metrics.retrieval_metrics`` (exact) and of a
   FAISS exact search against the numpy brute-force reference of ``benchmarks/bench_retrieval.py``.
4. **Peak memory** of each measurement: the process's peak resident set (``VmHWM``), reset with
   ``/proc/self/clear_refs`` after compilation and warm-up so the figure covers the timed steps
   only, reported absolute and above the RSS measured before the model was built; tracemalloc's
   peak is added for the numpy reference. (JAX's ``Device.memory_stats()`` is ``None`` on CPU; it
   is reported when available.)
5. **Input pipeline**: after the timed steps the same trainer call is fed by the grain pipeline
   (``jaxforget.data.pipeline.train_dataset`` over ``SyntheticFaces``); reported are the trainer's
   wait for each batch (``data_wait_s``; grain's threads prepare batches while a step runs) and the
   step time with and without the pipeline.

Threads: both frameworks get the same ``--threads`` cores (default: all the process may use).
Each measurement runs in its own worker process (``--isolation process``, default) pinned to
those cores with ``sched_setaffinity`` -- XLA's CPU thread pool sizes itself from the affinity
mask -- with ``torch.set_num_threads`` and ``OMP_NUM_THREADS`` set to the same count, and PyTorch's
OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``, ``--omp-wait-policy``: 2-4x
faster for PyTorch on a loaded, shared CPU; docs/PERFORMANCE.md). Separate
processes keep one framework's spinning thread pool from slowing the other and make the peak
memory of each measurement its own. ``--quick`` runs everything in one process to stay fast.

``--only conv_parts`` times one convolution's forward, input gradient and weight gradient in both
frameworks (where the step's time goes).

Timing: ``--warmup`` untimed steps (the first also compiles), then ``--steps`` timed steps; the
table reports the median step, the JSON every step time. Ratios are jaxforget / PyTorch
throughput from the medians.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: Default XLA flags for the CPU backend (each was measured; see docs/PERFORMANCE.md).
DEFAULT_XLA_FLAGS = ""


# ------------------------------------------------------------------------------------------------
# Specification of a run
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Spec:
    """Everything a worker needs; serialised to JSON for worker processes."""

    model: str = "iresnet50"
    batch: int = 32
    image_size: int = 112
    width_mult: float = 1.0
    embedding_size: int = 512
    ids_per_batch: int = 8
    steps: int = 3
    warmup: int = 1
    embed_batch: int = 32
    threads: int = 1
    xla_flags: str = DEFAULT_XLA_FLAGS
    torch_memory_format: str = "channels_last"
    omp_wait_policy: str = "passive"  # OMP_WAIT_POLICY of torch's OpenMP pool ('' = library default)
    matmul_size: int = 2048
    retrieval_gallery: int = 20000
    retrieval_dim: int = 512
    pipeline_steps: int = 3
    pipeline_threads: int = 1
    seed: int = 0
    #: Blocks per stage overriding the depth's (``--quick`` uses (1, 1, 1, 1) to compile fast).
    stage_blocks: list[int] | None = None

    @property
    def images_per_id(self) -> int:
        return self.batch // self.ids_per_batch


# ------------------------------------------------------------------------------------------------
# Process set-up: threads, memory probes
# ------------------------------------------------------------------------------------------------


def setup_threads(spec: Spec) -> None:
    """Pins the process to ``spec.threads`` cores and sets thread counts; call before importing jax."""
    cpus = sorted(os.sched_getaffinity(0))
    if spec.threads > len(cpus):
        raise ValueError(f"--threads {spec.threads} exceeds the {len(cpus)} cores this process may use ({cpus})")
    os.sched_setaffinity(0, cpus[: spec.threads])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(spec.threads)
    if spec.omp_wait_policy:
        os.environ["OMP_WAIT_POLICY"] = spec.omp_wait_policy.upper()
    # A test harness may ask for several fake CPU devices; the benchmark uses one device.
    inherited = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
    os.environ["XLA_FLAGS"] = " ".join((inherited + " " + spec.xla_flags).split())
    if "jax" in sys.modules or "torch" in sys.modules:
        raise RuntimeError("setup_threads must run before jax and torch are imported")


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{field}:\s+(\d+)\s+kB", f.read(), re.M)
    return int(m.group(1)) / 1024.0 if m else float("nan")


def rss_mb() -> float:
    """Current resident set size of this process (MiB)."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Peak resident set size since the last :func:`reset_peak_rss` (MiB)."""
    return _status_mb("VmHWM")


def reset_peak_rss() -> bool:
    """Resets the kernel's peak-RSS counter of this process (Linux >= 4.0); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemoryProbe:
    """Peak RSS of a measured region, absolute and above a baseline taken before set-up."""

    def __init__(self) -> None:
        self.baseline = rss_mb()
        self.peak_with_setup = float("nan")
        self.resettable = False

    def start_timed(self) -> None:
        """Call after compilation / warm-up: the peak from here on covers only the timed work."""
        self.peak_with_setup = peak_rss_mb()
        self.resettable = reset_peak_rss()

    def report(self) -> dict[str, Any]:
        peak = peak_rss_mb()
        return {
            "peak_rss_mb": round(peak, 1),
            "peak_rss_above_baseline_mb": round(peak - self.baseline, 1),
            "peak_rss_incl_setup_mb": round(max(self.peak_with_setup, peak), 1),
            "baseline_rss_mb": round(self.baseline, 1),
            "peak_reset_ok": self.resettable,
        }


def _timed(fn: Callable[[], Any], warmup: int, steps: int) -> tuple[list[float], list[Any]]:
    outs = []
    for _ in range(warmup):
        outs.append(fn())
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        outs.append(fn())
        times.append(time.perf_counter() - t0)
    return times, outs


def _throughput(times: list[float], images: int) -> dict[str, Any]:
    med = statistics.median(times)
    return {
        "step_s": [round(t, 5) for t in times],
        "median_s": round(med, 5),
        "images_per_s": images / med,
        "images_per_s_best": images / min(times),
    }


# ------------------------------------------------------------------------------------------------
# Shared inputs
# ------------------------------------------------------------------------------------------------


def make_batch(spec: Spec):
    """A P x K batch of random uint8 NHWC images and int32 labels (same for both frameworks)."""
    import numpy as np

    if spec.batch % spec.ids_per_batch:
        raise ValueError(f"--batch {spec.batch} must be a multiple of --ids-per-batch {spec.ids_per_batch}")
    rng = np.random.default_rng(spec.seed)
    images = rng.integers(0, 256, (spec.batch, spec.image_size, spec.image_size, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(spec.ids_per_batch, dtype=np.int32), spec.images_per_id)
    return images, labels


def build_bundle(spec: Spec, dtype: str):
    """The jaxforget model bundle for ``spec`` (``spec.stage_blocks`` overrides the depth's blocks)."""
    from jaxforget.models import build_model

    bundle = build_model(model_cfg(spec, dtype))
    if spec.stage_blocks:
        bundle = dataclasses.replace(bundle, module=bundle.module.clone(stage_blocks=tuple(spec.stage_blocks)))
    return bundle


def model_cfg(spec: Spec, dtype: str) -> dict[str, Any]:
    return {
        "name": spec.model,
        "width_mult": spec.width_mult,
        "input_size": (spec.image_size, spec.image_size),
        "embedding_size": spec.embedding_size,
        "dtype": dtype,
    }


METHOD_CFG = {"name": "hard_disp", "optimizer": "sgd", "lr": 1e-3, "momentum": 0.9,
              "weight_decay": 5e-4, "flip": False, "bn_mode": "train", "margin": -1.0}


def jax_variables(spec: Spec):
    """The fp32 bundle and its random variables (seed ``spec.seed``): both frameworks start here."""
    from jaxforget.models import init_variables

    bundle = build_bundle(spec, "float32")
    return bundle, init_variables(bundle, spec.seed)


# ------------------------------------------------------------------------------------------------
# PyTorch side: the reference IResNet (jaxforget.testing), hard dispersion, SGD
# ------------------------------------------------------------------------------------------------


def build_torch_iresnet(spec: Spec):
    """The PyTorch reference IResNet (:class:`jaxforget.testing.torch_reference.TorchIResNet`,
    arcface_torch's layout) at ``spec``'s depth (or ``spec.stage_blocks``), width and sizes."""
    from jaxforget.models.iresnet import IRESNET_STAGES
    from jaxforget.models.registry import canonical_name
    from jaxforget.testing.torch_reference import TorchIResNet

    depth = int(canonical_name(spec.model)[len("iresnet"):])
    stages = tuple(spec.stage_blocks or IRESNET_STAGES[depth])
    return TorchIResNet(stages, spec.width_mult, spec.embedding_size, (spec.image_size, spec.image_size))


def torch_model_from_jax(spec: Spec, bundle, variables):
    """The PyTorch model holding exactly the jax model's initial weights."""
    import torch

    from jaxforget.models import torch_state_dict

    net = build_torch_iresnet(spec)
    sd = torch_state_dict(bundle, variables)
    net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in sd.items()}, strict=True)
    if spec.torch_memory_format == "channels_last":
        net = net.to(memory_format=torch.channels_last)
    return net


def torch_hard_dispersion(z, labels, margin: float = 0.0):
    """Paper Eq. 6 on L2-normalised embeddings: mean over anchors of max(hardest positive cos, m)."""
    import torch
    import torch.nn.functional as F

    z = F.normalize(z.float(), dim=1, eps=1e-6)
    cos = z @ z.t()
    eye = torch.eye(len(labels), dtype=torch.bool, device=z.device)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    hardest = torch.where(pos, cos, torch.full_like(cos, -2.0)).amax(dim=1)
    per_anchor = torch.clamp(hardest, min=margin)
    anchors = pos.any(dim=1)
    return (per_anchor * anchors).sum() / anchors.sum().clamp(min=1)


def torch_images(spec: Spec, images_np):
    """uint8 NHWC numpy -> uint8 NCHW tensor view (channels-last memory when so configured)."""
    import torch

    x = torch.from_numpy(images_np).permute(0, 3, 1, 2)  # a channels_last view of NHWC memory
    return x if spec.torch_memory_format == "channels_last" else x.contiguous()


def import_torch(spec: Spec):
    """``torch`` with its intra-op pool set to ``spec.threads`` (imported only where it is measured)."""
    import torch

    torch.set_num_threads(spec.threads)
    return torch


def _autocast(device: str, bf16: bool):
    import torch

    return torch.autocast(device, dtype=torch.bfloat16, enabled=bf16)


# ------------------------------------------------------------------------------------------------
# Measurements (each returns a plain dict)
# ------------------------------------------------------------------------------------------------


def measure_ceiling(spec: Spec) -> dict[str, Any]:
    """GFLOP/s of a large square matmul in fp32 and bf16 (jax and torch): the compute ceiling."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    torch = import_torch(spec)
    n = spec.matmul_size
    flops = 2.0 * n**3
    reps = 3
    out: dict[str, Any] = {"matmul_size": n}
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    for name, dt in (("fp32", jnp.float32), ("bf16", jnp.bfloat16)):
        x = jnp.asarray(a, dt)
        f = jax.jit(jnp.dot)
        times, _ = _timed(lambda: f(x, x).block_until_ready(), 1, reps)
        out[f"jax_{name}_gflops"] = flops / min(times) / 1e9
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        x = torch.from_numpy(a).to(dt)
        times, _ = _timed(lambda: torch.mm(x, x), 1, reps)
        out[f"torch_{name}_gflops"] = flops / min(times) / 1e9
    out["jax_gflops"] = max(out["jax_fp32_gflops"], out["jax_bf16_gflops"])
    return out


def _cost_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def measure_jax_step(spec: Spec, dtype: str, pipeline: bool = False) -> dict[str, Any]:
    """Images/s of the product's unlearning step: :func:`jaxforget.trainer.unlearn` (jitted,
    donated hard-dispersion update, one device, nothing written) on one fixed batch, timed per step
    by the trainer (``step_time_s``: the update and the read-back of its metrics); FLOPs from XLA's
    cost analysis of the same update step.

    With ``pipeline``, the same call goes on with the grain pipeline's first batch and
    ``spec.pipeline_steps`` more (one compilation for both): see :func:`_pipeline_report`.
    """
    import jax

    from jaxforget import methods, trainer
    from jaxforget.models import layers

    images, labels = make_batch(spec)
    mem = MemoryProbe()
    _, variables = jax_variables(spec)
    bundle = build_bundle(spec, dtype)
    method = methods.get_method("hard_disp")
    ctx = methods.Context(apply_fn=bundle.module.apply, pixel_mean=bundle.pixel_mean,
                          pixel_std=bundle.pixel_std)
    batch = jax.device_put({"image": images, "label": labels})
    timed = spec.warmup + spec.steps
    # The pipeline's first batch, then spec.pipeline_steps timed ones.
    extra = spec.pipeline_steps + 1 if pipeline and spec.pipeline_steps > 0 else 0
    feed = _pipeline_feed(spec, spec.pipeline_steps if extra else 0)
    hp = methods.resolve_hparams({**METHOD_CFG, "steps": timed + extra}, method)
    found: dict[str, Any] = {}

    def on_step(step: int, state: Any, record: dict[str, float]) -> None:
        if step == 1:
            # The model's FLOPs: those of the program with XLA's own convolutions (the Winograd
            # gradients of jaxforget.models.layers.Conv3x3 do fewer multiplications for the same
            # result); the executed ones with jaxforget's layers, before XLA's optimisations.
            lower = lambda: jax.jit(methods.make_update_step(method, hp, ctx)).lower(  # noqa: E731
                state, {"forget": batch})
            with layers.xla_convolutions():
                found["flops"] = _cost_flops(lower())
            found["executed_flops"] = _cost_flops(lower())
        if step == spec.warmup:
            mem.start_timed()
        if step == timed:
            found["memory"] = mem.report()

    result = trainer.unlearn(
        method, hp, ctx, variables,
        {"forget": itertools.chain(itertools.repeat(batch, timed), feed.batches)},
        rng=jax.random.key(spec.seed, impl="rbg"), on_step=on_step)
    records = result.metrics
    times = [r["step_time_s"] for r in records[spec.warmup:timed]]
    flops = found["flops"]
    out = {"framework": "jax", "dtype": dtype,
           "first_step_s": records[0]["step_time_s"],  # compilation included
           "flops_per_step": flops, "executed_flops_per_step": found["executed_flops"],
           "losses": [r["loss"] for r in records[:timed]], **_throughput(times, spec.batch),
           **found["memory"]}
    out["achieved_gflops"] = flops / out["median_s"] / 1e9
    stats = jax.devices()[0].memory_stats()
    if stats:
        out["device_peak_bytes"] = stats.get("peak_bytes_in_use")
    if extra > 0:
        out["pipeline"] = _pipeline_report(spec, feed, records[timed:], out["median_s"])
    return out


@dataclasses.dataclass
class _Feed:
    """Batches of the grain pipeline for the steps after the timed ones (none when ``steps=0``)."""

    dataset: Any = None
    batches: Any = ()


def _pipeline_feed(spec: Spec, steps: int) -> _Feed:
    """``train_dataset`` over ``SyntheticFaces`` at the benchmark's sizes: its first batch (taken
    now, which starts the pipeline's threads; not timed) and ``steps`` more, images and labels
    only, as the fixed batch has them."""
    if steps <= 0:
        return _Feed()
    from jaxforget.data.pipeline import train_dataset
    from jaxforget.data.synthetic import SyntheticFaces

    source = SyntheticFaces(num_identities=4 * spec.ids_per_batch, images_per_identity=spec.images_per_id + 2,
                            size=(spec.image_size, spec.image_size), seed=spec.seed)
    ds = train_dataset(source, identities_per_batch=spec.ids_per_batch, images_per_identity=spec.images_per_id,
                       seed=spec.seed, num_threads=spec.pipeline_threads)
    it = iter(ds)
    first = next(it)

    def batches():
        for b in itertools.chain([first], itertools.islice(it, steps)):
            yield {"image": b["image"], "label": b["label"]}

    return _Feed(ds, batches())


def _pipeline_report(spec: Spec, feed: _Feed, records: list[dict[str, float]], compute_s: float
                     ) -> dict[str, Any]:
    """The trainer's wait for each pipeline batch (``data_wait_s``: the loop asks for the next batch
    once the previous step has finished; grain's threads prepare batches meanwhile), the step time
    with that wait, and the time of a batch alone (a fresh iterator while nothing else runs)."""
    waits = [r["data_wait_s"] for r in records[1:]]  # the first batch was taken before the run
    walls = [r["data_wait_s"] + r["step_time_s"] for r in records[1:]]
    fresh = iter(feed.dataset)
    next(fresh)
    t0 = time.perf_counter()
    for _ in range(spec.pipeline_steps):
        next(fresh)
    alone = (time.perf_counter() - t0) / spec.pipeline_steps
    wall = statistics.median(walls)
    return {
        "wait_s": [round(w, 5) for w in waits],
        "mean_wait_s": statistics.fmean(waits),
        "max_wait_s": max(waits),
        "median_step_with_pipeline_s": wall,
        "median_step_compute_only_s": compute_s,
        "wait_fraction": statistics.fmean(waits) / wall,
        "batch_alone_s": alone,
        "pipeline_threads": spec.pipeline_threads,
    }


def measure_torch_step(spec: Spec, dtype: str) -> dict[str, Any]:
    """Images/s of a PyTorch eager step of the same model, loss and optimiser (from the same weights)."""
    torch = import_torch(spec)

    images, labels = make_batch(spec)
    mem = MemoryProbe()
    bundle, variables = jax_variables(spec)
    net = torch_model_from_jax(spec, bundle, variables).train()
    del variables
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=METHOD_CFG["lr"],
                          momentum=METHOD_CFG["momentum"], weight_decay=METHOD_CFG["weight_decay"])
    x_u8 = torch_images(spec, images)
    y = torch.from_numpy(labels).long()
    bf16 = dtype == "bfloat16"
    losses: list[float] = []

    def step():
        x = (x_u8.float() - 127.5) / 127.5
        with _autocast("cpu", bf16):
            z = net(x)
        loss = torch_hard_dispersion(z, y, METHOD_CFG["margin"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))

    for _ in range(spec.warmup):
        step()
    mem.start_timed()
    times, _ = _timed(step, 0, spec.steps)
    return {"framework": "torch", "dtype": dtype, "losses": losses, "threads": torch.get_num_threads(),
            "memory_format": spec.torch_memory_format, **_throughput(times, spec.batch), **mem.report()}


def measure_jax_embed(spec: Spec, dtype: str) -> dict[str, Any]:
    """Images/s of jaxforget's jitted embedding function (eval mode, no flip)."""
    import functools

    import jax
    import numpy as np

    from jaxforget.eval.embed import make_embed_fn

    images = make_batch(dataclasses.replace(spec, batch=spec.embed_batch))[0]
    mem = MemoryProbe()
    _, variables = jax_variables(spec)
    bundle = build_bundle(spec, dtype)
    fn = jax.jit(make_embed_fn(functools.partial(bundle.module.apply, train=False), bundle.pixel_mean,
                               bundle.pixel_std, flip="none"))
    x = jax.device_put(images)
    compiled = fn.lower(variables, x).compile()
    flops = _cost_flops(compiled)
    embs = []
    for _ in range(spec.warmup):
        embs.append(np.asarray(compiled(variables, x)))
    mem.start_timed()
    times, outs = _timed(lambda: np.asarray(compiled(variables, x)), 0, spec.steps)
    return {"framework": "jax", "dtype": dtype, "flops_per_batch": flops, "first_row": outs[0][0, :4].tolist(),
            **_throughput(times, spec.embed_batch), **mem.report()}


def measure_torch_embed(spec: Spec, dtype: str) -> dict[str, Any]:
    """Images/s of the PyTorch model in eval mode under ``torch.inference_mode``."""
    torch = import_torch(spec)
    import torch.nn.functional as F

    images = make_batch(dataclasses.replace(spec, batch=spec.embed_batch))[0]
    mem = MemoryProbe()
    bundle, variables = jax_variables(spec)
    net = torch_model_from_jax(spec, bundle, variables).eval()
    del variables
    x_u8 = torch_images(spec, images)
    bf16 = dtype == "bfloat16"

    def run():
        with torch.inference_mode(), _autocast("cpu", bf16):
            z = net((x_u8.float() - 127.5) / 127.5)
            return F.normalize(z.float(), dim=1).numpy()

    for _ in range(spec.warmup):
        run()
    mem.start_timed()
    times, outs = _timed(run, 0, spec.steps)
    return {"framework": "torch", "dtype": dtype, "first_row": outs[0][0, :4].tolist(),
            **_throughput(times, spec.embed_batch), **mem.report()}


def measure_retrieval(spec: Spec) -> dict[str, Any]:
    """Seconds and peak memory of exact retrieval metrics: jaxforget vs the numpy brute-force reference.

    Data and reference come from :mod:`benchmarks.bench_retrieval` (150 queries of 10 identities
    placed in a gallery of random distractors, own image excluded by id); this benchmark runs small
    galleries, ``bench_retrieval`` the 75k / 1M ones.
    """
    import tracemalloc

    import numpy as np

    from benchmarks import bench_retrieval as br
    from jaxforget.eval import index as faiss_index
    from jaxforget.eval.metrics import retrieval_metrics, topk_retrieval_metrics

    q, ql, qid, g, gl, gid = br.make_data(spec.retrieval_gallery, spec.retrieval_dim, spec.seed)

    def run(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        reset_peak_rss()
        base = rss_mb()
        tracemalloc.start()
        t0 = time.perf_counter()
        res = fn()
        secs = time.perf_counter() - t0
        _, traced = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return {"seconds": secs, "peak_rss_above_baseline_mb": round(peak_rss_mb() - base, 1),
                "tracemalloc_peak_mb": round(traced / 2**20, 1),
                "mAP": float(res.get("mAP", res.get("mAP@K", np.nan))), "R@1": float(res["R@1"])}

    def faiss_flat():
        idx = faiss_index.build_index(g)
        _, top = faiss_index.search(idx, q, 101)
        return topk_retrieval_metrics(top, ql, gl, qid, gid)

    out: dict[str, Any] = {"queries": int(q.shape[0]), "gallery": int(g.shape[0]), "dim": int(g.shape[1])}
    out["jaxforget_exact"] = run(lambda: retrieval_metrics(q, ql, g, gl, qid, gid))
    out["faiss_flat_top100"] = run(faiss_flat)
    out["numpy_reference"] = run(lambda: br.numpy_reference(q, ql, qid, g, gl, gid))
    out["speedup_exact_vs_numpy"] = out["numpy_reference"]["seconds"] / out["jaxforget_exact"]["seconds"]
    out["mAP_abs_diff_exact_vs_numpy"] = abs(out["jaxforget_exact"]["mAP"] - out["numpy_reference"]["mAP"])
    return out


def measure_conv_parts(spec: Spec) -> dict[str, Any]:
    """GFLOP/s of one 3x3 convolution's forward, input gradient and weight gradient, jax vs torch.

    The layer is IResNet-50's stage-3 body (256 channels at 14x14 for 112x112 inputs, scaled by
    ``spec``), batch ``spec.batch``; it locates where the training step's time goes.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    torch = import_torch(spec)
    import torch.nn.functional as F

    from jaxforget.models.iresnet import scaled_width

    b, h, c = spec.batch, spec.image_size // 8, scaled_width(256, spec.width_mult)
    rng = np.random.default_rng(spec.seed)
    x = rng.standard_normal((b, h, h, c), dtype=np.float32)
    w = rng.standard_normal((3, 3, c, c), dtype=np.float32) * 0.05
    dy = rng.standard_normal((b, h, h, c), dtype=np.float32)
    flops = 2.0 * b * h * h * c * c * 9

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))

    jx, jw, jdy = map(jnp.asarray, (x, w, dy))
    jax_fns = {
        "forward": (jax.jit(conv), (jx, jw)),
        "input_grad": (jax.jit(lambda w, dy: jax.vjp(lambda x: conv(x, w), jx)[1](dy)[0]), (jw, jdy)),
        "weight_grad": (jax.jit(lambda x, dy: jax.vjp(lambda w: conv(x, w), jw)[1](dy)[0]), (jx, jdy)),
    }
    tx = torch.from_numpy(x).permute(0, 3, 1, 2)  # channels_last views
    tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
    tdy = torch.from_numpy(dy).permute(0, 3, 1, 2)
    torch_fns = {
        "forward": lambda: F.conv2d(tx, tw, padding=1),
        "input_grad": lambda: torch.nn.grad.conv2d_input(tx.shape, tw, tdy, padding=1),
        "weight_grad": lambda: torch.nn.grad.conv2d_weight(tx, tw.shape, tdy, padding=1),
    }
    out: dict[str, Any] = {"shape": [b, h, h, c], "gflop": flops / 1e9}
    for part, (f, args) in jax_fns.items():
        times, _ = _timed(lambda: f(*args).block_until_ready(), 1, max(3, spec.steps))
        out[f"jax_{part}_gflops"] = flops / statistics.median(times) / 1e9
    for part, f in torch_fns.items():
        times, _ = _timed(f, 1, max(3, spec.steps))
        out[f"torch_{part}_gflops"] = flops / statistics.median(times) / 1e9
    return out


#: Run only when named in ``--only`` (diagnostics, not part of the report).
def measure_jax_step_xla_convs(spec: Spec) -> dict[str, Any]:
    """The fp32 step with plain ``nn.Conv`` (XLA's convolutions and gradients) for the 3x3 stride-1
    and 1x1 layers, i.e. before ``Conv3x3`` / ``Conv1x1``."""
    from jaxforget.models import layers

    with layers.xla_convolutions():
        return measure_jax_step(spec, "float32")


EXTRA_MEASUREMENTS: dict[str, Callable[[Spec], dict[str, Any]]] = {
    "conv_parts": measure_conv_parts, "jax_step_fp32_xla_convs": measure_jax_step_xla_convs}

MEASUREMENTS: dict[str, Callable[[Spec], dict[str, Any]]] = {
    "ceiling": measure_ceiling,
    "jax_step_fp32": lambda s: measure_jax_step(s, "float32", pipeline=True),
    "torch_step_fp32": lambda s: measure_torch_step(s, "float32"),
    "jax_step_bf16": lambda s: measure_jax_step(s, "bfloat16"),
    "torch_step_bf16": lambda s: measure_torch_step(s, "bfloat16"),
    "jax_embed_fp32": lambda s: measure_jax_embed(s, "float32"),
    "torch_embed_fp32": lambda s: measure_torch_embed(s, "float32"),
    "jax_embed_bf16": lambda s: measure_jax_embed(s, "bfloat16"),
    "torch_embed_bf16": lambda s: measure_torch_embed(s, "bfloat16"),
    "retrieval": measure_retrieval,
}


# ------------------------------------------------------------------------------------------------
# Orchestration
# ------------------------------------------------------------------------------------------------


def run_worker(name: str, spec: Spec) -> dict[str, Any]:
    """Runs one measurement in a fresh process; returns its dict (errors are raised with its output)."""
    cmd = [sys.executable, "-m", "benchmarks.benchmark", "--worker", name, "--spec",
           json.dumps(dataclasses.asdict(spec))]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"benchmark worker {name!r} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def worker_main(name: str, spec_json: str) -> None:
    spec = Spec(**json.loads(spec_json))
    setup_threads(spec)
    known = {**MEASUREMENTS, **EXTRA_MEASUREMENTS}
    if name not in known:
        raise SystemExit(f"--worker {name!r} is not a measurement; choose one of {sorted(known)}")
    print("RESULT " + json.dumps(known[name](spec)), flush=True)


def summarise(spec: Spec, raw: dict[str, dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """Assembles the JSON report: raw measurements plus ratios, utilisation and parity checks."""
    import jax
    import torch

    ceiling = raw["ceiling"]
    report: dict[str, Any] = {
        "config": {**dataclasses.asdict(spec), "method": METHOD_CFG,
                   "cpu": platform.processor() or platform.machine(), "cores_used": spec.threads,
                   "jax": jax.__version__, "torch": torch.__version__, "python": platform.python_version(),
                   "jax_backend": jax.default_backend(), "wall_s": wall_s},
        "ceiling": ceiling,
        "step": {},
        "embed": {},
    }
    for kind in ("step", "embed"):
        for short, dtype in (("fp32", "float32"), ("bf16", "bfloat16")):
            j, t = raw[f"jax_{kind}_{short}"], raw[f"torch_{kind}_{short}"]
            entry: dict[str, Any] = {"jax": j, "torch": t, "speedup": j["images_per_s"] / t["images_per_s"],
                                     "speedup_best": j["images_per_s_best"] / t["images_per_s_best"]}
            if kind == "step":
                flops = raw["jax_step_fp32"]["flops_per_step"]  # model FLOPs, same for both frameworks
                ceil = ceiling[f"jax_{short}_gflops"]
                entry["model_gflops_per_step"] = flops / 1e9
                entry["jax_utilisation"] = flops / j["median_s"] / 1e9 / ceil
                entry["torch_achieved_gflops"] = flops / t["median_s"] / 1e9
                entry["torch_utilisation"] = entry["torch_achieved_gflops"] / ceiling[f"torch_{short}_gflops"]
                n = min(len(j["losses"]), len(t["losses"]), 2)
                # The loss is a mean cosine: absolute differences are in cosine units.
                entry["loss_abs_diff_first_steps"] = [abs(j["losses"][i] - t["losses"][i]) for i in range(n)]
            else:
                entry["embedding_abs_diff"] = max(abs(a - b) for a, b in zip(j["first_row"], t["first_row"]))
            report[kind][short] = entry
    report["pipeline"] = raw["jax_step_fp32"].get("pipeline")
    report["config"]["load_average_after"] = os.getloadavg()
    report["retrieval"] = raw["retrieval"]
    report["goals"] = {
        "step_fp32_vs_torch_fp32": report["step"]["fp32"]["speedup"],
        "step_bf16_vs_torch_fp32": raw["jax_step_bf16"]["images_per_s"] / raw["torch_step_fp32"]["images_per_s"],
        "step_bf16_vs_torch_bf16": report["step"]["bf16"]["speedup"],
        "fp32_goal_met": report["step"]["fp32"]["speedup"] >= 1.0,
        "bf16_goal_met": raw["jax_step_bf16"]["images_per_s"] / raw["torch_step_fp32"]["images_per_s"] >= 1.5,
    }
    return report


def format_table(report: dict[str, Any]) -> str:
    """The human-readable table printed at the end of a run."""
    c = report["config"]
    rows = [("measurement", "jaxforget img/s", "torch img/s", "ratio", "jax peak MB", "torch peak MB", "note")]
    for kind, label in (("step", "unlearning step"), ("embed", "embedding export")):
        for short in ("fp32", "bf16"):
            e = report[kind][short]
            j, t = e["jax"], e["torch"]
            if kind == "step":
                note = (f"{e['model_gflops_per_step']:.1f} GFLOP/step; jax {j['achieved_gflops']:.0f} GFLOP/s "
                        f"({100 * e['jax_utilisation']:.0f}% of matmul), torch {e['torch_achieved_gflops']:.0f} "
                        f"({100 * e['torch_utilisation']:.0f}%); loss diff {max(e['loss_abs_diff_first_steps']):.1e}")
            else:
                note = f"embedding diff {e['embedding_abs_diff']:.1e}"
            rows.append((f"{label} {short}", f"{j['images_per_s']:.2f}", f"{t['images_per_s']:.2f}",
                         f"{e['speedup']:.2f}x", f"{j['peak_rss_above_baseline_mb']:.0f}",
                         f"{t['peak_rss_above_baseline_mb']:.0f}", note))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    fmt = lambda r: "  ".join(s.ljust(w) for s, w in zip(r, widths)).rstrip()  # noqa: E731
    lines = [
        f"{c['model']} width {c['width_mult']} {c['image_size']}x{c['image_size']} batch {c['batch']}, "
        f"{c['cores_used']} core(s) for each framework (jax {c['jax']}, torch {c['torch']}), "
        f"median of {c['steps']} steps after {c['warmup']} warm-up",
        fmt(rows[0]), fmt(tuple("-" * w for w in widths)), *map(fmt, rows[1:]),
    ]
    ce = report["ceiling"]
    lines.append(f"matmul ceiling ({ce['matmul_size']}^2): jax fp32 {ce['jax_fp32_gflops']:.0f} / bf16 "
                 f"{ce['jax_bf16_gflops']:.0f} GFLOP/s; torch fp32 {ce['torch_fp32_gflops']:.0f} / bf16 "
                 f"{ce['torch_bf16_gflops']:.0f} GFLOP/s")
    g = report["goals"]
    lines.append(f"goals: jax fp32 / torch fp32 = {g['step_fp32_vs_torch_fp32']:.2f}x (>= 1.0: "
                 f"{'met' if g['fp32_goal_met'] else 'NOT met'}); jax bf16 / torch fp32 = "
                 f"{g['step_bf16_vs_torch_fp32']:.2f}x (>= 1.5: {'met' if g['bf16_goal_met'] else 'NOT met'}); "
                 f"jax bf16 / torch bf16 = {g['step_bf16_vs_torch_bf16']:.2f}x")
    p = report.get("pipeline")
    if p:
        lines.append(f"input pipeline: mean wait {1e3 * p['mean_wait_s']:.1f} ms / step of "
                     f"{p['median_step_with_pipeline_s']:.3f} s ({100 * p['wait_fraction']:.1f}%); compute-only step "
                     f"{p['median_step_compute_only_s']:.3f} s; one batch alone {1e3 * p['batch_alone_s']:.1f} ms")
    r = report["retrieval"]
    ref = r["numpy_reference"]
    ref_txt = (f"numpy brute force {ref['seconds']:.3f} s ({ref['peak_rss_above_baseline_mb']:.0f} MB): "
               f"{r['speedup_exact_vs_numpy']:.1f}x, mAP diff {r['mAP_abs_diff_exact_vs_numpy']:.1e}")
    lines.append(f"retrieval {r['queries']} x {r['gallery']} x {r['dim']}: jaxforget exact "
                 f"{r['jaxforget_exact']['seconds']:.3f} s ({r['jaxforget_exact']['peak_rss_above_baseline_mb']:.0f} MB), "
                 f"FAISS flat top-100 {r['faiss_flat_top100']['seconds']:.3f} s, {ref_txt}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="iresnet50", help="iresnet18|34|50|100|200 (default iresnet50)")
    p.add_argument("--batch", type=int, default=32, help="images per step (P x K with --ids-per-batch P)")
    p.add_argument("--ids-per-batch", type=int, default=8, help="identities per batch (P); K = batch / P")
    p.add_argument("--image-size", type=int, default=112, help="square input side, divisible by 16")
    p.add_argument("--width-mult", type=float, default=1.0, help="channel width multiplier (small: quick runs)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (the first compiles)")
    p.add_argument("--pipeline-steps", type=int, default=3, help="steps fed by the grain pipeline (0: skip)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="cores for each framework (default: all this process may use)")
    p.add_argument("--xla-flags", default=DEFAULT_XLA_FLAGS, help="extra XLA_FLAGS for the jax workers")
    p.add_argument("--torch-memory-format", choices=("channels_last", "contiguous"), default="channels_last")
    p.add_argument("--omp-wait-policy", choices=("", "active", "passive"), default="passive",
                   help="OMP_WAIT_POLICY of torch's OpenMP threads ('' = the library's spinning default; "
                        "passive was 2.3x faster for torch on a shared, loaded CPU: docs/PERFORMANCE.md)")
    p.add_argument("--only", default="", help="comma-separated measurements to run (tuning; prints raw JSON, "
                   "no table); also 'conv_parts': one conv's forward / input-grad / weight-grad GFLOP/s")
    p.add_argument("--isolation", choices=("process", "none"), default=None,
                   help="one worker process per measurement (default) or all in this process (--quick default)")
    p.add_argument("--quick", action="store_true", help="tiny sizes for a CI smoke run (seconds)")
    p.add_argument("--json-out", default="benchmark.json", help="where to write the JSON report")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def spec_from_args(a: argparse.Namespace) -> Spec:
    spec = Spec(model=a.model, batch=a.batch, ids_per_batch=a.ids_per_batch, image_size=a.image_size,
                width_mult=a.width_mult, steps=a.steps, warmup=a.warmup, embed_batch=a.batch, threads=a.threads,
                xla_flags=a.xla_flags, torch_memory_format=a.torch_memory_format,
                pipeline_steps=a.pipeline_steps, omp_wait_policy=a.omp_wait_policy)
    if a.quick:
        # LLVM optimisation off: compiling is most of a tiny run; its numbers are not performance figures.
        spec = dataclasses.replace(spec, xla_flags=(a.xla_flags + " --xla_backend_optimization_level=0").strip(),
                                   model="iresnet18", stage_blocks=[1, 1, 1, 1], batch=8, ids_per_batch=2, image_size=32, width_mult=0.125,
                                   embedding_size=32, steps=2, warmup=1, embed_batch=8, matmul_size=256,
                                   retrieval_gallery=500, retrieval_dim=32, pipeline_steps=2)
    if spec.image_size % 16 or spec.image_size <= 0:
        raise SystemExit(f"--image-size {spec.image_size} must be a positive multiple of 16")
    if spec.batch % spec.ids_per_batch or spec.batch // spec.ids_per_batch < 2:
        raise SystemExit(f"--batch {spec.batch} must be a multiple of --ids-per-batch {spec.ids_per_batch} with "
                         "at least 2 images per identity (hard dispersion needs positives)")
    if spec.steps < 1 or spec.warmup < 1:
        raise SystemExit("--steps and --warmup must be >= 1 (the first step compiles and is never timed)")
    return spec


def check_model(spec: Spec) -> None:
    """The model must be an IResNet (the PyTorch reference's architecture); imports jaxforget."""
    from jaxforget.models.registry import canonical_name

    try:
        name = canonical_name(spec.model)
    except ValueError as e:
        raise SystemExit(f"--model: {e}") from None
    if not name.startswith("iresnet"):
        raise SystemExit(f"--model {spec.model!r}: the PyTorch reference is an IResNet; use iresnet18|34|50|100|200")


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.worker:
        worker_main(a.worker, a.spec or "{}")
        return 0
    spec = spec_from_args(a)
    isolation = a.isolation or ("none" if a.quick else "process")
    names = [n for n in a.only.split(",") if n] or list(MEASUREMENTS)
    known = {**MEASUREMENTS, **EXTRA_MEASUREMENTS}
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise SystemExit(f"--only: unknown measurement(s) {unknown}; choose from {sorted(known)}")
    if isolation == "none":
        setup_threads(spec)  # before jax / torch are imported
    check_model(spec)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    raw: dict[str, dict[str, Any]] = {}
    for name in names:
        print(f"[benchmark] {name} ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        raw[name] = known[name](spec) if isolation == "none" else run_worker(name, spec)
        print(f"[benchmark] {name} done in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    if a.only:
        print(json.dumps(raw, indent=1, default=float))
        return 0
    report = summarise(spec, raw, wall)
    report["config"]["load_average_before"] = load_before
    print(format_table(report))
    out = pathlib.Path(a.json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=float) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
