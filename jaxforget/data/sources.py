"""Random-access face datasets (grain data sources).

Every source is a grain random-access source (``__len__``, ``__getitem__``) whose records are

    {'image': uint8 (H, W, 3) RGB at ``output_size``, 'identity': raw identity, 'image_id': str,
     'valid': bool}

``valid`` is ``False`` only for an image that could not be decoded when ``strict=False`` (its
``image`` is then black); the pipelines mask such records out and report them. Without decoding
anything a source also exposes ``identities`` (per-record raw identities, a numpy array),
``image_ids`` (list of str), ``unique_identities()`` and ``subset(indices)``.

Geometry, per source: faces with five landmarks are aligned to the InsightFace template at
``output_size`` (:mod:`jaxforget.data.align`); CelebA without landmarks uses a documented fixed
crop; packs of already aligned 112x112 faces (``.bin``, ``.rec``) are cropped to 112x96 by dropping
8 columns per side (the ``x - 8`` template) or resized; other images are resized whole.

Bad input: a file named by an annotation but missing raises :class:`MissingFileError` naming the
file and the root (``missing='skip'`` drops and counts them instead); an unreadable image raises
:class:`CorruptImageError` with ``strict=True``, else is counted in ``failures`` and returned with
``valid=False``; landmarks outside the image raise :class:`LandmarkError` naming the image; an empty
dataset raises :class:`EmptyDatasetError`.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import pickle
import threading
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from jaxforget.data import align as align_lib
from jaxforget.data.recordio import RecordIOReader, unpack_payload

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".gif")

#: Identity given to every image of an unlabelled folder (e.g. IJB-B distractors).
UNLABELLED = "__unlabelled__"


class DataError(ValueError):
    """Base class of the data errors below."""


class MissingFileError(DataError, FileNotFoundError):
    """An annotation names a file that is not on disk."""


class CorruptImageError(DataError):
    """An image file could not be decoded."""


class LandmarkError(DataError):
    """Landmarks are malformed or fall outside their image."""


class EmptyDatasetError(DataError):
    """A dataset has no records."""


def _as_size(output_size: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in output_size)
    except (TypeError, ValueError):
        raise ValueError(f"output_size must be (height, width); got {output_size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"output_size must be positive (height, width); got {output_size!r}")
    return h, w


def _identity_array(values: Sequence[Hashable]) -> np.ndarray:
    """Per-record identities as an int64 array when they are all ints, else a str array."""
    if len(values) and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.int64)
    return np.asarray([str(v) for v in values], dtype=str)


def _to_python(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


class FaceSource:
    """Base class: bookkeeping, decoding, geometry, failure accounting.

    Subclasses fill ``image_ids``, ``identities`` and implement :meth:`_open` (return a PIL image
    for record ``i``, not yet converted); optional per-record ``landmarks (N, 5, 2)`` (NaN where
    absent) and ``boxes (N, 4)`` (left, top, right, bottom; NaN where absent) are used for geometry.
    """

    #: Geometry when neither landmarks nor a box are known: 'resize', 'celeba_crop', 'aligned112'.
    fallback_geometry: str = "resize"

    def __init__(
        self,
        image_ids: Sequence[str],
        identities: Sequence[Hashable] | np.ndarray,
        output_size: Sequence[int],
        *,
        landmarks: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        strict: bool = False,
        name: str = "",
    ):
        self.name = name or type(self).__name__
        self.output_size = _as_size(output_size)
        self.image_ids = list(image_ids)
        self.identities = identities if isinstance(identities, np.ndarray) else _identity_array(list(identities))
        if len(self.image_ids) == 0:
            raise EmptyDatasetError(f"{self.name}: the dataset has no images")
        if len(self.identities) != len(self.image_ids):
            raise ValueError(
                f"{self.name}: {len(self.identities)} identities for {len(self.image_ids)} images"
            )
        self.landmarks = None if landmarks is None else np.asarray(landmarks, np.float64)
        if self.landmarks is not None and self.landmarks.shape != (len(self), 5, 2):
            raise LandmarkError(
                f"{self.name}: landmarks must have shape ({len(self)}, 5, 2); got {self.landmarks.shape}"
            )
        # Alignment matrices for every record, fitted once (vectorised) for this output size.
        self._align_m = None
        if self.landmarks is not None:
            self._align_m = align_lib.similarity_transforms(self.landmarks, align_lib.template_for(self.output_size))
        self.boxes = None if boxes is None else np.asarray(boxes, np.float64)
        if self.boxes is not None and self.boxes.shape != (len(self), 4):
            raise ValueError(f"{self.name}: boxes must have shape ({len(self)}, 4); got {self.boxes.shape}")
        self.strict = bool(strict)
        self.failures: dict[str, str] = {}
        self.skipped_missing: list[str] = []
        self._lock = threading.Lock()

    # -- grain protocol -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} records")
        try:
            image = self._load(i)
            valid = True
        except (LandmarkError, MissingFileError):
            raise
        except Exception as e:  # noqa: BLE001 - any decoder failure is a corrupt image
            where = self.describe(i)
            if self.strict:
                raise CorruptImageError(f"{self.name}: cannot decode {where}: {e}") from e
            with self._lock:
                first = not self.failures
                self.failures[where] = f"{type(e).__name__}: {e}"
            if first:
                log.warning("%s: cannot decode %s (%s); skipping it (strict=False)", self.name, where, e)
            image = np.zeros(self.output_size + (3,), np.uint8)
            valid = False
        return {
            "image": image,
            "identity": _to_python(self.identities[i]),
            "image_id": self.image_ids[i],
            "valid": valid,
        }

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- metadata without decoding --------------------------------------------------------------
    def unique_identities(self) -> list:
        """Sorted distinct raw identities."""
        return [_to_python(v) for v in np.unique(self.identities)]

    @property
    def alignment_matrices(self) -> np.ndarray | None:
        """``(N, 2, 3)`` landmark -> template similarity per record (NaN rows: no landmarks)."""
        return self._align_m

    def subset(self, indices: Sequence[int] | np.ndarray) -> "SubsetSource":
        """A view on the records ``indices`` (record ``j`` of the view is ``self[indices[j]]``)."""
        return SubsetSource(self, indices)

    def describe(self, i: int) -> str:
        """Human-readable location of record ``i`` (file path or pack position)."""
        return self.image_ids[i]

    def failure_report(self) -> str:
        """Summary of images that could not be decoded or were missing (empty string when none)."""
        lines = []
        if self.failures:
            shown = ", ".join(list(self.failures)[:5])
            lines.append(f"{self.name}: {len(self.failures)} unreadable image(s) skipped: {shown}")
        if self.skipped_missing:
            shown = ", ".join(self.skipped_missing[:5])
            lines.append(f"{self.name}: {len(self.skipped_missing)} missing file(s) skipped: {shown}")
        return "\n".join(lines)

    # -- decoding -------------------------------------------------------------------------------
    def _open(self, i: int) -> Image.Image:
        raise NotImplementedError

    def _load(self, i: int) -> np.ndarray:
        img = self._open(i)
        lm = None
        if self.landmarks is not None and np.all(np.isfinite(self.landmarks[i])):
            lm = self.landmarks[i]
        box = None
        if self.boxes is not None and np.all(np.isfinite(self.boxes[i])):
            box = self.boxes[i]
        m = None if lm is None or self._align_m is None else self._align_m[i]
        return self.geometry(img, lm, box, self.describe(i), m)

    def geometry(
        self, img: Image.Image, landmarks: np.ndarray | None, box: np.ndarray | None, where: str, m: np.ndarray | None = None
    ) -> np.ndarray:
        """Decode ``img`` and bring it to ``output_size`` (align, crop or resize).

        ``m`` is the precomputed alignment matrix of ``landmarks`` (fitted here when absent)."""
        oh, ow = self.output_size
        full_w, full_h = img.size
        if landmarks is not None:
            _check_landmarks(landmarks, (full_h, full_w), where)
            if m is None or not np.all(np.isfinite(m)):
                m = align_lib.similarity_transform(landmarks, align_lib.template_for(self.output_size))
            scale = math.sqrt(abs(np.linalg.det(m[:, :2])))
            if scale < 0.5 and img.format == "JPEG":
                # Decode at a reduced DCT scale when the face is much bigger than the output.
                img.draft("RGB", (max(1, int(full_w * scale * 1.5)), max(1, int(full_h * scale * 1.5))))
            img = _rgb(img)
            if img.size != (full_w, full_h):
                fx, fy = img.size[0] / full_w, img.size[1] / full_h
                lm = (landmarks + 0.5) * np.array([fx, fy]) - 0.5
                m = align_lib.similarity_transform(lm, align_lib.template_for(self.output_size))
            return align_lib.warp_affine(img, m, self.output_size)
        if box is not None:
            img = _rgb(img)
            return _resize_box(img, tuple(box), (oh, ow))
        if self.fallback_geometry == "celeba_crop":
            box = align_lib.fixed_crop_box((full_h, full_w), self.output_size)
            img = _rgb(img)
            return _resize_box(img, box, (oh, ow))
        if self.fallback_geometry == "aligned112" and (oh, ow) == (112, 96) and (full_w, full_h) == (112, 112):
            return np.asarray(_rgb(img))[:, 8:104].copy()
        if img.format == "JPEG" and (full_w >= 2 * ow and full_h >= 2 * oh):
            img.draft("RGB", (ow, oh))
        img = _rgb(img)
        if img.size == (ow, oh):
            return np.asarray(img)
        return np.asarray(img.resize((ow, oh), Image.Resampling.BILINEAR))


class SubsetSource(FaceSource):
    """Records ``indices`` of a parent source; metadata is sliced without decoding."""

    def __init__(self, parent: FaceSource, indices: Sequence[int] | np.ndarray):
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(parent)):
            raise IndexError(
                f"subset of {parent.name}: indices must lie in [0, {len(parent)}); got range "
                f"[{idx.min()}, {idx.max()}]"
            )
        self.parent = parent
        self.indices = idx
        self.name = f"{parent.name}[subset of {idx.size}]"
        if idx.size == 0:
            raise EmptyDatasetError(f"{self.name}: the subset has no records")
        self.output_size = parent.output_size
        self.image_ids = [parent.image_ids[int(j)] for j in idx]
        self.identities = parent.identities[idx]
        self.landmarks = None if parent.landmarks is None else parent.landmarks[idx]
        self.boxes = None if parent.boxes is None else parent.boxes[idx]
        self._align_m = None if parent._align_m is None else parent._align_m[idx]
        self.strict = parent.strict
        self.failures = parent.failures
        self.skipped_missing = parent.skipped_missing
        self._lock = threading.Lock()

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = int(index)
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} records")
        return self.parent[int(self.indices[i])]

    def describe(self, i: int) -> str:
        return self.parent.describe(int(self.indices[i]))

    def failure_report(self) -> str:
        return self.parent.failure_report()


def _rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        img.load()
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = max(float(arr.max()), 1.0)
        img = Image.fromarray((arr * (255.0 / hi)).astype(np.uint8))
    return img.convert("RGB")


def _resize_box(img: Image.Image, box: tuple[float, ...], size: tuple[int, int]) -> np.ndarray:
    oh, ow = size
    left, top, right, bottom = (float(v) for v in box)
    if right <= left or bottom <= top:
        raise ValueError(f"empty crop box {box}")
    w, h = img.size
    if left >= 0 and top >= 0 and right <= w and bottom <= h:
        return np.asarray(img.resize((ow, oh), Image.Resampling.BILINEAR, box=(left, top, right, bottom)))
    # Box partly outside: affine map box -> output with black outside (same centre convention).
    sx, sy = ow / (right - left), oh / (bottom - top)
    m = np.array([[sx, 0.0, (0.5 - left) * sx - 0.5], [0.0, sy, (0.5 - top) * sy - 0.5]])
    return align_lib.warp_affine(img, m, size)


def _check_landmarks(landmarks: np.ndarray, image_hw: tuple[int, int], where: str) -> None:
    h, w = image_hw
    x, y = landmarks[:, 0], landmarks[:, 1]
    if np.any(x < -0.5) or np.any(y < -0.5) or np.any(x > w - 0.5) or np.any(y > h - 0.5):
        raise LandmarkError(
            f"landmarks of {where} fall outside the {w}x{h} (width x height) image: "
            f"{np.round(landmarks, 2).tolist()}; fix or drop that annotation row"
        )


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


# ----------------------------------------------------------------------------------------------
# File-based sources
# ----------------------------------------------------------------------------------------------


class _FileSource(FaceSource):
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


def read_celeba_identities(path: str) -> tuple[list[str], list[int]]:
    """``identity_CelebA.txt``: ``000001.jpg 2880`` lines -> (file names, identities)."""
    names, ids = [], []
    with open(path, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise DataError(f"{path}: line {lineno} should be '<file> <identity>', got {line.strip()!r}")
            try:
                ids.append(int(parts[1]))
            except ValueError:
                raise DataError(f"{path}: line {lineno}: identity {parts[1]!r} is not an integer") from None
            names.append(parts[0])
    return names, ids


def read_celeba_landmarks(path: str) -> dict[str, np.ndarray]:
    """Official ``list_landmarks_align_celeba.txt`` or the Kaggle ``.csv`` -> {file: (5, 2)}."""
    out: dict[str, np.ndarray] = {}
    with open(path, "r", encoding="utf-8") as f:
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
    if not lines:
        raise LandmarkError(f"{path}: the landmark file is empty")
    if path.lower().endswith(".csv") or "," in lines[0]:
        rows = list(csv.reader(lines))
        header, body = rows[0], rows[1:]
        if len(header) != 11 or header[0].strip() != "image_id":
            raise LandmarkError(
                f"{path}: expected the Kaggle header 'image_id,lefteye_x,...,rightmouth_y' (11 columns); "
                f"got {header}"
            )
        start = 2
    else:
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


class CelebASource(_FileSource):
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
        lm_path = None
        if landmarks == "auto":
            for cand in ("list_landmarks_align_celeba.txt", "list_landmarks_align_celeba.csv"):
                if os.path.isfile(os.path.join(root, cand)):
                    lm_path = os.path.join(root, cand)
                    break
        elif landmarks is not None:
            lm_path = os.fspath(landmarks)
            if not os.path.isfile(lm_path):
                raise MissingFileError(f"CelebA landmark file not found: {lm_path}")
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


class FolderSource(_FileSource):
    """Identity-per-folder tree ``root/<identity>/<image>`` (ORL ``s1/1.pgm``, LFW, ...).

    Greyscale images (ORL's PGM) are replicated to RGB. Identities are the folder names (str);
    files are listed in sorted order so record indices are stable. Files directly in ``root`` are
    ignored unless ``unlabelled=True``, in which case every image under ``root`` (recursively)
    becomes a record with identity :data:`UNLABELLED` (a distractor gallery such as IJB-B).
    Images are resized whole to ``output_size`` (or aligned when ``landmarks`` maps image ids to
    ``(5, 2)`` points).
    """

    def __init__(
        self,
        root: str,
        output_size: Sequence[int] = (112, 112),
        *,
        unlabelled: bool = False,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        landmarks: Mapping[str, np.ndarray] | None = None,
        strict: bool = False,
    ):
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise MissingFileError(f"image folder not found: {root}")
        exts = tuple(e.lower() for e in extensions)
        rel, ids = [], []
        if unlabelled:
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                for fn in sorted(filenames):
                    if fn.lower().endswith(exts):
                        rel.append(os.path.relpath(os.path.join(dirpath, fn), root))
                        ids.append(UNLABELLED)
        else:
            for d in sorted(os.listdir(root)):
                full = os.path.join(root, d)
                if not os.path.isdir(full):
                    continue
                for fn in sorted(os.listdir(full)):
                    if fn.lower().endswith(exts) and os.path.isfile(os.path.join(full, fn)):
                        rel.append(f"{d}/{fn}")
                        ids.append(d)
        if not rel:
            raise EmptyDatasetError(
                f"no images with extensions {exts} under {root}"
                + ("" if unlabelled else " in identity sub-folders (pass unlabelled=True for a flat folder)")
            )
        lm = None
        if landmarks is not None:
            lm = np.full((len(rel), 5, 2), np.nan)
            for k, r in enumerate(rel):
                if r in landmarks:
                    lm[k] = np.asarray(landmarks[r], np.float64).reshape(5, 2)
        super().__init__(root, rel, _identity_array(ids), output_size, landmarks=lm, strict=strict, name=f"Folder({root})")


def read_vggface2_csv(path: str, columns: int) -> dict[str, np.ndarray]:
    """``NAME_ID,v1,...`` CSV (VGGFace2 ``loose_landmark_*.csv`` / ``loose_bb_*.csv``)."""
    out = {}
    with open(path, "r", encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or len(header) != columns + 1 or header[0].strip() != "NAME_ID":
            raise DataError(f"{path}: expected a header 'NAME_ID' + {columns} columns; got {header}")
        for lineno, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) != columns + 1:
                raise DataError(f"{path}: line {lineno} should have {columns + 1} fields; got {row}")
            try:
                out[row[0].strip()] = np.asarray([float(v) for v in row[1:]], np.float64)
            except ValueError:
                raise DataError(f"{path}: line {lineno}: non-numeric value in {row}") from None
    return out


class VGGFace2Source(_FileSource):
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
        max_per_identity: int | None = None,
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
            if max_per_identity is not None:
                files = files[:max_per_identity]
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
                    oh, ow = _as_size(output_size)
                    box_arr[k] = (cx - s * ow / oh / 2, cy - s / 2, cx + s * ow / oh / 2, cy + s / 2)
        self.landmark_path, self.box_path = lm_path, bb_path
        super().__init__(
            split_dir, rel, _identity_array(ids), output_size, image_ids=names, landmarks=lm_arr,
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


class CFPSource(_FileSource):
    """CFP ``Data/Images/<id>/{frontal,profile}/NN.jpg``; identities are the folder names.

    ``poses`` selects frontal and/or profile images; ``self.poses`` gives each record's pose.
    Image ids are ``<id>/<pose>/<NN>``. Images are resized whole (CFP crops are not aligned).
    """

    def __init__(
        self,
        root: str,
        output_size: Sequence[int] = (112, 112),
        *,
        poses: Sequence[str] = ("frontal", "profile"),
        strict: bool = False,
    ):
        root = os.fspath(root)
        img_root = os.path.join(root, "Data", "Images")
        if not os.path.isdir(img_root):
            img_root = root if os.path.isdir(root) else img_root
        if not os.path.isdir(img_root):
            raise MissingFileError(f"CFP image folder not found: {os.path.join(root, 'Data', 'Images')}")
        for p in poses:
            if p not in ("frontal", "profile"):
                raise ValueError(f"CFP poses must be 'frontal' and/or 'profile'; got {p!r}")
        rel, ids, pose_of, names = [], [], [], []
        for d in sorted(os.listdir(img_root)):
            for p in poses:
                pdir = os.path.join(img_root, d, p)
                if not os.path.isdir(pdir):
                    continue
                for fn in sorted(os.listdir(pdir)):
                    if fn.lower().endswith(IMAGE_EXTENSIONS):
                        rel.append(f"{d}/{p}/{fn}")
                        ids.append(d)
                        pose_of.append(p)
                        names.append(f"{d}/{p}/{os.path.splitext(fn)[0]}")
        if not rel:
            raise EmptyDatasetError(f"no CFP images under {img_root}/<id>/{{frontal,profile}}/")
        self.poses = np.asarray(pose_of)
        super().__init__(img_root, rel, _identity_array(ids), output_size, image_ids=names, strict=strict, name=f"CFP({root})")


# ----------------------------------------------------------------------------------------------
# Packed sources (InsightFace .bin and .rec/.idx)
# ----------------------------------------------------------------------------------------------


class _RestrictedUnpickler(pickle.Unpickler):
    """Allows only what an InsightFace ``.bin`` holds: lists, tuples, bytes, bools and numpy
    uint8 arrays. Anything else (functions, arbitrary classes) is refused."""

    _RECONSTRUCT = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._RECONSTRUCT:
            def reconstruct(cls, shape, dtype_code):
                if cls is not np.ndarray:
                    raise pickle.UnpicklingError(f"refusing to rebuild {cls!r}: only numpy.ndarray is allowed")
                return np.ndarray.__new__(np.ndarray, shape, dtype_code)

            return reconstruct
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            def dtype(code, *args):
                code_s = code.decode() if isinstance(code, bytes) else code
                if code_s not in ("u1", "uint8", "b"):
                    raise pickle.UnpicklingError(f"refusing numpy dtype {code!r}: only uint8 arrays are allowed")
                return np.dtype(np.uint8)

            return dtype
        if (module, name) == ("_codecs", "encode"):
            # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, 'latin1').
            def encode(text, encoding="utf-8"):
                if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
                    raise pickle.UnpicklingError("refusing _codecs.encode other than str -> latin1 bytes")
                return text.encode("latin1")

            return encode
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: a .bin verification set holds only bytes, "
            f"lists, bools and uint8 arrays"
        )


def load_verification_bin(path: str) -> tuple[list[bytes], np.ndarray]:
    """Read an InsightFace verification ``.bin`` safely: ``(encoded images, issame bool (N,))``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(f"verification set not found: {path}")
    with open(path, "rb") as f:
        try:
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
        except pickle.UnpicklingError as e:
            raise DataError(f"{path}: {e}") from e
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{path}: not a readable InsightFace .bin pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DataError(f"{path}: expected a pickled (bins, issame_list) pair; got {type(obj).__name__}")
    bins, issame = obj
    images = []
    for k, b in enumerate(bins):
        if isinstance(b, np.ndarray):
            if b.dtype != np.uint8:
                raise DataError(f"{path}: image {k} is a {b.dtype} array, expected uint8 bytes")
            b = b.tobytes()
        if not isinstance(b, (bytes, bytearray)):
            raise DataError(f"{path}: image {k} is {type(b).__name__}, expected bytes")
        images.append(bytes(b))
    if not all(isinstance(s, (bool, np.bool_)) for s in issame):
        raise DataError(f"{path}: issame_list must hold booleans")
    if len(images) != 2 * len(issame):
        raise DataError(f"{path}: {len(images)} images for {len(issame)} pairs (expected 2 per pair)")
    return images, np.asarray(issame, bool)


class VerificationBinSource(FaceSource):
    """InsightFace verification pack (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``).

    Records are the 2N aligned 112x112 images; ``pairs`` is ``(N, 2)`` record indices of each pair
    (consecutive images) and ``issame`` ``(N,)`` bool. The packs carry no identity labels: every
    record's identity is ``-1``. Images are cropped to 112x96 (``x - 8``) or resized.
    """

    fallback_geometry = "aligned112"

    def __init__(self, path: str, output_size: Sequence[int] = (112, 112), *, strict: bool = False):
        self.path = os.fspath(path)
        self._bins, self.issame = load_verification_bin(self.path)
        n = len(self._bins)
        if n == 0:
            raise EmptyDatasetError(f"{self.path}: the verification set has no images")
        self.pairs = np.arange(n, dtype=np.int64).reshape(-1, 2)
        stem = os.path.splitext(os.path.basename(self.path))[0]
        super().__init__([f"{stem}/{k:05d}" for k in range(n)], np.full(n, -1, np.int64), output_size, strict=strict, name=f"Bin({self.path})")

    def describe(self, i: int) -> str:
        return f"{self.path} image {i}"

    def _open(self, i: int) -> Image.Image:
        return Image.open(io.BytesIO(self._bins[i]))


class RecordIOSource(FaceSource):
    """InsightFace training pack ``train.rec`` + ``train.idx`` (MS1MV2, Glint360K, WebFace).

    Identities are the integer labels read from the record headers (vectorised, no decoding).
    When record 0 is an InsightFace header (``flag > 0``) the image records are keys
    ``1 .. label[0] - 1``; otherwise every key is an image. Image ids are ``rec:<key>``.
    Images (aligned 112x112) are cropped to 112x96 (``x - 8``) or resized to ``output_size``.
    """

    fallback_geometry = "aligned112"

    def __init__(
        self, rec_path: str, idx_path: str | None = None, output_size: Sequence[int] = (112, 112), *, strict: bool = False
    ):
        self.reader = RecordIOReader(rec_path, idx_path)
        keys = [int(k) for k in self.reader.keys]
        if not keys:
            raise EmptyDatasetError(f"{self.reader.idx_path} lists no records")
        if 0 in keys:
            label0, _, _, _ = unpack_payload(self.reader.read_key(0))
            if isinstance(label0, np.ndarray) and label0.size >= 1:
                first = int(label0[0])
                keys = [k for k in keys if 1 <= k < first]
        if not keys:
            raise EmptyDatasetError(f"{self.reader.rec_path}: no image records")
        self.keys = np.asarray(keys, np.int64)
        labels = self.reader.header_labels(self.keys)
        super().__init__(
            [f"rec:{k}" for k in keys], labels.astype(np.int64), output_size, strict=strict, name=f"RecordIO({rec_path})"
        )

    def describe(self, i: int) -> str:
        return f"{self.reader.rec_path} key {int(self.keys[i])}"

    def _open(self, i: int) -> Image.Image:
        _, data, _, _ = unpack_payload(self.reader.read_key(int(self.keys[i])))
        return Image.open(io.BytesIO(data))


class ArraySource(FaceSource):
    """In-memory images ``(N, H, W, 3)`` uint8 (or ``(N, H, W)`` greyscale) with identities."""

    def __init__(
        self,
        images: np.ndarray,
        identities: Sequence[Hashable],
        image_ids: Sequence[str] | None = None,
        output_size: Sequence[int] | None = None,
    ):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
            raise ValueError(f"ArraySource needs uint8 (N, H, W, 3) or (N, H, W) images; got {images.dtype} {images.shape}")
        if images.ndim == 3:
            images = np.repeat(images[..., None], 3, axis=-1)
        self.images = images
        ids = image_ids if image_ids is not None else [f"img{k:06d}" for k in range(len(images))]
        super().__init__(ids, identities, output_size or images.shape[1:3], name="Array")

    def _open(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])

    def _load(self, i: int) -> np.ndarray:
        if self.images.shape[1:3] == self.output_size:
            return self.images[i]
        return super()._load(i)


SOURCES: dict[str, Callable[..., FaceSource]] = {
    "celeba": CelebASource,
    "folder": FolderSource,
    "vggface2": VGGFace2Source,
    "cfp": CFPSource,
    "bin": VerificationBinSource,
    "recordio": RecordIOSource,
}


def make_source(kind: str, *args, **kwargs) -> FaceSource:
    """Build a source by name: ``celeba``, ``folder``, ``vggface2``, ``cfp``, ``bin``, ``recordio``,
    ``synthetic``."""
    if kind == "synthetic":
        from jaxforget.data.synthetic import SyntheticFaces

        return SyntheticFaces(*args, **kwargs)
    try:
        return SOURCES[kind](*args, **kwargs)
    except KeyError:
        raise ValueError(f"unknown source kind {kind!r}; choose one of {sorted(SOURCES) + ['synthetic']}") from None


def source_from_config(data_cfg: Any, output_size: Sequence[int], seed: int = 0) -> FaceSource:
    """Build the source a ``config.data`` block describes (see ``jaxforget/config.py``).

    Fields used: ``name`` (celeba | vggface2 | orl | folder | synthetic), ``root``,
    ``annotations`` (CelebA identity file), ``landmarks`` ('' = look under root), ``align``
    (False = no landmarks: CelebA fixed crop), ``num_identities`` / ``images_per_identity``
    (synthetic, drawn with ``seed``), ``max_images`` (0 = all, else the first N records), and an
    optional ``split`` (VGGFace2 'train' | 'test', default 'test').
    """

    def get(key: str, default: Any = None) -> Any:
        try:
            v = data_cfg[key] if isinstance(data_cfg, Mapping) else getattr(data_cfg, key)
        except (KeyError, AttributeError):
            return default
        return default if v is None else v

    name = str(get("name", ""))
    root = os.fspath(get("root", "") or "")
    max_images = int(get("max_images", 0) or 0)
    if name == "synthetic":
        src: FaceSource = make_source(
            "synthetic", int(get("num_identities", 100)), int(get("images_per_identity", 10)), size=output_size, seed=seed
        )
    else:
        if not root or not os.path.exists(root):
            try:
                from jaxforget.config import DATA_HELP

                what = DATA_HELP.get(name, "")
            except Exception:  # noqa: BLE001 - the help text is optional
                what = ""
            raise MissingFileError(
                f"data.root={root!r} does not exist for data.name={name!r}"
                + (f"; it should hold {what}" if what else "")
                + "; set --config.data.root=<folder>"
            )
        if name == "celeba":
            lm = (get("landmarks", "") or "auto") if get("align", True) else None
            src = CelebASource(
                root, output_size, landmarks=lm, identity_file=get("annotations", "") or "identity_CelebA.txt",
                limit=max_images or None,
            )
            max_images = 0
        elif name == "vggface2":
            src = VGGFace2Source(root, str(get("split", "test")), output_size, landmarks="auto" if get("align", True) else None)
        elif name in ("orl", "folder"):
            src = FolderSource(root, output_size)
        else:
            raise ValueError(f"unknown data.name {name!r}; choose celeba, vggface2, orl, folder or synthetic")
    if max_images and max_images < len(src):
        src = src.subset(np.arange(max_images))
    return src
