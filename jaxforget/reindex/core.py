"""The re-index recipe: list the gallery, check ``OUT``, embed the shards left, build the index, audit.

:func:`reindex` is what ``python -m jaxforget.reindex`` runs (and the benchmark and tests call).
Files and resuming: :mod:`.layout`; one shard: :mod:`.shard`; runners: :mod:`.runners`; the
index: :mod:`.index_build`; the audit: :mod:`.audit`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import sys
import time
from typing import Any, Iterator

from jaxforget import workdir
from jaxforget.data import detect
from jaxforget.data.gallery import Gallery, list_gallery
from jaxforget.errors import UserError
from jaxforget.eval.embed import Progress
from jaxforget.eval.engines import ENGINES, ModelInfo, default_engine, describe_model, model_kind, model_sha256
from jaxforget.reindex import audit as audit_lib
from jaxforget.reindex import index_build
from jaxforget.reindex.layout import (FORMAT, VERSION, Layout, check_same, finished, read_listing, read_manifest,
                                      write_listing)
from jaxforget.reindex.runners import EngineSpec, run_local, run_ray
from jaxforget.reindex.shard import ShardSpec, ShardTask

DTYPES = ("float32", "float16")
RUNNERS = ("local", "ray")


@dataclasses.dataclass
class Options:
    """Every setting of a re-index (the command line's flags, same names)."""

    engine: str = "auto"
    align: str | None = None
    detector_model: str | None = None
    descriptor_model: str | None = None
    shard_size: int = 10_000
    dtype: str = "float32"
    batch_size: int = 64
    decode_threads: int | None = None
    threads: int | None = None
    runner: str = "local"
    ray_address: str | None = None
    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    index: str | None = None
    exact_limit: int = index_build.DEFAULT_EXACT_LIMIT
    nprobe: int = 32
    ef_search: int = 128
    train_size: int = 200_000
    recall_queries: int = 1000
    forget: str | None = None
    split: str | None = None
    before: str | None = None
    progress: bool = True

    def check(self) -> None:
        bad = []
        if self.engine not in ("auto", *ENGINES):
            bad.append(f"--engine={self.engine} (use auto, {', '.join(ENGINES)})")
        if self.dtype not in DTYPES:
            bad.append(f"--dtype={self.dtype} (use {' or '.join(DTYPES)})")
        if self.runner not in RUNNERS:
            bad.append(f"--runner={self.runner} (use {' or '.join(RUNNERS)})")
        for name in ("shard_size", "batch_size", "workers", "exact_limit", "nprobe", "ef_search", "train_size",
                     "recall_queries"):
            if int(getattr(self, name)) < 1:
                bad.append(f"--{name.replace('_', '-')}={getattr(self, name)} (must be at least 1)")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            bad.append("--cpus-per-worker must be positive and --gpus-per-worker not negative")
        if (self.detector_model or self.descriptor_model) and self.align != "scrfd":
            bad.append("--detector-model / --descriptor-model are for --align=scrfd")
        if self.before and not (self.forget or self.split):
            bad.append("--before needs --forget or --split (the people to audit)")
        if bad:
            raise UserError("bad setting: " + "; ".join(bad))


def _digests(gallery: Gallery, shard_size: int) -> list[str]:
    return [gallery.digest(s, s + shard_size) for s in range(0, len(gallery), shard_size)]


def _settings(model: pathlib.Path, info: ModelInfo, engine: str, gallery: Gallery, opts: Options) -> dict[str, Any]:
    shards = _digests(gallery, opts.shard_size)
    return {
        "model": {"path": str(model.resolve()), "sha256": model_sha256(model), "kind": model_kind(model),
                  "name": info.name},
        "gallery": {"spec": gallery.spec, "layout": gallery.layout, "root": gallery.root, "images": len(gallery),
                    "has_person": gallery.has_person,
                    "digest": hashlib.sha256("".join(shards).encode()).hexdigest()[:16], "shards": shards},
        "embedding": {"engine": engine, "input_size": list(info.input_size), "channels": "RGB",
                      "pixel_mean": info.pixel_mean, "pixel_std": info.pixel_std, "normalised": "L2",
                      "dtype": opts.dtype, "align": opts.align or "none (aligned crops)",
                      "shard_size": opts.shard_size},
    }


def _detector(opts: Options) -> tuple[tuple[tuple[str, str], ...], dict[str, Any] | None]:
    """The ``--align`` detector's options (model files as absolute paths: Ray workers run
    elsewhere) and its settings; an unknown detector or a missing file fails before any work."""
    if not opts.align:
        return (), None
    if opts.align not in detect.DETECTORS:
        raise UserError(f"--align={opts.align}: no such face detector; use one of {', '.join(detect.DETECTORS)}")
    options: dict[str, str] = {}
    if opts.align == "scrfd":
        options = {"model": str(pathlib.Path(opts.detector_model or detect.SCRFD_MODEL).resolve()),
                   "descriptor_model": str(pathlib.Path(opts.descriptor_model or detect.SCRFD_DESCRIPTOR).resolve())}
    return tuple(sorted(options.items())), dict(detect.make_detector(opts.align, **options).settings)


def _first_change(layout: Layout, gallery: Gallery):
    """Names the first photo in which ``gallery`` differs from the listing stored in ``OUT``."""
    def describe() -> str:
        try:
            old = read_listing(layout.listing)
        except (OSError, ValueError):
            return "its stored listing is unreadable"
        for r, (path, person, size) in enumerate(zip(old["path"], old["person"], old["size"])):
            if r >= len(gallery):
                return f"photo {path!r} (row {r}) is gone"
            now = (gallery.paths[r], gallery.persons[r], int(gallery.sizes[r]))
            if now != (path, person, size):
                what = "changed size" if now[0] == path else f"is {now[0]!r}, was {path!r}"
                return f"row {r} {what}"
        return f"photo {gallery.paths[len(old['path'])]!r} (row {len(old['path'])}) is new"
    return describe


def _tasks(gallery: Gallery, todo: list[tuple[int, str]], shard_size: int) -> Iterator[ShardTask]:
    for k, digest in todo:
        yield ShardTask(k, digest, gallery.items(k * shard_size, (k + 1) * shard_size))


def _summary(records: list[dict[str, Any]], gallery: Gallery) -> dict[str, Any]:
    skipped = [{"image_path": p, "reason": r, "error": m} for p, r, m in gallery.listing_skips]
    for rec in sorted(records, key=lambda r: r["shard"]):
        skipped += rec["skipped"]
    by_reason: dict[str, int] = {}
    for s in skipped:
        by_reason[s["reason"]] = by_reason.get(s["reason"], 0) + 1
    return {"listed": len(gallery) + len(gallery.listing_skips), "embedded": sum(r["embedded"] for r in records),
            "skipped": len(skipped), "skipped_by_reason": dict(sorted(by_reason.items())), "skipped_photos": skipped}


def reindex(model: str | os.PathLike, gallery: str | os.PathLike, out: str | os.PathLike,
            opts: Options | None = None) -> dict[str, Any]:
    """Embeds every photo of ``gallery`` with ``model`` into ``out`` and builds its index; returns
    the manifest (also written to ``out/manifest.json``). Resumes an interrupted ``out``."""
    opts = opts or Options()
    opts.check()
    start = time.perf_counter()
    model, out = pathlib.Path(model).expanduser(), pathlib.Path(out).expanduser()
    engine = default_engine(model) if opts.engine == "auto" else opts.engine
    gal = list_gallery(gallery)
    align_options, align_settings = _detector(opts)
    info = describe_model(model, engine)
    settings = _settings(model, info, engine, gal, opts)
    if align_settings is not None:
        settings["embedding"]["detector"] = align_settings
    num_shards = len(settings["gallery"]["shards"])
    layout = Layout(out, num_shards)
    old = read_manifest(out)
    if old is not None:
        check_same(out, old, {"settings": settings}, _first_change(layout, gal))
    manifest: dict[str, Any] = {"format": FORMAT, "version": VERSION, "status": "running", "settings": settings}
    out.mkdir(parents=True, exist_ok=True)
    workdir.write_json(layout.manifest, {**(old or {}), **manifest})
    if old is None or not layout.listing.exists():
        write_listing(layout.listing, gal, opts.shard_size)

    digests = settings["gallery"]["shards"]
    records = {k: r for k in range(num_shards) if (r := finished(layout, k, digests[k])) is not None}
    todo = [(k, digests[k]) for k in range(num_shards) if k not in records]
    remaining = sum(min(opts.shard_size, len(gal) - k * opts.shard_size) for k, _ in todo)
    if opts.progress:
        print(f"re-indexing {len(gal)} photos of {gal.spec} with {model} ({engine}) into {out}: {num_shards} shards, "
              f"{len(records)} already done", file=sys.stderr, flush=True)
    bar = Progress("reindex", total=remaining, every_s=2.0) if opts.progress and todo else None
    spec = ShardSpec(str(out), num_shards, tuple(info.input_size), opts.dtype, opts.align, align_options,
                     gal.has_person, opts.batch_size, opts.decode_threads or min(4, os.cpu_count() or 1))
    engine_spec = EngineSpec(str(model.resolve()), engine, opts.batch_size,
                             opts.threads or (max(1, int(opts.cpus_per_worker)) if opts.runner == "ray" else None),
                             gpu=opts.gpus_per_worker > 0)
    run_start = time.perf_counter()
    if todo and opts.runner == "ray":
        new = run_ray(spec, todo, engine_spec, layout.listing, address=opts.ray_address, workers=opts.workers,
                      cpus_per_worker=opts.cpus_per_worker, gpus_per_worker=opts.gpus_per_worker,
                      progress=bar.update if bar else None)
    elif todo:
        new = run_local(spec, _tasks(gal, todo, opts.shard_size), engine_spec, bar.update if bar else None)
    else:
        new = iter(())
    embedded_now = 0
    for record in new:
        records[record["shard"]] = record
        embedded_now += record["embedded"]
    embed_s = time.perf_counter() - run_start
    if bar:
        bar.close()
    done = [records[k] for k in sorted(records)]
    counts = _summary(done, gal)
    manifest.update(counts={k: v for k, v in counts.items() if k != "skipped_photos"},
                    skipped=counts["skipped_photos"],
                    shards={"total": num_shards, "done": len(done), "done_this_run": len(todo),
                            "with_embeddings": [r["shard"] for r in done if r["embedded"]]},
                    runner={"name": opts.runner, **({"workers": opts.workers, "cpus_per_worker": opts.cpus_per_worker,
                                                     "gpus_per_worker": opts.gpus_per_worker,
                                                     "address": opts.ray_address} if opts.runner == "ray" else {})},
                    throughput={"images_this_run": remaining, "embedded_this_run": embedded_now,
                                "embed_seconds": round(embed_s, 3),
                                "images_per_s": round(remaining / embed_s, 2) if remaining and embed_s > 0 else None})
    if counts["embedded"] == 0:
        manifest["status"] = "failed: no photo could be used"
        workdir.write_json(layout.manifest, manifest)
        reasons = ", ".join(f"{n} {r}" for r, n in counts["skipped_by_reason"].items())
        raise UserError(f"none of the {counts['listed']} photos of {gal.spec} could be used ({reasons}); see "
                        f"{layout.manifest} for each one")
    dim = next(r["dim"] for r in done if r["embedded"])
    manifest["embedding"] = {"dim": dim, "dtype": opts.dtype, "normalised": "L2"}
    index_spec = {"index": opts.index, "exact_limit": opts.exact_limit, "nprobe": opts.nprobe,
                  "ef_search": opts.ef_search, "vectors": counts["embedded"]}
    old_index = (old or {}).get("index", {})
    if layout.index.exists() and old_index.get("built_with") == index_spec and not todo:
        manifest["index"] = old_index
    else:
        manifest["index"] = {**index_build.build(layout, done, dim, opts.index, opts.exact_limit, opts.nprobe,
                                                 opts.ef_search, opts.train_size, opts.recall_queries),
                             "built_with": index_spec}
    manifest["throughput"]["wall_seconds"] = round(time.perf_counter() - start, 3)
    manifest["status"] = "complete"
    workdir.write_json(layout.manifest, manifest)
    if opts.forget or opts.split:
        people = audit_lib.forget_ids(opts.forget, opts.split)
        manifest["audit"] = audit_lib.audit(out, people, pathlib.Path(opts.before) if opts.before else None)
        workdir.write_json(layout.manifest, manifest)
    return manifest


def summary(manifest: dict[str, Any], out: str, shown: int = 5) -> str:
    """The lines printed at the end of a re-index."""
    c, t, idx = manifest["counts"], manifest["throughput"], manifest["index"]
    rate = f"{t['images_per_s']:.1f} photos/s" if t["images_per_s"] else "nothing left to embed"
    lines = [f"embedded {c['embedded']} of {c['listed']} photos into {out} "
             f"({manifest['shards']['total']} shards, {manifest['shards']['done_this_run']} this run: {rate}, "
             f"{t['wall_seconds']:.1f} s in all)"]
    if c["skipped"]:
        reasons = ", ".join(f"{n} {r}" for r, n in c["skipped_by_reason"].items())
        names = ", ".join(s["image_path"] for s in manifest["skipped"][:shown])
        more = f" and {c['skipped'] - shown} more" if c["skipped"] > shown else ""
        lines.append(f"  skipped {c['skipped']} ({reasons}): {names}{more}")
    recall = f", recall@10 {idx['recall@10']:.3f} on {idx['recall_queries']} held vectors" if "recall@10" in idx else ""
    lines.append(f"  index.faiss: {idx['type']} over {idx['vectors']} vectors{recall}")
    if "audit" in manifest:
        lines.append(audit_lib.format_audit(manifest["audit"]))
    return "\n".join(lines)

