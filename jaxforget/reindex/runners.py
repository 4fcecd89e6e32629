"""Who runs :func:`.shard.embed_shard` over the shards left to do: this process, or Ray Data.

* :func:`run_local`: one engine in this process, the shards one after the other, a decoding
  thread pool shared by all of them.
* :func:`run_ray`: Ray Data ``map_batches`` over an actor pool (``ActorPoolStrategy``); each
  actor loads the engine once and writes whole shards into ``OUT`` (which every node must see at
  the same path, like the gallery). Against a running cluster (``address``) or a local one
  started for the run and shut down after it. The optional ``scale`` extra
  (``pip install 'jaxforget[scale]'``).

Both yield each shard's done record as the shard completes (in any order for Ray).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import os
import pathlib
from typing import Any, Callable, Iterable, Iterator

from jaxforget.errors import UserError
from jaxforget.eval.engines import open_engine
from jaxforget.reindex.layout import read_listing_shard
from jaxforget.reindex.shard import ShardSpec, ShardTask, embed_shard

_RAY = "pip install 'jaxforget[scale]' (Ray Data)"


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """How a worker opens the engine (plain values: it travels to Ray workers)."""

    model: str
    engine: str
    batch_size: int = 64
    threads: int | None = None
    gpu: bool = False

    def open(self) -> Any:
        return open_engine(self.model, self.engine, batch_size=self.batch_size, threads=self.threads, gpu=self.gpu)


def run_local(spec: ShardSpec, tasks: Iterable[ShardTask], engine: EngineSpec | Any,
              progress: Callable[[int], None] | None = None) -> Iterator[dict[str, Any]]:
    """The shards in this process, in order (``engine``: an :class:`EngineSpec` or an open engine)."""
    engine = engine.open() if isinstance(engine, EngineSpec) else engine
    with concurrent.futures.ThreadPoolExecutor(max(1, spec.decode_threads), thread_name_prefix="decode") as pool:
        for task in tasks:
            yield embed_shard(spec, task, engine, progress, pool)


class _ShardActor:
    """A Ray Data actor: the engine loaded once, then one shard per call."""

    def __init__(self, spec: ShardSpec, engine: EngineSpec, listing: str):
        self.spec, self.listing = spec, listing
        self.engine = engine.open()
        self.pool = concurrent.futures.ThreadPoolExecutor(max(1, spec.decode_threads), thread_name_prefix="decode")

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        records = []
        for k, digest in zip(batch["shard"], batch["digest"]):
            task = ShardTask(int(k), str(digest), read_listing_shard(pathlib.Path(self.listing), int(k)))
            records.append(json.dumps(embed_shard(self.spec, task, self.engine, None, self.pool)))
        return {"record": records}


def _import_ray() -> Any:
    try:
        import ray  # optional dependency: the 'scale' extra
        import ray.data  # noqa: F401
    except ImportError as e:
        raise UserError(f"--runner=ray needs Ray Data ({e}); install it with {_RAY}") from None
    return ray


def _package_root() -> str:
    """The folder holding this ``jaxforget`` package (a local cluster's workers import it)."""
    return str(pathlib.Path(__file__).resolve().parents[2])


def run_ray(spec: ShardSpec, tasks: list[tuple[int, str]], engine: EngineSpec, listing: pathlib.Path, *,
            address: str | None = None, workers: int = 2, cpus_per_worker: float = 1.0,
            gpus_per_worker: float = 0.0, progress: Callable[[int], None] | None = None) -> Iterator[dict[str, Any]]:
    """The shards ``tasks`` (``(k, digest)``; their photos are read from ``listing``) on Ray.

    Without ``address`` a local cluster of ``workers * cpus_per_worker`` CPUs is started (and shut
    down at the end); its workers import this checkout of jaxforget. On a cluster every node needs
    jaxforget installed, and the gallery and ``OUT`` at the same paths (docs/REINDEX.md).
    """
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            path = os.pathsep.join(p for p in (_package_root(), os.environ.get("PYTHONPATH", "")) if p)
            ray.init(num_cpus=max(1, round(workers * cpus_per_worker)), num_gpus=int(round(workers * gpus_per_worker)),
                     include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                     runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ds = ray.data.from_items([{"shard": k, "digest": d} for k, d in tasks], override_num_blocks=max(1, len(tasks)))
        results = ds.map_batches(
            _ShardActor, batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=max(1, min(int(workers), len(tasks)))),
            fn_constructor_kwargs={"spec": spec, "engine": engine, "listing": str(listing)},
            num_cpus=cpus_per_worker, num_gpus=gpus_per_worker or None)
        for row in results.iter_rows():
            record = json.loads(row["record"])
            if progress:
                progress(record["images"])
            yield record
    finally:
        if started:
            ray.shutdown()
