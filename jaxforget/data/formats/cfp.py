"""CFP (Celebrities in Frontal-Profile): ``Data/Images/<id>/{frontal,profile}/NN.jpg``."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from jaxforget.data.formats.files import IMAGE_EXTENSIONS, FileSource
from jaxforget.data.source import EmptyDatasetError, MissingFileError, identity_array


class CFPSource(FileSource):
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
        super().__init__(img_root, rel, identity_array(ids), output_size, image_ids=names, strict=strict, name=f"CFP({root})")
