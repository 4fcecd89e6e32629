"""The face-source interface: the record contract, errors, decoding and geometry.

Every source is a grain random-access source (``__len__``, ``__getitem__``) whose records are

    {'image': uint8 (H, W, 3) RGB at ``output_size``, 'identity': raw identity, 'image_id': str,
     'valid': bool}

``valid`` is ``False`` only for an image that could not be decoded when ``strict=False`` (its
``image`` is then black); the pipelines mask such records out and report them. Without decoding
anything a source also exposes ``identities`` (per-record raw identities, a numpy array),
``image_ids`` (list of str), ``unique_identities()`` and ``subset(indices)``.

Geometry, per source: faces with five landmarks are aligned to the InsightFace template at
``output_size`` (:mod:`jaxforget.data.align`); CelebA without landmarks uses a documented fixed
crop; already aligned 112x112 faces (``.bin``, ``.rec``, CelebA-wild's ``aligned_112``) follow
:func:`jaxforget.data.align.aligned_crop_box` (112x96: the central 96 columns, the ``x - 8``
template; 112x112: as they are; other sizes: that box resized); other images are resized whole.

Bad input: a file named by an annotation but missing raises :class:`MissingFileError` naming the
file and the root (``missing='skip'`` drops and counts them instead); an unreadable image raises
:class:`CorruptImageError` with ``strict=True``, else is counted in ``failures`` and returned with
``valid=False``; landmarks outside the image raise :class:`LandmarkError` naming the image; an empty
dataset raises :class:`EmptyDatasetError`.

This module holds the base class :class:`FaceSource`, the views :class:`SubsetSource` and
:class:`ArraySource`, the errors and the decoding helpers; each on-disk format is a module of
:mod:`jaxforget.data.formats`, and :mod:`jaxforget.data.factory` builds one by name.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any, Hashable, Sequence

import numpy as np
from PIL import Image

from jaxforget.data import align as align_lib

log = logging.getLogger(__name__)

#: Images declaring more pixels are refused before decoding (a face photo has far fewer; a file
#: declaring more is corrupt or a decompression bomb). PIL's own check stops at twice its limit.
MAX_IMAGE_PIXELS = 1 << 26


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


def as_size(output_size: Sequence[int]) -> tuple[int, int]:
    """``output_size`` as a checked ``(height, width)`` pair of positive ints."""
    try:
        h, w = (int(v) for v in output_size)
    except (TypeError, ValueError):
        raise ValueError(f"output_size must be (height, width); got {output_size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"output_size must be positive (height, width); got {output_size!r}")
    return h, w


def identity_array(values: Sequence[Hashable]) -> np.ndarray:
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
    #: Whether landmarks may lie outside their image (detector guesses of hidden points, as on CFP's
    #: profiles); when False such landmarks are a :class:`LandmarkError` naming the image.
    landmarks_may_leave_image: bool = False

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
        self.output_size = as_size(output_size)
        self.image_ids = list(image_ids)
        self.identities = identities if isinstance(identities, np.ndarray) else identity_array(list(identities))
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
        check_declared_size(img)
        if landmarks is not None:
            if not self.landmarks_may_leave_image:
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
        if self.fallback_geometry == "aligned112":
            return fit_aligned(img, self.output_size)
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


# ----------------------------------------------------------------------------------------------
# Decoding helpers (used by FaceSource.geometry)
# ----------------------------------------------------------------------------------------------


def check_declared_size(img: Image.Image) -> None:
    """Raises ``ValueError`` when ``img`` (opened, not decoded) declares over
    :data:`MAX_IMAGE_PIXELS` pixels."""
    w, h = img.size
    if w * h > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"the image declares {w}x{h} pixels, over the limit of {MAX_IMAGE_PIXELS} (corrupt, or a "
            "decompression bomb)"
        )


def fit_aligned(img: Image.Image, output_size: Sequence[int]) -> np.ndarray:
    """An already aligned face (opened, not yet decoded) at ``output_size`` as uint8 RGB, by
    :func:`jaxforget.data.align.aligned_crop_box`: a 112x112 crop for a 112x96 model keeps the
    central 96 columns (an exact crop), a crop at the model's size is taken as it is, any other is
    that box resized (bilinear)."""
    oh, ow = as_size(output_size)
    check_declared_size(img)
    full_w, full_h = img.size
    left, top, right, bottom = align_lib.aligned_crop_box((full_h, full_w), (oh, ow))
    img = _rgb(img)
    if (right - left, bottom - top) == (ow, oh) and float(left).is_integer():
        return np.asarray(img)[:, int(left) : int(left) + ow].copy()  # exact crop
    return _resize_box(img, (left, top, right, bottom), (oh, ow))


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
