"""CelebA format: real subset, identity / landmark layouts, missing files, corrupt images, bad landmarks."""

import logging
import os

import numpy as np
import pytest

from jaxforget.data.align import similarity_transform, template_for
from jaxforget.data.formats.celeba import CelebASource
from jaxforget.data.source import CorruptImageError, DataError, EmptyDatasetError, LandmarkError, MissingFileError
from tests.data_fixtures import check_record, encode, random_image


def _fake_celeba(root, n=6, landmarks="txt", lm_override=None):
    img_dir = root / "img_align_celeba"
    img_dir.mkdir(parents=True)
    names = [f"{k + 1:06d}.jpg" for k in range(n)]
    for k, name in enumerate(names):
        (img_dir / name).write_bytes(encode(random_image(k)))
    (root / "identity_CelebA.txt").write_text("".join(f"{nm} {100 + k % 3}\n" for k, nm in enumerate(names)))
    base = np.array([34.5, 54.5, 53.0, 56.5, 38.5, 71.0, 36.5, 76.0, 54.0, 77.0])
    rows = {nm: base + k * 0.5 for k, nm in enumerate(names)}
    if lm_override:
        rows.update(lm_override)
    if landmarks == "txt":
        lines = [str(n), "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"]
        lines += [nm + " " + " ".join(f"{v:.1f}" for v in rows[nm]) for nm in names]
        (root / "list_landmarks_align_celeba.txt").write_text("\n".join(lines) + "\n")
    elif landmarks == "csv":
        lines = ["image_id,lefteye_x,lefteye_y,righteye_x,righteye_y,nose_x,nose_y,leftmouth_x,leftmouth_y,rightmouth_x,rightmouth_y"]
        lines += [nm + "," + ",".join(f"{v:.1f}" for v in rows[nm]) for nm in names]
        (root / "list_landmarks_align_celeba.csv").write_text("\n".join(lines) + "\n")
    return names


# ---------------------------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------------------------


@pytest.mark.real_data
def test_real_celeba_subset_metadata_and_alignment(shared):
    root = shared("data", "celeba_subset")
    src = CelebASource(str(root), output_size=(112, 96))
    assert len(src) == 10000 and len(src.image_ids) == 10000 and len(src.identities) == 10000
    assert src.landmarks.shape == (10000, 5, 2) and np.isfinite(src.landmarks).all()
    assert src.identities.dtype == np.int64 and len(src.unique_identities()) == 5429
    for i in (0, 4321):
        np.testing.assert_allclose(
            src.alignment_matrices[i], similarity_transform(src.landmarks[i], template_for((112, 96))), atol=1e-9
        )
    for i in (0, 1234, 9999):
        rec = src[i]
        check_record(rec, (112, 96))
        assert rec["valid"] and rec["identity"] == int(src.identities[i])
    # Without landmarks: the fixed crop gives the same output size.
    crop = CelebASource(str(root), output_size=(112, 96), landmarks=None, limit=20)
    assert crop.landmarks is None and len(crop) == 20
    check_record(crop[3], (112, 96))
    # Aligned and cropped versions of one image are similar faces, not identical pixels.
    a, b = src[3]["image"].astype(float), crop[3]["image"].astype(float)
    assert 0 < np.abs(a - b).mean() < 60


# ---------------------------------------------------------------------------------------------
# Synthetic trees
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["txt", "csv", None])
def test_celeba_layouts(tmp_path, layout):
    names = _fake_celeba(tmp_path, landmarks=layout)
    src = CelebASource(str(tmp_path), output_size=(56, 48))
    assert src.image_ids == names and list(src.identities) == [100, 101, 102, 100, 101, 102]
    assert (src.landmarks is None) == (layout is None)
    check_record(src[2], (56, 48))


def test_celeba_missing_file_error_and_skip(tmp_path):
    names = _fake_celeba(tmp_path)
    os.remove(tmp_path / "img_align_celeba" / names[2])
    with pytest.raises(MissingFileError, match=rf"{names[2]}.*img_align_celeba"):
        CelebASource(str(tmp_path))
    src = CelebASource(str(tmp_path), missing="skip")
    assert len(src) == 5 and names[2] not in src.image_ids
    assert src.skipped_missing == [names[2]] and "1 missing" in src.failure_report()


def test_corrupt_image_skipped_counted_or_strict(tmp_path, caplog):
    names = _fake_celeba(tmp_path)
    (tmp_path / "img_align_celeba" / names[1]).write_bytes(b"not a jpeg at all")
    src = CelebASource(str(tmp_path))
    with caplog.at_level(logging.WARNING):
        rec = src[1]
    assert rec["valid"] is False and rec["image"].shape == (112, 112, 3) and not rec["image"].any()
    assert src[0]["valid"] is True
    assert len(src.failures) == 1 and names[1] in src.failure_report()
    strict = CelebASource(str(tmp_path), strict=True)
    with pytest.raises(CorruptImageError, match=names[1]):
        strict[1]
    # verify() drops it up front.
    checked = CelebASource(str(tmp_path)).verify()
    assert len(checked) == 5 and names[1] not in checked.image_ids


def test_landmarks_outside_image_error(tmp_path):
    names = _fake_celeba(tmp_path, lm_override={"000004.jpg": np.array([34.5, 54.5, 53.0, 56.5, 38.5, 71.0, 36.5, 76.0, 95.0, 77.0])})
    src = CelebASource(str(tmp_path))
    src[0]
    with pytest.raises(LandmarkError, match="000004.jpg"):
        src[3]
    with pytest.raises(LandmarkError, match="000002.jpg"):
        _fake_celeba(tmp_path / "neg", lm_override={"000002.jpg": -np.ones(10)})
        CelebASource(str(tmp_path / "neg"))


def test_celeba_empty_and_missing_roots(tmp_path):
    (tmp_path / "img_align_celeba").mkdir()
    (tmp_path / "identity_CelebA.txt").write_text("")
    with pytest.raises(EmptyDatasetError):
        CelebASource(str(tmp_path))
    with pytest.raises(MissingFileError, match="identity_CelebA.txt"):
        CelebASource(str(tmp_path / "nowhere"))


def test_unreadable_annotation_files_name_the_file(tmp_path):
    """Before (found by tests/test_fuzz_*.py): a non-UTF-8 file escaped as
    UnicodeDecodeError, a one-line landmark file as IndexError, a CSV field over the csv
    module's limit as csv.Error."""
    _fake_celeba(tmp_path / "a")
    (tmp_path / "a" / "identity_CelebA.txt").write_bytes(b"000001.jpg 100\n\x80\n")
    with pytest.raises(DataError, match=r"identity_CelebA.txt: not UTF-8 text \(byte 15"):
        CelebASource(str(tmp_path / "a"))
    (tmp_path / "a" / "identity_CelebA.txt").write_text("000001.jpg 100\n000002.jpg " + "9" * 30 + "\n")
    with pytest.raises(DataError, match=r"identity_CelebA.txt: line 2: identity 9+ is out of the 64-bit range"):
        CelebASource(str(tmp_path / "a"))  # before: OverflowError
    _fake_celeba(tmp_path / "b")
    (tmp_path / "b" / "list_landmarks_align_celeba.txt").write_text("6\n")
    with pytest.raises(LandmarkError, match=r"list_landmarks_align_celeba.txt: expected the image count on line 1"):
        CelebASource(str(tmp_path / "b"))
    _fake_celeba(tmp_path / "c", landmarks="csv")
    (tmp_path / "c" / "list_landmarks_align_celeba.csv").write_text('image_id,"' + "x" * 200_000 + '"\n')
    with pytest.raises(LandmarkError, match=r"list_landmarks_align_celeba.csv: not a CSV file \(field larger than field limit"):
        CelebASource(str(tmp_path / "c"))
