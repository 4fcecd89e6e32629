"""Face datasets, alignment, forget/retain splits, grain pipelines and synthetic identities.

Records: ``{'image': uint8 (H, W, 3), 'identity', 'image_id', 'valid'}``; batches:
``{'image': uint8 (B, H, W, 3), 'label': int32, 'mask': bool, 'index': int32}`` (see
``docs/ARCHITECTURE.md``).
"""

from jaxforget.data.align import align_face, similarity_transform, template_for, warp_affine
from jaxforget.data.pipeline import EvalBatches, PKSampler, eval_dataset, normalize, train_dataset
from jaxforget.data.sources import (
    UNLABELLED,
    ArraySource,
    CelebASource,
    CFPSource,
    CorruptImageError,
    DataError,
    EmptyDatasetError,
    FaceSource,
    FolderSource,
    LandmarkError,
    MissingFileError,
    RecordIOSource,
    SubsetSource,
    VerificationBinSource,
    VGGFace2Source,
    load_verification_bin,
    make_source,
    source_from_config,
)
from jaxforget.data.splits import Split, SplitError, make_split, split_source
from jaxforget.data.synthetic import SyntheticFaces, leave_one_out_map

__all__ = [
    "UNLABELLED", "ArraySource", "CelebASource", "CFPSource", "CorruptImageError", "DataError",
    "EmptyDatasetError", "EvalBatches", "FaceSource", "FolderSource", "LandmarkError",
    "MissingFileError", "PKSampler", "RecordIOSource", "Split", "SplitError", "SubsetSource",
    "SyntheticFaces", "VGGFace2Source", "VerificationBinSource", "align_face", "eval_dataset",
    "leave_one_out_map", "load_verification_bin", "make_source", "make_split", "normalize",
    "similarity_transform", "source_from_config", "split_source", "template_for", "train_dataset", "warp_affine",
]
