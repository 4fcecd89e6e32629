"""CFP (Celebrities in Frontal-Profile): images, five-point landmarks and the verification protocol.

Layout (``docs/FORMATS.md``): ``root/Data/Images/<id>/{frontal,profile}/NN.jpg``, the data set's
``root/Protocol/`` (``Pair_list_F.txt``, ``Pair_list_P.txt``, ``Split/{FF,FP}/NN/{same,diff}.txt``)
and, optionally, ``root/landmarks_5pt.txt`` (a header line, then ``<id>/<pose>/NN.jpg`` and ten
numbers -- eyes, nose tip, mouth corners in the image's pixels -- then any further columns).

Geometry: an image with a landmark row is aligned to the model's template
(:mod:`jaxforget.data.align`); an image without one (46 profiles of the shared copy, where no
detector found a face) is **resized whole** to the model input -- CFP's crops are loose face crops,
so the whole crop is the best guess of the face, and this is the rule the shared copy's reference
verification accuracy was measured with.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Sequence

import numpy as np

from jaxforget.data.formats.files import (
    IMAGE_EXTENSIONS,
    FileSource,
    landmark_file,
    read_text,
    table_rows,
)
from jaxforget.data.source import (
    DataError,
    EmptyDatasetError,
    LandmarkError,
    MissingFileError,
    identity_array,
)

LANDMARK_FILE = "landmarks_5pt.txt"
PROTOCOLS = ("FP", "FF")


def read_landmarks_5pt(path: str) -> dict[str, np.ndarray]:
    """A five-point table (header line; ``<image> x1 y1 ... x5 y5 [more columns]`` lines) ->
    ``{image: (5, 2)}``. Points in the order eyes, nose tip, mouth corners (``docs/FORMATS.md``)."""
    out: dict[str, np.ndarray] = {}
    for lineno, parts, line in table_rows(path):
        try:
            out[parts[0]] = np.asarray([float(v) for v in parts[1:11]], np.float64).reshape(5, 2)
        except ValueError:
            raise LandmarkError(f"{path}: line {lineno} should be an image name and ten numbers; "
                                f"got {line!r}") from None
    return out


class CFPSource(FileSource):
    """CFP ``Data/Images/<id>/{frontal,profile}/NN.jpg``; identities are the folder names.

    ``poses`` selects frontal and/or profile images; ``self.poses`` gives each record's pose.
    Image ids are ``<id>/<pose>/<NN>``. ``landmarks``: ``'auto'`` (``root/landmarks_5pt.txt`` when
    present), a path, or ``None`` (every image resized whole). Images without a landmark row are
    resized whole (the module docstring); ``num_without_landmarks`` counts them. Landmarks may lie
    a little outside a profile image (the detector's guess of the hidden eye): the alignment then
    fills what falls outside with black.
    """

    landmarks_may_leave_image = True

    def __init__(
        self,
        root: str,
        output_size: Sequence[int] = (112, 112),
        *,
        poses: Sequence[str] = ("frontal", "profile"),
        landmarks: str | None = "auto",
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
        lm_path = landmark_file(root, landmarks, (LANDMARK_FILE,), "CFP")
        lm = None
        if lm_path is not None:
            table = read_landmarks_5pt(lm_path)
            lm = np.full((len(rel), 5, 2), np.nan)
            for k, r in enumerate(rel):
                if r in table:
                    lm[k] = table[r]
        self.landmark_path = lm_path
        self.num_without_landmarks = len(rel) if lm is None else int(np.isnan(lm[:, 0, 0]).sum())
        self.poses = np.asarray(pose_of)
        super().__init__(img_root, rel, identity_array(ids), output_size, image_ids=names,
                         landmarks=lm, strict=strict, name=f"CFP({root})")


@dataclasses.dataclass(frozen=True)
class CFPPairs:
    """The pairs of one CFP verification protocol (``FP`` frontal-profile, ``FF`` frontal-frontal).

    Pair ``i`` compares image ``first[i]`` with ``second[i]`` (image ids ``<id>/<pose>/<NN>``, as
    :class:`CFPSource` names them); ``issame`` says whether they show one person and ``folds``
    (0-based) which of the ten ``Split/<protocol>/NN`` folds it belongs to. Pairs are in fold
    order, each fold's ``same.txt`` pairs before its ``diff.txt`` pairs.
    """

    protocol: str
    first: tuple[str, ...]
    second: tuple[str, ...]
    issame: np.ndarray
    folds: np.ndarray

    def __len__(self) -> int:
        return len(self.first)


def _read_pair_list(path: str) -> dict[int, str]:
    """``Pair_list_{F,P}.txt``: ``<index> ../Data/Images/<id>/<pose>/NN.jpg`` -> {index: image id}."""
    if not os.path.isfile(path):
        raise MissingFileError(f"CFP pair list not found: {path} (is the root CFP's, with Protocol/?)")
    out = {}
    with io.StringIO(read_text(path)) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[0].isdigit() or "Images/" not in parts[1]:
                raise DataError(f"{path}: line {lineno} should be '<index> ../Data/Images/<id>/<pose>/"
                                f"NN.jpg', got {line.strip()!r}")
            out[int(parts[0])] = os.path.splitext(parts[1].split("Images/", 1)[1])[0]
    return out


def read_cfp_pairs(root: str, protocol: str) -> CFPPairs:
    """The ``FP`` or ``FF`` pairs of the CFP tree at ``root`` (its ``Protocol/`` folder)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"CFP protocol must be one of {PROTOCOLS}; got {protocol!r}")
    proto_dir = os.path.join(os.fspath(root), "Protocol")
    frontal = _read_pair_list(os.path.join(proto_dir, "Pair_list_F.txt"))
    other = frontal if protocol == "FF" else _read_pair_list(os.path.join(proto_dir, "Pair_list_P.txt"))
    split_dir = os.path.join(proto_dir, "Split", protocol)
    if not os.path.isdir(split_dir):
        raise MissingFileError(f"CFP split folder not found: {split_dir}")
    fold_names = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
    if not fold_names:
        raise EmptyDatasetError(f"{split_dir} holds no fold folders (01..10)")
    first, second, same, folds = [], [], [], []
    for k, fold in enumerate(fold_names):
        for kind in ("same", "diff"):
            path = os.path.join(split_dir, fold, f"{kind}.txt")
            if not os.path.isfile(path):
                raise MissingFileError(f"CFP fold file not found: {path}")
            with io.StringIO(read_text(path)) as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        i, j = (int(v) for v in line.split(","))
                        a, b = frontal[i], other[j]
                    except (ValueError, KeyError):
                        raise DataError(f"{path}: line {lineno} should be 'i,j' with i in the frontal "
                                        f"list and j in the {'frontal' if protocol == 'FF' else 'profile'} "
                                        f"list; got {line.strip()!r}") from None
                    first.append(a)
                    second.append(b)
                    same.append(kind == "same")
                    folds.append(k)
    return CFPPairs(protocol, tuple(first), tuple(second), np.asarray(same, bool),
                    np.asarray(folds, np.int64))
