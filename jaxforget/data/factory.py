"""Build a face source by name: the one place that knows every format and the synthetic world.

:func:`source_from_config` turns a ``config.data`` block into a source (used by the runner);
:func:`make_source` builds any format by its short name (``celeba``, ``celeba_wild``, ``folder``, ``vggface2``,
``cfp``, ``bin``, ``recordio``, ``synthetic``). :data:`DATA_HELP` lists the data names a config may
give, with where each data set comes from (shown when a path is missing).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxforget.data.formats.celeba import CelebASource
from jaxforget.data.formats.celeba_wild import CelebAWildSource
from jaxforget.data.formats.cfp import CFPSource
from jaxforget.data.formats.folder import FolderSource
from jaxforget.data.formats.recordio import RecordIOSource
from jaxforget.data.formats.verification_bin import VerificationBinSource
from jaxforget.data.formats.vggface2 import VGGFace2Source
from jaxforget.data.source import FaceSource, MissingFileError
from jaxforget.data.synthetic import SyntheticFaces

#: The data names ``config.data.name`` accepts, each with where its data set comes from (used in
#: the error raised when a path is missing).
DATA_HELP = {
    "celeba": "CelebA 'Align&Cropped' images (img_align_celeba/) with identity_CelebA.txt and"
    " list_landmarks_align_celeba.txt, from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html",
    "vggface2": "VGGFace2 (train/ and test/ identity folders, bb_landmark/*.csv)",
    "celeba_wild": "faces aligned to the 112x112 template: aligned_112/<identity>/<image>.jpg and"
    " identities.txt (../shared/data/celeba_wild's layout)",
    "orl": "the ORL / AT&T faces (s1..s40 folders of 10 PGM images each)",
    "folder": "any folder holding one sub-folder of images per identity",
    "recordio": "an InsightFace training pack (MS1MV2, Glint360K, WebFace): the .rec file with its"
    " .idx beside it, or the folder holding train.rec and train.idx",
    "synthetic": "nothing: procedurally generated identities",
}

SOURCES: dict[str, Callable[..., FaceSource]] = {
    "celeba": CelebASource,
    "celeba_wild": CelebAWildSource,
    "folder": FolderSource,
    "vggface2": VGGFace2Source,
    "cfp": CFPSource,
    "bin": VerificationBinSource,
    "recordio": RecordIOSource,
}


def make_source(kind: str, *args, **kwargs) -> FaceSource:
    """Build a source by name: ``celeba``, ``celeba_wild``, ``folder``, ``vggface2``, ``cfp``, ``bin``, ``recordio``,
    ``synthetic``."""
    if kind == "synthetic":
        return SyntheticFaces(*args, **kwargs)
    try:
        return SOURCES[kind](*args, **kwargs)
    except KeyError:
        raise ValueError(f"unknown source kind {kind!r}; choose one of {sorted(SOURCES) + ['synthetic']}") from None


def source_from_config(data_cfg: Any, output_size: Sequence[int], seed: int = 0) -> FaceSource:
    """Build the source a ``config.data`` block describes (see ``jaxforget/config.py``).

    Fields used: ``name`` (a key of :data:`DATA_HELP`), ``root``, ``annotations`` (CelebA identity
    file), ``landmarks`` ('' = look under root), ``align`` (False = no landmarks: CelebA fixed
    crop), ``num_identities`` / ``images_per_identity`` (synthetic, drawn with ``seed``),
    ``max_images`` (0 = all, else the first N records), and an optional ``split`` (VGGFace2
    'train' | 'test', default 'test').
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
            what = DATA_HELP.get(name, "")
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
        elif name == "celeba_wild":
            src = CelebAWildSource(root, output_size)
        elif name in ("orl", "folder"):
            src = FolderSource(root, output_size)
        elif name == "recordio":
            rec = os.path.join(root, "train.rec") if os.path.isdir(root) else root
            idx = os.path.splitext(rec)[0] + ".idx"
            for path in (rec, idx):
                if not os.path.isfile(path):
                    raise MissingFileError(f"data.root={root!r}: no {path}; a RecordIO pack is a "
                                           ".rec file with its .idx beside it")
            src = RecordIOSource(rec, idx, output_size)
        else:
            names = list(DATA_HELP)
            raise ValueError(f"unknown data.name {name!r}; choose {', '.join(names[:-1])} or {names[-1]}")
    if max_images and max_images < len(src):
        src = src.subset(np.arange(max_images))
    return src
