"""The one per-shard function both runners call: decode, embed, write one shard of ``OUT``.

:func:`embed_shard` takes a :class:`ShardTask` (the shard's photos) and an engine (loaded once
per process or Ray worker), decodes the photos on a thread pool a few batches ahead of the engine
(decoding overlaps with inference: PIL and onnxruntime / XLA release the GIL), writes the
embeddings batch by batch to ``img_emb_<k>.npy.partial``, then renames it, writes the metadata
and last the shard's done record (:mod:`.layout`). A photo that cannot be used is skipped and
listed with its reason, never fatal.

Photos are aligned crops at the model's input size (:func:`jaxforget.data.gallery.load_aligned`),
or with ``align`` set, photos in which the detector of that name
(:func:`jaxforget.data.detect.make_detector`) finds the face, aligned as ``jaxforget.align``
aligns them (:func:`jaxforget.data.align.crop_face`; the largest face where there are
several: the metadata's ``faces`` column says how many were found).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os
import socket
import threading
import time
from typing import Any, Callable, Sequence

import numpy as np

from jaxforget import workdir
from jaxforget.data import detect
from jaxforget.data.align import crop_face
from jaxforget.data.gallery import Item, SkippedImage, load_aligned, load_photo
from jaxforget.reindex.layout import Layout, NpyWriter, partial, publish, write_metadata


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    """What every worker needs to write shards of one ``OUT`` (plain values: it travels to Ray)."""

    out: str
    num_shards: int
    input_size: tuple[int, int]
    dtype: str = "float32"
    align: str | None = None
    align_options: tuple[tuple[str, str], ...] = ()  # the detector's keyword arguments (model files)
    has_person: bool = True
    batch_size: int = 64
    decode_threads: int = 2


@dataclasses.dataclass
class ShardTask:
    """Shard ``k``: its photos (gallery rows ``items[0].row`` on) and their digest."""

    k: int
    digest: str
    items: list[Item]

    def to_json(self) -> str:
        return json.dumps({"k": self.k, "digest": self.digest, "items": [dataclasses.astuple(i) for i in self.items]})

    @classmethod
    def from_json(cls, text: str) -> "ShardTask":
        obj = json.loads(text)
        return cls(obj["k"], obj["digest"], [Item(*i) for i in obj["items"]])


class _Decoder:
    """Turns photos into model inputs; one face detector per decoding thread when aligning."""

    def __init__(self, spec: ShardSpec):
        self.spec = spec
        self._local = threading.local()

    def _detector(self) -> Any:
        if not hasattr(self._local, "detector"):
            self._local.detector = detect.make_detector(self.spec.align, **dict(self.spec.align_options))
        return self._local.detector

    def one(self, item: Item) -> tuple[np.ndarray, int]:
        """``(face uint8 (H, W, 3), faces found)``; :class:`SkippedImage` when unusable."""
        if not self.spec.align:
            return load_aligned(item, self.spec.input_size), 1
        photo = load_photo(item)
        faces = self._detector().detect(photo)
        if not faces:
            raise SkippedImage("no_face", f"the {self.spec.align} detector finds no face")
        face = faces[detect.choose_face(None, None, [f.area for f in faces])[0]]
        return crop_face(photo, face.landmarks, self.spec.input_size), len(faces)

    def batch(self, items: Sequence[Item]) -> tuple[np.ndarray, list[Item], list[int], list[dict[str, str]]]:
        images, kept, faces, skipped = [], [], [], []
        for item in items:
            try:
                image, n = self.one(item)
            except SkippedImage as e:
                skipped.append({"image_path": item.path, "reason": e.reason, "error": e.message})
                continue
            images.append(image)
            kept.append(item)
            faces.append(n)
        h, w = self.spec.input_size
        return (np.stack(images) if images else np.zeros((0, h, w, 3), np.uint8)), kept, faces, skipped


def embed_shard(spec: ShardSpec, task: ShardTask, engine: Any, progress: Callable[[int], None] | None = None,
                pool: concurrent.futures.Executor | None = None) -> dict[str, Any]:
    """Embeds and writes shard ``task.k``; returns its done record (also written)."""
    start = time.perf_counter()
    layout = Layout(spec.out, spec.num_shards)
    emb_path, meta_path = layout.emb(task.k), layout.meta(task.k)
    for stale in (partial(emb_path), partial(meta_path)):
        stale.unlink(missing_ok=True)
    decoder = _Decoder(spec)
    own_pool = pool is None
    pool = pool or concurrent.futures.ThreadPoolExecutor(max(1, spec.decode_threads), thread_name_prefix="decode")
    batches = [task.items[i:i + spec.batch_size] for i in range(0, len(task.items), spec.batch_size)]
    ahead = collections.deque(pool.submit(decoder.batch, b) for b in batches[:max(2, spec.decode_threads + 1)])
    queued = len(ahead)
    writer: NpyWriter | None = None
    columns: dict[str, list] = {"image_path": [], "person": [], "row": [], "faces": []}
    skipped: list[dict[str, str]] = []
    engine_s = 0.0
    try:
        while ahead:
            images, kept, faces, skips = ahead.popleft().result()
            if queued < len(batches):
                ahead.append(pool.submit(decoder.batch, batches[queued]))
                queued += 1
            skipped += skips
            if len(kept):
                t = time.perf_counter()
                emb = engine.embed(images)
                engine_s += time.perf_counter() - t
                if writer is None:
                    writer = NpyWriter(partial(emb_path), emb.shape[1], spec.dtype, len(task.items))
                writer.append(emb)
                columns["image_path"] += [i.path for i in kept]
                columns["person"] += [i.person for i in kept]
                columns["row"] += [i.row for i in kept]
                columns["faces"] += faces
            if progress:
                progress(len(kept) + len(skips))
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        if own_pool:
            pool.shutdown(wait=False, cancel_futures=True)
    if not spec.has_person:
        del columns["person"]
    if not spec.align:
        del columns["faces"]
    if writer is not None:
        writer.close()
        publish(writer.path, emb_path)
        write_metadata(meta_path, columns)
    else:  # nothing usable: no files (an earlier, interrupted attempt's are removed)
        emb_path.unlink(missing_ok=True)
        meta_path.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    record = {
        "shard": task.k,
        "digest": task.digest,
        "first_row": task.items[0].row if task.items else None,
        "images": len(task.items),
        "embedded": len(columns["row"]),
        "dim": writer.dim if writer is not None else None,
        "skipped": skipped,
        "seconds": round(seconds, 3),
        "engine_seconds": round(engine_s, 3),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }
    workdir.write_json(layout.record(task.k), record)
    return record
