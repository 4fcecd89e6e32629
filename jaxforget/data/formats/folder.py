"""Identity-per-folder image trees (ORL ``s1/1.pgm``, LFW, ...) and flat distractor folders."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from jaxforget.data.formats.files import IMAGE_EXTENSIONS, FileSource
from jaxforget.data.source import EmptyDatasetError, MissingFileError, identity_array

#: Identity given to every image of an unlabelled folder (e.g. IJB-B distractors).
UNLABELLED = "__unlabelled__"


class FolderSource(FileSource):
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
        super().__init__(root, rel, identity_array(ids), output_size, landmarks=lm, strict=strict, name=f"Folder({root})")
