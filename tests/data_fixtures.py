"""Small image fixtures shared by the data tests (``tests/test_data_*.py``)."""

import io

import numpy as np
from PIL import Image


def encode(arr, fmt="JPEG", quality=95):
    """``arr`` (uint8 image) encoded as ``fmt`` bytes."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, quality=quality)
    return buf.getvalue()


def random_image(seed, hw=(109, 89)):
    """A seeded random uint8 RGB image of height/width ``hw``."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, hw + (3,), dtype=np.uint8)


def check_record(rec, size):
    """``rec`` follows the record contract at output size ``size``."""
    assert set(rec) >= {"image", "identity", "image_id"}
    assert rec["image"].shape == size + (3,) and rec["image"].dtype == np.uint8
    assert isinstance(rec["image_id"], str)
