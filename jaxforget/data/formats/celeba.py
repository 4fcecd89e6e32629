"""CelebA: ``img_align_celeba/`` images, ``identity_CelebA.txt`` and five-point landmarks.

Layout in ``docs/FORMATS.md``. Without landmarks the faces get the fixed crop of
:func:`jaxforget.data.align.fixed_crop_box` (``FaceSource.fallback_geometry = 'celeba_crop'``).
"""

from __future__ import annotations

import csv
import logging
import os
from typing import Sequence

import numpy as np

from jaxforget.data.formats.files import FileSource, landmark_file, read_text
from jaxforget.data.source import DataError, EmptyDatasetError, LandmarkError, MissingFileError

log = logging.getLogger(__name__)


def _list_dir(directory: str) -> set[str]:
    try:
        with os.scandir(directory) as it:
            return {e.name for e in it}
    except FileNotFoundError:
        raise MissingFileError(f"image folder not found: {directory}") from None


def _check_missing(
    names: list[str], present: set[str], root: str, annotation: str, missing: str
) -> tuple[np.ndarray, list[str]]:
    """Indices of ``names`` present on disk; raise or count the missing ones."""
    if missing not in ("error", "skip"):
        raise ValueError(f"missing must be 'error' or 'skip'; got {missing!r}")
    keep = np.fromiter((n in present for n in names), bool, len(names))
    lost = [n for n, k in zip(names, keep) if not k]
    if lost and missing == "error":
        raise MissingFileError(
            f"{annotation} names {lost[0]!r} but it is not in {root} ({len(lost)} of {len(names)} "
            f"named files are missing; first: {lost[:5]}). Restore the files, point root at the "
            f"right folder, or pass missing='skip' to drop and count them."
        )
    if lost:
        log.warning("%d files named in %s are missing from %s; skipped (first: %s)", len(lost), annotation, root, lost[:5])
    return np.nonzero(keep)[0], lost


def read_celeba_identities(path: str) -> tuple[list[str], list[int]]:
    """``identity_CelebA.txt``: ``000001.jpg 2880`` lines -> (file names, identities)."""
    names, ids = [], []
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise DataError(f"{path}: line {lineno} should be '<file> <identity>', got {line.strip()!r}")
        try:
            ids.append(int(parts[1]))
        except ValueError:
            raise DataError(f"{path}: line {lineno}: identity {parts[1]!r} is not an integer") from None
        if not -(2**63) <= ids[-1] < 2**63:
            raise DataError(f"{path}: line {lineno}: identity {parts[1]} is out of the 64-bit range")
        names.append(parts[0])
    return names, ids


def read_celeba_landmarks(path: str) -> dict[str, np.ndarray]:
    """Official ``list_landmarks_align_celeba.txt`` or the Kaggle ``.csv`` -> {file: (5, 2)}."""
    out: dict[str, np.ndarray] = {}
    lines = [ln for ln in read_text(path).splitlines() if ln.strip()]
    if not lines:
        raise LandmarkError(f"{path}: the landmark file is empty")
    if path.lower().endswith(".csv") or "," in lines[0]:
        try:
            rows = list(csv.reader(lines))
        except csv.Error as e:
            raise LandmarkError(f"{path}: not a CSV file ({e})") from None
        header, body = rows[0], rows[1:]
        if len(header) != 11 or header[0].strip() != "image_id":
            raise LandmarkError(
                f"{path}: expected the Kaggle header 'image_id,lefteye_x,...,rightmouth_y' (11 columns); "
                f"got {header}"
            )
        start = 2
    else:
        if len(lines) < 2:
            raise LandmarkError(f"{path}: expected the image count on line 1 and the header on line 2; got {lines}")
        body = [ln.split() for ln in lines[2:]]
        header = lines[1].split()
        if len(header) != 10:
            raise LandmarkError(
                f"{path}: line 2 should be the 10-column header 'lefteye_x ... rightmouth_y'; got {lines[1]!r}"
            )
        start = 3
    for k, row in enumerate(body):
        if len(row) != 11:
            raise LandmarkError(f"{path}: line {k + start} should have a file name and 10 numbers; got {row}")
        try:
            vals = np.asarray([float(v) for v in row[1:]], np.float64)
        except ValueError:
            raise LandmarkError(f"{path}: line {k + start}: non-numeric landmark in {row}") from None
        out[row[0].strip()] = vals.reshape(5, 2)
    return out


class CelebASource(FileSource):
    """CelebA aligned images (``img_align_celeba/``) with ``identity_CelebA.txt``.

    Args:
      root: folder holding ``img_align_celeba/`` and ``identity_CelebA.txt``.
      output_size: ``(H, W)`` of the produced images.
      landmarks: ``'auto'`` (use ``list_landmarks_align_celeba.txt`` or ``.csv`` in ``root`` when
        present), a path, or ``None`` for the fixed crop (:func:`align.fixed_crop_box`).
      missing: ``'error'`` (default) or ``'skip'`` for images named in the identity file but absent.
      strict: raise on an undecodable image instead of skipping it.
      limit: keep only the first ``limit`` annotated images (quick experiments).

    Raw identities are ints (1..10177); image ids are the file names (``000001.jpg``).
    """

    fallback_geometry = "celeba_crop"

    def __init__(
        self,
        root: str,
        output_size: Sequence[int] = (112, 112),
        *,
        landmarks: str | None = "auto",
        images_dir: str = "img_align_celeba",
        identity_file: str = "identity_CelebA.txt",
        missing: str = "error",
        strict: bool = False,
        limit: int | None = None,
    ):
        root = os.fspath(root)
        id_path = os.path.join(root, identity_file)
        if not os.path.isfile(id_path):
            raise MissingFileError(f"CelebA identity file not found: {id_path} (root={root})")
        names, ids = read_celeba_identities(id_path)
        if limit is not None:
            names, ids = names[:limit], ids[:limit]
        if not names:
            raise EmptyDatasetError(f"{id_path} lists no images")
        img_dir = os.path.join(root, images_dir)
        keep, lost = _check_missing(names, _list_dir(img_dir), img_dir, id_path, missing)
        names = [names[k] for k in keep]
        ids = [ids[k] for k in keep]
        lm_path = landmark_file(root, landmarks, ("list_landmarks_align_celeba.txt",
                                                  "list_landmarks_align_celeba.csv"), "CelebA")
        lm_arr = None
        if lm_path is not None:
            table = read_celeba_landmarks(lm_path)
            lm_arr = np.full((len(names), 5, 2), np.nan)
            absent = []
            for k, n in enumerate(names):
                v = table.get(n)
                if v is None:
                    absent.append(n)
                else:
                    lm_arr[k] = v
            if absent:
                raise LandmarkError(
                    f"{lm_path} has no row for {len(absent)} of {len(names)} images (first: {absent[:5]}); "
                    f"pass landmarks=None to use the fixed crop instead"
                )
            bad = np.nonzero(~np.all(np.isfinite(lm_arr), axis=(1, 2)) | np.any(lm_arr < -0.5, axis=(1, 2)))[0]
            if bad.size:
                raise LandmarkError(
                    f"{lm_path}: landmarks of {names[bad[0]]} are negative or not finite "
                    f"({lm_arr[bad[0]].tolist()}); {bad.size} such rows"
                )
        self.landmark_path = lm_path
        super().__init__(
            img_dir, names, ids, output_size, landmarks=lm_arr, strict=strict, name=f"CelebA({root})"
        )
        self.skipped_missing = lost
