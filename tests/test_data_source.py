"""The source interface: record contract, subsets, in-memory arrays, failure accounting, checks."""

import io
import logging
import pickle

import numpy as np
import pytest
from PIL import Image

from jaxforget.data.align import ARCFACE_TEMPLATE_112, template_for
from jaxforget.data.source import (
    ArraySource,
    CorruptImageError,
    EmptyDatasetError,
    FaceSource,
    MAX_IMAGE_PIXELS,
    LandmarkError,
    SubsetSource,
    as_size,
    identity_array,
)
from tests.data_fixtures import check_record, png_header, random_image


class _Flaky(FaceSource):
    """Record 1 cannot be decoded; the others are random images."""

    def __init__(self, strict=False):
        super().__init__([f"r{k}" for k in range(4)], [7, 7, 8, 8], (20, 16), strict=strict, name="Flaky")

    def _open(self, i):
        if i == 1:
            raise OSError("broken bytes")
        return Image.fromarray(random_image(i, (30, 24)))


def test_as_size_and_identity_array():
    assert as_size([112, 96]) == (112, 96)
    with pytest.raises(ValueError, match="height, width"):
        as_size((112,))
    with pytest.raises(ValueError, match="positive"):
        as_size((0, 96))
    ints = identity_array([3, np.int32(5)])
    assert ints.dtype == np.int64 and ints.tolist() == [3, 5]
    strs = identity_array(["a", 2, True])
    assert strs.dtype.kind == "U" and strs.tolist() == ["a", "2", "True"]


def test_array_source_contract_greyscale_and_resize():
    imgs = np.stack([random_image(k, (8, 6)) for k in range(3)])
    src = ArraySource(imgs, ["a", "b", "a"])
    assert len(src) == 3 and src.image_ids == ["img000000", "img000001", "img000002"]
    rec = src[-1]
    np.testing.assert_array_equal(rec["image"], imgs[2])
    assert rec["identity"] == "a" and rec["valid"] and src.unique_identities() == ["a", "b"]
    grey = ArraySource(imgs[..., 0], [0, 1, 2], output_size=(16, 12))
    check_record(grey[1], (16, 12))
    g = grey[1]["image"].astype(int)
    assert (g[..., 0] == g[..., 2]).all()
    with pytest.raises(ValueError, match="uint8"):
        ArraySource(imgs.astype(np.float32), [0, 1, 2])
    with pytest.raises(IndexError, match="out of range"):
        src[3]
    with pytest.raises(EmptyDatasetError):
        ArraySource(imgs[:0], [])


def test_subset_slices_metadata_and_reads_the_parent():
    imgs = np.stack([random_image(k, (8, 6)) for k in range(5)])
    src = ArraySource(imgs, [0, 1, 2, 3, 4])
    sub = src.subset([4, 1])
    assert isinstance(sub, SubsetSource) and len(sub) == 2
    assert sub.image_ids == ["img000004", "img000001"] and sub.identities.tolist() == [4, 1]
    np.testing.assert_array_equal(sub[0]["image"], imgs[4])
    np.testing.assert_array_equal(sub[-1]["image"], imgs[1])
    with pytest.raises(IndexError, match=r"\[0, 5\)"):
        src.subset([5])
    with pytest.raises(EmptyDatasetError, match="subset"):
        src.subset([])


def test_undecodable_record_counted_masked_or_strict(caplog):
    src = _Flaky()
    with caplog.at_level(logging.WARNING):
        rec = src[1]
    assert rec["valid"] is False and rec["image"].shape == (20, 16, 3) and not rec["image"].any()
    assert "cannot decode r1" in caplog.text and "r1" in src.failure_report()
    sub = src.subset([1, 2])  # a view shares its parent's failure accounting
    assert sub[1]["valid"] and sub.failure_report() == src.failure_report()
    with pytest.raises(CorruptImageError, match="broken bytes"):
        _Flaky(strict=True)[1]
    back = pickle.loads(pickle.dumps(src))  # picklable for grain workers (the lock is rebuilt)
    check_record(back[0], (20, 16))


def test_landmark_shape_and_alignment_matrices():
    imgs = np.stack([random_image(k, (112, 112)) for k in range(2)])
    with pytest.raises(LandmarkError, match="shape"):
        FaceSource(["a", "b"], [0, 1], (112, 96), landmarks=np.zeros((2, 4, 2)))

    class _Aligned(ArraySource):
        def __init__(self):
            FaceSource.__init__(self, ["a", "b"], [0, 1], (112, 96), landmarks=lm)
            self.images = imgs

    lm = np.stack([ARCFACE_TEMPLATE_112, np.full((5, 2), np.nan)])
    src = _Aligned()
    m = src.alignment_matrices
    assert m.shape == (2, 2, 3) and np.isfinite(m[0]).all()
    np.testing.assert_allclose(m[0] @ np.r_[ARCFACE_TEMPLATE_112[0], 1.0], template_for((112, 96))[0], atol=1e-6)
    check_record(src[0], (112, 96))  # aligned by its landmarks
    resized = Image.fromarray(imgs[1]).resize((96, 112), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(src[1]["image"], np.asarray(resized))  # no landmarks: resized whole


class _OneFile(FaceSource):
    """One record decoded from ``data`` (the bytes of an image file)."""

    def __init__(self, data, strict=True):
        self.data = data
        super().__init__(["face.png"], [1], (16, 16), strict=strict, name="OneFile")

    def _open(self, i):
        return Image.open(io.BytesIO(self.data))


def test_images_declaring_too_many_pixels_are_refused_before_decoding():
    """Before (found by tests/test_fuzz_*.py): an image declaring 8500 x 8500 pixels (under
    PIL's own bomb limit) was decoded, allocating 217 MB, whatever the file held."""
    with pytest.raises(CorruptImageError, match=r"cannot decode face.png: the image declares 8500x8500 pixels, over the limit"):
        _OneFile(png_header(8500, 8500))[0]
    record = _OneFile(png_header(8500, 8500), strict=False)[0]
    assert not record["valid"]
    assert 8192 * 8192 == MAX_IMAGE_PIXELS  # a face photo never comes near it
