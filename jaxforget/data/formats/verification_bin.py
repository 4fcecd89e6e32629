"""InsightFace verification packs (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``), read safely.

A ``.bin`` is a pickled ``(bins, issame_list)`` pair: ``2N`` encoded aligned 112x112 images and
``N`` booleans (layout in ``docs/FORMATS.md``). It is read with the package's restricted unpickler
(:mod:`jaxforget.io.safe_pickle`) and an allow-list that rebuilds only bytes, lists, tuples, bools
and uint8 arrays.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Sequence

import numpy as np
from PIL import Image

from jaxforget.data.source import DataError, EmptyDatasetError, FaceSource, MissingFileError
from jaxforget.io.safe_pickle import UnsafePickleError, restricted_load


def _reconstruct(cls, shape, dtype_code):
    if cls is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing to rebuild {cls!r}: only numpy.ndarray is allowed")
    # numpy pickles an array as an empty (0,) array that BUILD then fills; the shape given here is
    # not trusted (a hostile one would allocate its size before BUILD checks the data).
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)


def _dtype(code, *args):
    code_s = code.decode() if isinstance(code, bytes) else code
    if code_s not in ("u1", "uint8", "b"):
        raise pickle.UnpicklingError(f"refusing numpy dtype {code!r}: only uint8 arrays are allowed")
    return np.dtype(np.uint8)


def _encode(text, encoding="utf-8"):
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, 'latin1').
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refusing _codecs.encode other than str -> latin1 bytes")
    return text.encode("latin1")


#: Everything an InsightFace ``.bin`` may name: lists, tuples, bytes and bools need no global;
#: numpy uint8 arrays are rebuilt by checking functions. Anything else (functions, arbitrary
#: classes) is refused by :func:`jaxforget.io.safe_pickle.restricted_load`.
BIN_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
}


def load_verification_bin(path: str) -> tuple[list[bytes], np.ndarray]:
    """Read an InsightFace verification ``.bin`` safely: ``(encoded images, issame bool (N,))``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(f"verification set not found: {path}")
    with open(path, "rb") as f:
        try:
            obj = restricted_load(
                f, BIN_ALLOWED, path, encoding="bytes",
                expected="bytes, a list, a bool or a uint8 array (all a .bin verification set holds)",
            )
        except UnsafePickleError as e:
            raise DataError(str(e)) from e
        except pickle.UnpicklingError as e:
            raise DataError(f"{path}: {e}") from e
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{path}: not a readable InsightFace .bin pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DataError(f"{path}: expected a pickled (bins, issame_list) pair; got {type(obj).__name__}")
    bins, issame = obj
    if not isinstance(bins, (tuple, list)) or not isinstance(issame, (tuple, list, np.ndarray)):
        raise DataError(
            f"{path}: expected a pickled (bins, issame_list) pair of lists; got ({type(bins).__name__}, "
            f"{type(issame).__name__})"
        )
    images = []
    for k, b in enumerate(bins):
        if isinstance(b, np.ndarray):
            if b.dtype != np.uint8:
                raise DataError(f"{path}: image {k} is a {b.dtype} array, expected uint8 bytes")
            b = b.tobytes()
        if not isinstance(b, (bytes, bytearray)):
            raise DataError(f"{path}: image {k} is {type(b).__name__}, expected bytes")
        images.append(bytes(b))
    if np.ndim(issame) != 1 or not all(isinstance(s, (bool, np.bool_)) for s in issame):
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
