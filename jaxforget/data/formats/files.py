"""The base of the image-file formats: records are image files under a root folder."""

from __future__ import annotations

import logging
import os
from typing import Sequence

from PIL import Image, UnidentifiedImageError

from jaxforget.data.source import CorruptImageError, FaceSource, MissingFileError

log = logging.getLogger(__name__)

#: File name endings read as images by the folder formats (compared lower-case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".gif")


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
                    im.load()
                good.append(i)
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
                if self.strict:
                    raise CorruptImageError(f"{self.name}: cannot decode {where}: {e}") from e
                self.failures[where] = f"{type(e).__name__}: {e}"
        if self.failures:
            log.warning("%s", self.failure_report())
        return self if len(good) == len(self) else self.subset(good)
