"""Aligned face trees: ``aligned_112/<identity>/<image>.jpg`` with ``identities.txt`` (CelebA-wild).

The layout of ``../shared/data/celeba_wild`` (and any tree built the same way): faces already
aligned to the 112x112 five-point template, one folder per identity, and ``identities.txt`` with a
header line and then ``<image> <identity>`` lines. The faces are not re-aligned: each is cut to the
model's input by :func:`jaxforget.data.align.aligned_crop_box` (112x112 as it is, 112x96 the
central 96 columns -- the 112x96 template is the same template 8 px to the left).
"""

from __future__ import annotations

import os
from typing import Sequence

from jaxforget.data.formats.files import IMAGE_EXTENSIONS, FileSource, table_rows
from jaxforget.data.source import DataError, EmptyDatasetError, MissingFileError, identity_array

ALIGNED_DIR = "aligned_112"
IDENTITY_FILE = "identities.txt"


def _identity(text: str) -> int | str:
    """CelebA identity numbers stay ints (so they compare with ``celeba``'s), other names str."""
    return int(text) if text.isdigit() else text


def read_identity_list(path: str) -> list[tuple[str, str]]:
    """``identities.txt``: a header line, then ``<image> <identity>`` lines -> [(image, identity)]."""
    out = []
    for lineno, parts, line in table_rows(path):
        if len(parts) != 2:
            raise DataError(f"{path}: line {lineno} should be '<image> <identity>', got {line!r}")
        out.append((parts[0], parts[1]))
    return out


class CelebAWildSource(FileSource):
    """An aligned tree ``root/aligned_112/<identity>/<image>`` (``root`` may be that folder itself).

    Records are the lines of ``root/identities.txt`` when it exists (every named image must be in
    its identity's folder), else every image of every identity folder; in both cases sorted by
    identity folder, then file name, so record indices are stable. Identities are ints when they
    are numbers (CelebA's own identity numbers), else the folder names. Image ids are
    ``<identity>/<image>``.
    """

    fallback_geometry = "aligned112"

    def __init__(self, root: str, output_size: Sequence[int] = (112, 96), *, strict: bool = False):
        root = os.fspath(root)
        img_root = os.path.join(root, ALIGNED_DIR)
        if not os.path.isdir(img_root):
            if not os.path.isdir(root):
                raise MissingFileError(f"aligned face folder not found: {img_root}")
            img_root = root
        id_path = os.path.join(root, IDENTITY_FILE)
        present = {
            d: set(os.listdir(os.path.join(img_root, d)))
            for d in os.listdir(img_root)
            if os.path.isdir(os.path.join(img_root, d))
        }
        if os.path.isfile(id_path):
            rel = []
            for image, ident in read_identity_list(id_path):
                if image not in present.get(ident, ()):
                    raise MissingFileError(
                        f"{id_path} names {image} of identity {ident}, but "
                        f"{os.path.join(img_root, ident, image)} does not exist; restore it or "
                        f"remove its line"
                    )
                rel.append(f"{ident}/{image}")
            rel.sort()
        else:
            rel = [
                f"{d}/{fn}"
                for d in sorted(present)
                for fn in sorted(present[d])
                if fn.lower().endswith(IMAGE_EXTENSIONS)
            ]
        if not rel:
            raise EmptyDatasetError(
                f"no aligned faces under {img_root}/<identity>/ (listed in {id_path} or found there)"
            )
        ids = identity_array([_identity(r.split("/", 1)[0]) for r in rel])
        super().__init__(img_root, rel, ids, output_size, strict=strict, name=f"CelebAWild({root})")
