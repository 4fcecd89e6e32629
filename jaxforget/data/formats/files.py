"""The base of the image-file formats: records are image files under a root folder."""

from __future__ import annotations

import logging
import os
from typing import Iterator, Sequence

from PIL import Image

from jaxforget.data.source import CorruptImageError, DataError, FaceSource, MissingFileError, check_declared_size

log = logging.getLogger(__name__)

#: File name endings read as images by the folder formats (compared lower-case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".gif")


def read_text(path: str) -> str:
    """An annotation file's text (UTF-8, line ends kept for ``csv``); a file that is not UTF-8
    text raises :class:`DataError` naming it."""
    try:
        with open(path, "r", encoding="utf-8", newline="") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); is it the right file?") from None


def table_rows(path: str) -> Iterator[tuple[int, list[str], str]]:
    """The rows of a text table with one header line (``identities.txt``, ``landmarks_5pt.txt``):
    ``(line number, whitespace-separated fields, line)`` for every non-blank line after the
    header."""
    for lineno, line in enumerate(read_text(path).splitlines()[1:], 2):
        parts = line.split()
        if parts:
            yield lineno, parts, line.strip()


def landmark_file(root: str, landmarks: str | None, candidates: Sequence[str], what: str) -> str | None:
    """The landmark file a format reads: ``'auto'`` -> the first of ``candidates`` present in
    ``root`` (``None`` when none is); a path -> that file (:class:`MissingFileError` when absent,
    naming ``what``); ``None`` -> ``None`` (no landmarks)."""
    if landmarks == "auto":
        found = [os.path.join(root, c) for c in candidates if os.path.isfile(os.path.join(root, c))]
        return found[0] if found else None
    if landmarks is None:
        return None
    path = os.fspath(landmarks)
    if not os.path.isfile(path):
        raise MissingFileError(f"{what} landmark file not found: {path}")
    return path


class FileSource(FaceSource):
    """A source whose records are image files under ``root``."""

    def __init__(self, root: str, rel_paths: Sequence[str], identities, output_size, *, image_ids=None, **kw):
        self.root = os.fspath(root)
        self.rel_paths = list(rel_paths)
        super().__init__(image_ids if image_ids is not None else self.rel_paths, identities, output_size, **kw)

    def describe(self, i: int) -> str:
        return os.path.join(self.root, self.rel_paths[i])

    def _open(self, i: int) -> Image.Image:
        path = os.path.join(self.root, self.rel_paths[i])
        try:
            return Image.open(path)
        except FileNotFoundError:
            raise MissingFileError(f"{path} disappeared from {self.root} after the dataset was indexed") from None

    def verify(self) -> "FaceSource":
        """Decode every image once; return the subset that decodes (failures are counted and
        reported by :meth:`failure_report`). Slow on big datasets; pipelines also skip lazily."""
        good = []
        for i in range(len(self)):
            where = self.describe(i)
            try:
                with Image.open(where) as im:
                    check_declared_size(im)
                    im.load()
                good.append(i)
            except Exception as e:  # noqa: BLE001 - PIL's decoders raise many types on a corrupt file
                if self.strict:
                    raise CorruptImageError(f"{self.name}: cannot decode {where}: {e}") from e
                self.failures[where] = f"{type(e).__name__}: {e}"
        if self.failures:
            log.warning("%s", self.failure_report())
        return self if len(good) == len(self) else self.subset(good)
