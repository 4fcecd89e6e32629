"""A deployed service's gallery of photos: listed in a stable order, opened one by one, never fatal.

Three layouts (:func:`list_gallery` tells them apart):

* ``folder``: a folder tree ``ROOT/<person>/<photo>`` (deeper trees: the first folder is the
  person). Every file in a person's folder is a photo to embed, whatever its name (a file that
  is not an image is skipped and listed); files directly in ``ROOT`` are photos without a person
  when their names end like images, and are otherwise ignored (``report.json``,
  ``landmarks_5pt.txt`` of ``python -m jaxforget.align``). Names starting with ``.`` are ignored.
* ``list``: a text file with one image path a line (relative paths are taken from the list's
  folder), optionally followed by a tab and the person; blank lines and ``#`` comments are
  ignored. A path listed twice is embedded once (the repeat is counted as ``duplicate``).
* ``webdataset``: uncompressed tar shards, given as a glob (``shards/*.tar``) or a brace pattern
  (``shards/{00000..00099}.tar``), the layout img2dataset writes: the members of one sample share
  a key (``<key>.jpg``, ``<key>.json``, ...); a ``<key>.cls`` member, when present, is the person.

Items are sorted by their ``path`` (folder: relative to the root with ``/``; list: as written;
webdataset: ``<shard path relative to the pattern's folder>/<member>``) and numbered ``row =
0..N-1`` in that order: the same gallery lists the same rows in every run, on every machine.

:func:`open_image` opens an item (not yet decoded); :func:`load_aligned` gives the uint8 RGB face
at a model's input size (:func:`jaxforget.data.source.fit_aligned`). A file that cannot be used
raises :class:`SkippedImage` with a ``reason`` of :data:`SKIP_REASONS` and the decoder's message.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import io
import os
import pathlib
import re
import tarfile
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from jaxforget.data.formats.files import IMAGE_EXTENSIONS
from jaxforget.data.source import DataError, EmptyDatasetError, MissingFileError, check_declared_size, fit_aligned

LAYOUTS = ("folder", "list", "webdataset")
#: Why a listed photo has no embedding.
SKIP_REASONS = ("missing", "unreadable", "empty", "not_image", "truncated", "corrupt", "too_large", "no_face",
                "duplicate")


class GalleryError(DataError):
    """The gallery argument names nothing usable (one line naming it and what to give)."""


class SkippedImage(Exception):
    """One photo that is skipped: ``reason`` (one of :data:`SKIP_REASONS`) and a message."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclasses.dataclass(frozen=True)
class Item:
    """One listed photo. ``source`` is the file to read (the tar shard for ``webdataset``, whose
    member starts at byte ``offset``); ``size`` is its size in bytes (``-1``: missing)."""

    row: int
    path: str
    person: str | None
    source: str
    offset: int = -1
    size: int = -1


@dataclasses.dataclass
class Gallery:
    """Every photo of a gallery, stored column-wise and without repeats (a person's name is one
    string, a file's path is not stored twice): a million photos cost tens of MB.

    A photo's file is ``root/path`` (folder, list: an absolute listed path stays itself), or for
    ``webdataset`` the tar ``shards[shard_index[row]]`` from byte ``offsets[row]``.
    ``listing_skips``: ``(path, reason, message)`` of entries dropped while listing (a list's
    repeated paths).
    """

    spec: str
    layout: str
    root: str
    paths: list[str]
    persons: list[str | None]
    sizes: np.ndarray  # (N,) int64, -1 when missing
    shards: list[str] = dataclasses.field(default_factory=list)
    shard_index: np.ndarray | None = None  # (N,) int32 into ``shards`` (webdataset only)
    offsets: np.ndarray | None = None  # (N,) int64 (webdataset only)
    listing_skips: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def has_person(self) -> bool:
        return any(p is not None for p in self.persons)

    def item(self, row: int) -> Item:
        if self.shard_index is not None and self.offsets is not None:
            return Item(row, self.paths[row], self.persons[row], self.shards[int(self.shard_index[row])],
                        int(self.offsets[row]), int(self.sizes[row]))
        return Item(row, self.paths[row], self.persons[row], os.path.join(self.root, self.paths[row]), -1,
                    int(self.sizes[row]))

    def items(self, start: int = 0, stop: int | None = None) -> list[Item]:
        return [self.item(r) for r in range(start, len(self) if stop is None else min(stop, len(self)))]

    def digest(self, start: int = 0, stop: int | None = None) -> str:
        """sha256 (first 16 hex digits) of the rows' paths, persons and sizes: what decides the
        embeddings of those rows. Equal galleries at other places on disk have equal digests."""
        h = hashlib.sha256()
        for r in range(start, len(self) if stop is None else min(stop, len(self))):
            h.update(f"{self.paths[r]}\t{self.persons[r] or ''}\t{int(self.sizes[r])}\n".encode("utf-8", "replace"))
        return h.hexdigest()[:16]


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


class _Columns:
    """Collects a listing column by column, then sorts it by path (:meth:`gallery`)."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.persons: list[str | None] = []
        self.sizes: list[int] = []
        self.shard_index: list[int] = []
        self.offsets: list[int] = []
        self._names: dict[str, str] = {}

    def add(self, path: str, person: str | None, size: int, shard: int = -1, offset: int = -1) -> None:
        self.paths.append(path)
        self.persons.append(None if person is None else self._names.setdefault(person, person))
        self.sizes.append(size)
        if shard >= 0:
            self.shard_index.append(shard)
            self.offsets.append(offset)

    def gallery(self, spec: str, layout: str, root: str, shards: list[str] | None = None,
                skips: list | None = None) -> Gallery:
        if not self.paths:
            raise EmptyDatasetError(f"gallery {spec} has no images ({_EXPECTED[layout]})")
        order = np.asarray(sorted(range(len(self.paths)), key=self.paths.__getitem__), np.int64)
        tars = bool(shards)
        return Gallery(
            spec=spec, layout=layout, root=root, paths=[self.paths[i] for i in order],
            persons=[self.persons[i] for i in order], sizes=np.asarray(self.sizes, np.int64)[order],
            shards=list(shards or []),
            shard_index=np.asarray(self.shard_index, np.int32)[order] if tars else None,
            offsets=np.asarray(self.offsets, np.int64)[order] if tars else None, listing_skips=skips or [])


_EXPECTED = {
    "folder": "expected ROOT/<person>/<photo>",
    "list": "expected one image path a line",
    "webdataset": "expected tar shards holding <key>.jpg members, as img2dataset writes",
}


def _list_folder(spec: str, root: pathlib.Path) -> Gallery:
    cols = _Columns()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = pathlib.PurePath(os.path.relpath(dirpath, root)).as_posix()
        top = rel_dir == "."
        for name in filenames:
            if name.startswith(".") or (top and not _is_image_name(name)):
                continue
            try:
                size = os.stat(os.path.join(dirpath, name)).st_size
            except OSError:
                size = -1
            cols.add(name if top else f"{rel_dir}/{name}", None if top else rel_dir.split("/", 1)[0], size)
    return cols.gallery(spec, "folder", str(root))


def _list_file(spec: str, path: pathlib.Path) -> Gallery:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise GalleryError(f"gallery list {path} is not UTF-8 text; give a folder, a text file of image paths "
                           "or tar shards") from None
    base = path.parent
    cols, seen, skips = _Columns(), set(), []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, person = line.rstrip("\r").partition("\t")
        name, person = name.strip(), person.strip() or None
        if name in seen:
            skips.append((name, "duplicate", "listed more than once; embedded once"))
            continue
        seen.add(name)
        try:
            size = os.stat(os.path.join(base, name)).st_size
        except OSError:
            size = -1
        cols.add(name, person, size)
    return cols.gallery(spec, "list", str(base), skips=skips)


def expand_braces(pattern: str) -> list[str]:
    """``a{00..02}b{x,y}`` -> ``a00bx, a00by, a01bx, ...``: numeric ranges keep their zero padding,
    comma lists are taken as written (webdataset's and img2dataset's shard patterns)."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        a, b = rng.groups()
        width = len(a) if a.startswith("0") else 0
        choices = [str(v).zfill(width) for v in range(int(a), int(b) + 1)]
    else:
        choices = body.split(",")
    return [p for c in choices for p in expand_braces(head + c + tail)]


def _pattern_root(pattern: str) -> str:
    """The folder of a shard pattern's first component holding a wildcard or a brace."""
    parts = pathlib.PurePath(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if any(c in part for c in "*?[{"):
            break
        fixed.append(part)
    return str(pathlib.PurePath(*fixed)) if fixed else "."


def _tar_members(tar_path: str) -> Iterator[tarfile.TarInfo]:
    try:
        with tarfile.open(tar_path, "r:") as tar:  # uncompressed only: members are read by offset
            yield from (m for m in tar if m.isfile())
    except tarfile.ReadError as e:
        raise GalleryError(f"{tar_path}: not an uncompressed tar shard ({e}); webdataset galleries are plain .tar "
                           "files (img2dataset's default)") from None


def _list_tars(spec: str) -> Gallery:
    shards: set[str] = set()
    for pattern in expand_braces(spec):
        if any(c in pattern for c in "*?["):
            shards.update(glob.glob(pattern))
        elif os.path.isfile(pattern):
            shards.add(pattern)
        else:
            raise GalleryError(f"gallery shard {pattern} does not exist; check the pattern {spec}")
    if not shards:
        raise GalleryError(f"gallery pattern {spec} matches no tar shard")
    shards = sorted(shards)
    root = _pattern_root(spec)
    cols = _Columns()
    for number, shard in enumerate(shards):
        shard_name = os.path.relpath(shard, root).replace(os.sep, "/")
        by_key: dict[str, dict[str, tarfile.TarInfo]] = {}
        for m in _tar_members(shard):
            base = m.name.rsplit("/", 1)[-1]
            if base.startswith("."):
                continue
            folder = m.name[: len(m.name) - len(base)]
            key, _, ext = base.partition(".")
            by_key.setdefault(folder + key, {})[ext.lower()] = m
        for key, members in by_key.items():
            image = next((members[e] for e in sorted(members) if _is_image_name("." + e)), None)
            if image is None:
                continue
            person = None
            if "cls" in members:
                cls = members["cls"]
                person = _read_member(shard, cls.offset_data, cls.size).decode("utf-8", "replace").strip() or None
            cols.add(f"{shard_name}/{image.name}", person, image.size, number, image.offset_data)
    return cols.gallery(spec, "webdataset", root, shards=shards)




def list_gallery(spec: str | os.PathLike) -> Gallery:
    """Lists the gallery ``spec``: a folder, a text file of image paths, or tar shards (a ``.tar``
    path, glob or brace pattern). Raises :class:`GalleryError` / :class:`EmptyDatasetError` naming
    the argument when it gives no image."""
    spec = os.fspath(spec)
    path = pathlib.Path(spec).expanduser()
    if path.is_dir():
        return _list_folder(spec, path.resolve())
    if spec.endswith(".tar") or any(c in spec for c in "*?[{"):
        return _list_tars(str(path) if path.exists() else os.path.expanduser(spec))
    if path.is_file():
        return _list_file(spec, path.resolve())
    raise MissingFileError(f"gallery {spec} does not exist; give a folder ROOT/<person>/<photo>, a text file of "
                           "image paths, or webdataset tar shards (shards/{00000..00009}.tar)")


# --------------------------------------------------------------------------------------------
# Opening and decoding one photo
# --------------------------------------------------------------------------------------------
def open_image(item: Item) -> Image.Image:
    """The item's image, opened and identified but not decoded; :class:`SkippedImage` when it is
    missing, unreadable, empty or not an image."""
    if item.size == 0:
        raise SkippedImage("empty", "the file is empty (0 bytes)")
    try:
        if item.offset >= 0:
            data = io.BytesIO(_read_member(item.source, item.offset, item.size))
            return Image.open(data)
        return Image.open(item.source)
    except FileNotFoundError:
        raise SkippedImage("missing", f"{item.source} does not exist (listed, then gone)") from None
    except UnidentifiedImageError as e:
        raise SkippedImage("not_image", f"not an image PIL can read ({e})") from None
    except OSError as e:
        raise SkippedImage("unreadable", f"{type(e).__name__}: {e.strerror or e}") from None


def _read_member(tar_path: str, offset: int, size: int) -> bytes:
    """``size`` bytes of a tar shard from ``offset`` (:class:`SkippedImage` when it ends first)."""
    with open(tar_path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise SkippedImage("truncated", f"the tar shard ends {size - len(data)} bytes into this member")
    return data


def decode_failure(e: BaseException) -> SkippedImage:
    """A decoder's exception as a :class:`SkippedImage` with its reason."""
    if isinstance(e, SkippedImage):
        return e
    text = f"{type(e).__name__}: {e}"
    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)) or "over the limit" in str(e):
        return SkippedImage("too_large", text)
    if "truncat" in str(e).lower() or isinstance(e, EOFError):
        return SkippedImage("truncated", text)
    return SkippedImage("corrupt", text)


def load_aligned(item: Item, output_size: Sequence[int]) -> np.ndarray:
    """The item as an aligned crop at ``output_size`` (uint8 RGB); :class:`SkippedImage` when it
    cannot be used."""
    img = open_image(item)
    try:
        return fit_aligned(img, output_size)
    except Exception as e:  # noqa: BLE001 - PIL's decoders raise many types on a bad file
        raise decode_failure(e) from None
    finally:
        img.close()


def load_photo(item: Item) -> Image.Image:
    """The item decoded whole as an RGB PIL image (for face detection)."""
    img = open_image(item)
    try:
        check_declared_size(img)
        img.load()
        return img.convert("RGB")
    except Exception as e:  # noqa: BLE001
        raise decode_failure(e) from None
