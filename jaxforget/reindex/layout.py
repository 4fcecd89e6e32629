"""The files of a re-indexed gallery (``OUT``), written so that no interruption tears or repeats one.

::

    OUT/
      manifest.json                    settings (written first), then counts, speed, index, audit
      img_emb/img_emb_<k>.npy          float32 (or float16) L2-normalised embeddings of shard k
      metadata/metadata_<k>.parquet    one row per embedding: image_path, person, row
      shards/shard_<k>.json            shard k's done record: counts, skipped photos, timing
      gallery.parquet                  the gallery's listing (a row group per shard, for workers)
      index.faiss                      FAISS index over every embedding, ids = rows

``<k>`` is zero-padded to the width of the last shard number, so that sorting the names sorts
the shards: the layout ``embedding-reader`` (``file_format="parquet_npy"``) and ``autofaiss``
read, which pair ``img_emb/*.npy`` with ``metadata/*.parquet`` by sorted name. A shard whose
photos are all skipped writes neither file.

A shard is written under temporary names (``*.npy.partial``, ``*.parquet.partial``: names those
readers do not match), renamed when complete, and its done record is written last; a shard
without a done record (or whose files do not match it) is done again. The embeddings go to disk
batch by batch (:class:`NpyWriter`), so memory does not grow with the shard.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from jaxforget import workdir
from jaxforget.data.gallery import Gallery, Item
from jaxforget.errors import UserError

MANIFEST = "manifest.json"
LISTING = "gallery.parquet"
INDEX = "index.faiss"
FORMAT = "jaxforget.reindex"
VERSION = 1
PARTIAL = ".partial"
_PYARROW = "pip install 'jaxforget[reindex]' (pyarrow)"


def pyarrow_modules() -> tuple[Any, Any]:
    """``(pyarrow, pyarrow.parquet)``; a :class:`UserError` naming the extra when missing."""
    try:
        import pyarrow  # optional dependency: the 'reindex' extra
        import pyarrow.parquet as pq
    except ImportError as e:
        raise UserError(f"re-indexing writes parquet metadata and needs pyarrow ({e}); install it with "
                        f"{_PYARROW}") from None
    return pyarrow, pq


class Layout:
    """Paths of ``OUT`` for a gallery cut into ``num_shards`` shards."""

    def __init__(self, out: str | os.PathLike, num_shards: int):
        self.out = pathlib.Path(out)
        self.num_shards = int(num_shards)
        self.width = len(str(max(self.num_shards - 1, 0)))

    def name(self, k: int) -> str:
        return str(int(k)).zfill(self.width)

    def emb(self, k: int) -> pathlib.Path:
        return self.out / "img_emb" / f"img_emb_{self.name(k)}.npy"

    def meta(self, k: int) -> pathlib.Path:
        return self.out / "metadata" / f"metadata_{self.name(k)}.parquet"

    def record(self, k: int) -> pathlib.Path:
        return self.out / "shards" / f"shard_{self.name(k)}.json"

    @property
    def manifest(self) -> pathlib.Path:
        return self.out / MANIFEST

    @property
    def index(self) -> pathlib.Path:
        return self.out / INDEX

    @property
    def listing(self) -> pathlib.Path:
        return self.out / LISTING


def partial(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + PARTIAL)


def publish(tmp: pathlib.Path, path: pathlib.Path) -> None:
    """Flushes ``tmp`` to disk and renames it to ``path``."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Embeddings, batch by batch
# --------------------------------------------------------------------------------------------
class NpyWriter:
    """A ``.npy`` file written row block by row block: the header is written for ``capacity``
    rows, then rewritten (the same length: numpy leaves room for the row count to grow) with the
    rows actually written when :meth:`close` is called."""

    def __init__(self, path: pathlib.Path, dim: int, dtype: str, capacity: int):
        self.path, self.dim, self.dtype = path, int(dim), np.dtype(dtype)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "wb")
        self._header_len = self._header(capacity)
        self.rows = 0

    def _header(self, rows: int) -> int:
        self._f.seek(0)
        np.lib.format.write_array_header_1_0(
            self._f, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                      "shape": (int(rows), self.dim)})
        return self._f.tell()

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, self.dtype)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"{self.path}: rows of shape {rows.shape}, expected (n, {self.dim})")
        self._f.write(rows.tobytes())
        self.rows += len(rows)

    def close(self) -> None:
        end = self._f.tell()
        if self._header(self.rows) != self._header_len:
            raise RuntimeError(f"{self.path}: the npy header changed length")  # numpy's padding guarantees it does not
        self._f.seek(end)
        self._f.truncate()
        self._f.close()

    def abort(self) -> None:
        self._f.close()
        self.path.unlink(missing_ok=True)


def npy_rows(path: pathlib.Path) -> tuple[int, int]:
    """``(rows, dim)`` from a ``.npy`` header (reads no data)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, _ = read(f)
    return int(shape[0]), int(shape[1])


# --------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------
def write_metadata(path: pathlib.Path, columns: Mapping[str, Sequence[Any]]) -> None:
    """``columns`` as a parquet file, through a temporary name."""
    pa, pq = pyarrow_modules()
    types = {"image_path": pa.string(), "person": pa.string(), "row": pa.int64(), "faces": pa.int32()}
    table = pa.table({k: pa.array(list(v), type=types.get(k)) for k, v in columns.items()})
    tmp = partial(path)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, tmp)
    publish(tmp, path)


def read_metadata(path: pathlib.Path, columns: Sequence[str] | None = None) -> dict[str, list]:
    _, pq = pyarrow_modules()
    return pq.read_table(path, columns=list(columns) if columns else None).to_pydict()


def metadata_rows(path: pathlib.Path) -> int:
    _, pq = pyarrow_modules()
    return int(pq.ParquetFile(path).metadata.num_rows)


def write_listing(path: pathlib.Path, gallery: Gallery, shard_size: int) -> None:
    """The gallery's photos as a parquet table, one row group per shard (:func:`read_listing_shard`);
    the root and the tar shards are in the schema's metadata."""
    pa, pq = pyarrow_modules()
    n = len(gallery)
    none = np.full(n, -1)
    table = pa.table({
        "row": pa.array(np.arange(n), pa.int64()),
        "path": pa.array(gallery.paths, pa.string()),
        "person": pa.array(gallery.persons, pa.string()),
        "size": pa.array(gallery.sizes, pa.int64()),
        "shard": pa.array(none if gallery.shard_index is None else gallery.shard_index, pa.int32()),
        "offset": pa.array(none if gallery.offsets is None else gallery.offsets, pa.int64()),
    }).replace_schema_metadata({"root": gallery.root, "shards": json.dumps(gallery.shards)})
    tmp = partial(path)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, tmp, row_group_size=int(shard_size))
    publish(tmp, path)


def read_listing(path: pathlib.Path, columns: Sequence[str] = ("path", "person", "size")) -> dict[str, list]:
    """Columns of a stored listing (an earlier run's photos, to name what changed)."""
    return read_metadata(path, columns)


def read_listing_shard(path: pathlib.Path, k: int) -> list[Item]:
    """The photos of shard ``k`` from a listing written by :func:`write_listing`."""
    _, pq = pyarrow_modules()
    f = pq.ParquetFile(path)
    meta = f.schema_arrow.metadata
    root, shards = meta[b"root"].decode(), json.loads(meta[b"shards"])
    c = f.read_row_group(int(k)).to_pydict()
    return [Item(r, p, who, shards[s] if s >= 0 else os.path.join(root, p), o, n)
            for r, p, who, n, s, o in zip(c["row"], c["path"], c["person"], c["size"], c["shard"], c["offset"])]


# --------------------------------------------------------------------------------------------
# Done records and the manifest
# --------------------------------------------------------------------------------------------
def finished(layout: Layout, k: int, digest: str) -> dict[str, Any] | None:
    """Shard ``k``'s done record when the shard is complete for the photos of ``digest`` (its
    files present with the recorded number of rows), else ``None``."""
    path = layout.record(k)
    try:
        record = workdir.read_json(path)
        if record.get("digest") != digest:
            return None
        n = int(record["embedded"])
        if n == 0:
            return record
        if npy_rows(layout.emb(k))[0] == n and metadata_rows(layout.meta(k)) == n:
            return record
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def read_manifest(out: pathlib.Path) -> dict[str, Any] | None:
    """``OUT/manifest.json``, or ``None`` for a new or empty ``OUT``; a :class:`UserError` for an
    ``OUT`` that holds something else."""
    if out.exists() and not out.is_dir():
        raise UserError(f"OUT {out} is a file; give a folder (new, or an earlier re-index to resume)")
    path = out / MANIFEST
    if not path.exists():
        if out.exists() and any(out.iterdir()):
            raise UserError(f"OUT {out} is not empty and holds no {MANIFEST}; give a new or empty folder")
        return None
    try:
        manifest = workdir.read_json(path)
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON ({e}); give a new OUT or delete this one") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{path} is not a manifest of jaxforget.reindex; give a new or empty OUT")
    return manifest


def check_same(out: pathlib.Path, old: Mapping[str, Any], new: Mapping[str, Any], first_change: Any) -> None:
    """Refuses to go on in ``out`` when this run would embed other photos or embed them otherwise
    than the run that started it, naming what changed. ``first_change()`` names the first photo
    that differs, for a changed gallery."""
    o, n = old["settings"], new["settings"]
    if o["model"]["sha256"] != n["model"]["sha256"]:
        raise UserError(
            f"{out} holds embeddings of another model: {o['model']['path']} (sha256 {o['model']['sha256'][:12]}...), "
            f"this run gives {n['model']['path']} (sha256 {n['model']['sha256'][:12]}...); give a new OUT for a new "
            "model, or the same model to resume")
    if o["gallery"]["digest"] != n["gallery"]["digest"]:
        raise UserError(
            f"{out} was made from another gallery: {o['gallery']['spec']} with {o['gallery']['images']} photos, "
            f"this run lists {n['gallery']['images']} in {n['gallery']['spec']} ({first_change()}); "
            "give a new OUT, or the same gallery to resume")
    changed = [k for k in sorted(o["embedding"].keys() | n["embedding"].keys())
               if o["embedding"].get(k) != n["embedding"].get(k)]
    if "engine" in changed:  # the normalisation and input follow from the engine
        changed = ["engine"]
    if changed:
        shown = "; ".join(f"{k}={o['embedding'].get(k)!r} (this run: {n['embedding'].get(k)!r})" for k in changed)
        raise UserError(f"{out} was made with {shown}; run with the same settings to resume, or give a new OUT")
