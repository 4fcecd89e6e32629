"""Face datasets, alignment, forget/retain splits, grain pipelines and synthetic identities.

Records: ``{'image': uint8 (H, W, 3), 'identity', 'image_id', 'valid'}``; batches:
``{'image': uint8 (B, H, W, 3), 'label': int32, 'mask': bool, 'index': int32}`` (see
``docs/ARCHITECTURE.md``).

Modules: ``source`` (the interface and errors), ``formats/`` (one module per on-disk format),
``factory`` (build a source by name or from ``config.data``), ``synthetic``, ``align``, ``splits``,
``pipeline``.
"""

from jaxforget.data.align import align_face, similarity_transform, template_for, warp_affine
from jaxforget.data.factory import DATA_HELP, make_source, source_from_config
from jaxforget.data.formats.celeba import CelebASource
from jaxforget.data.formats.celeba_wild import CelebAWildSource
from jaxforget.data.formats.cfp import CFPSource
from jaxforget.data.formats.folder import UNLABELLED, FolderSource
from jaxforget.data.formats.recordio import RecordIOSource
from jaxforget.data.formats.verification_bin import VerificationBinSource, load_verification_bin
from jaxforget.data.formats.vggface2 import VGGFace2Source
from jaxforget.data.pipeline import EvalBatches, PKSampler, eval_dataset, train_dataset
from jaxforget.data.source import (
    ArraySource,
    CorruptImageError,
    DataError,
    EmptyDatasetError,
    FaceSource,
    LandmarkError,
    MissingFileError,
    SubsetSource,
)
from jaxforget.data.splits import Split, SplitError, make_split, split_source
from jaxforget.data.synthetic import SyntheticFaces

__all__ = [
    "DATA_HELP", "UNLABELLED", "ArraySource", "CelebASource", "CelebAWildSource", "CFPSource", "CorruptImageError",
    "DataError", "EmptyDatasetError", "EvalBatches", "FaceSource", "FolderSource", "LandmarkError",
    "MissingFileError", "PKSampler", "RecordIOSource", "Split", "SplitError", "SubsetSource",
    "SyntheticFaces", "VGGFace2Source", "VerificationBinSource", "align_face", "eval_dataset",
    "load_verification_bin", "make_source", "make_split", "similarity_transform",
    "source_from_config", "split_source", "template_for", "train_dataset", "warp_affine",
]
