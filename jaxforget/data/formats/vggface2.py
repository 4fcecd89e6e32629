"""VGGFace2: ``<root>/<split>/<nXXXXXX>/<file>.jpg`` with the loose landmark / box CSVs."""

from __future__ import annotations

import csv
import io
import os
from typing import Sequence

import numpy as np

from jaxforget.data.formats.files import IMAGE_EXTENSIONS, FileSource, read_text
from jaxforget.data.source import DataError, EmptyDatasetError, MissingFileError, as_size, identity_array


def read_vggface2_csv(path: str, columns: int) -> dict[str, np.ndarray]:
    """``NAME_ID,v1,...`` CSV (VGGFace2 ``loose_landmark_*.csv`` / ``loose_bb_*.csv``)."""
    out = {}
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    try:
        header = next(reader, None)
        if header is None or len(header) != columns + 1 or header[0].strip() != "NAME_ID":
            raise DataError(f"{path}: expected a header 'NAME_ID' + {columns} columns; got {header}")
        for row in reader:
            lineno = reader.line_num
            if not row:
                continue
            if len(row) != columns + 1:
                raise DataError(f"{path}: line {lineno} should have {columns + 1} fields; got {row}")
            try:
                out[row[0].strip()] = np.asarray([float(v) for v in row[1:]], np.float64)
            except ValueError:
                raise DataError(f"{path}: line {lineno}: non-numeric value in {row}") from None
    except csv.Error as e:
        raise DataError(f"{path}: line {reader.line_num}: not a CSV row ({e})") from None
    return out


class VGGFace2Source(FileSource):
    """VGGFace2 ``<root>/<split>/<nXXXXXX>/<file>.jpg`` with optional loose landmarks / boxes.

    With ``bb_landmark/loose_landmark_<split>.csv`` present, faces are aligned by their five
    landmarks; else with ``loose_bb_<split>.csv`` the box (enlarged by ``box_margin``) is cropped;
    else the image is resized whole. Image ids are ``nXXXXXX/XXXX_XX`` (the CSVs' NAME_ID).
    """

    def __init__(
        self,
        root: str,
        split: str = "test",
        output_size: Sequence[int] = (112, 112),
        *,
        landmarks: str | None = "auto",
        boxes: str | None = "auto",
        box_margin: float = 0.3,
        strict: bool = False,
    ):
        root = os.fspath(root)
        split_dir = os.path.join(root, split)
        if not os.path.isdir(split_dir):
            raise MissingFileError(f"VGGFace2 split folder not found: {split_dir} (expected {root}/train or {root}/test)")
        rel, ids, names = [], [], []
        for d in sorted(os.listdir(split_dir)):
            full = os.path.join(split_dir, d)
            if not os.path.isdir(full):
                continue
            files = sorted(f for f in os.listdir(full) if f.lower().endswith(IMAGE_EXTENSIONS))
            for fn in files:
                rel.append(f"{d}/{fn}")
                ids.append(d)
                names.append(f"{d}/{os.path.splitext(fn)[0]}")
        if not rel:
            raise EmptyDatasetError(f"no images under {split_dir}/<identity>/")
        lm_arr = box_arr = None
        lm_path = self._auto(root, landmarks, f"loose_landmark_{split}.csv")
        if lm_path:
            table = read_vggface2_csv(lm_path, 10)
            lm_arr = np.full((len(rel), 5, 2), np.nan)
            for k, n in enumerate(names):
                if n in table:
                    lm_arr[k] = table[n].reshape(5, 2)
        bb_path = self._auto(root, boxes, f"loose_bb_{split}.csv")
        if bb_path:
            table = read_vggface2_csv(bb_path, 4)
            box_arr = np.full((len(rel), 4), np.nan)
            for k, n in enumerate(names):
                if n in table:
                    x, y, w, h = table[n]
                    cx, cy, s = x + w / 2, y + h / 2, max(w, h) * (1 + box_margin)
                    oh, ow = as_size(output_size)
                    box_arr[k] = (cx - s * ow / oh / 2, cy - s / 2, cx + s * ow / oh / 2, cy + s / 2)
        self.landmark_path, self.box_path = lm_path, bb_path
        super().__init__(
            split_dir, rel, identity_array(ids), output_size, image_ids=names, landmarks=lm_arr,
            boxes=box_arr, strict=strict, name=f"VGGFace2({split_dir})",
        )

    @staticmethod
    def _auto(root: str, arg: str | None, fname: str) -> str | None:
        if arg is None:
            return None
        if arg != "auto":
            if not os.path.isfile(arg):
                raise MissingFileError(f"VGGFace2 annotation file not found: {arg}")
            return os.fspath(arg)
        for cand in (os.path.join(root, "bb_landmark", fname), os.path.join(root, fname)):
            if os.path.isfile(cand):
                return cand
        return None
