"""Sources: record contract, real CelebA / ORL / lfw_small.bin, .rec/.idx round trip, bad input."""

import io
import logging
import os
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from jaxforget.data import recordio
from jaxforget.data.sources import (
    UNLABELLED,
    CelebASource,
    CFPSource,
    CorruptImageError,
    DataError,
    EmptyDatasetError,
    FolderSource,
    LandmarkError,
    MissingFileError,
    RecordIOSource,
    VerificationBinSource,
    VGGFace2Source,
    load_verification_bin,
    make_source,
)


def _jpeg(arr, fmt="JPEG", quality=95):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, quality=quality)
    return buf.getvalue()


def _img(seed, hw=(109, 89)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, hw + (3,), dtype=np.uint8)


def _check_record(rec, size):
    assert set(rec) >= {"image", "identity", "image_id"}
    assert rec["image"].shape == size + (3,) and rec["image"].dtype == np.uint8
    assert isinstance(rec["image_id"], str)


def _fake_celeba(root, n=6, landmarks="txt", lm_override=None):
    img_dir = root / "img_align_celeba"
    img_dir.mkdir(parents=True)
    names = [f"{k + 1:06d}.jpg" for k in range(n)]
    for k, name in enumerate(names):
        (img_dir / name).write_bytes(_jpeg(_img(k)))
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
    from jaxforget.data.align import similarity_transform, template_for

    for i in (0, 4321):
        np.testing.assert_allclose(
            src.alignment_matrices[i], similarity_transform(src.landmarks[i], template_for((112, 96))), atol=1e-9
        )
    for i in (0, 1234, 9999):
        rec = src[i]
        _check_record(rec, (112, 96))
        assert rec["valid"] and rec["identity"] == int(src.identities[i])
    # Without landmarks: the fixed crop gives the same output size.
    crop = CelebASource(str(root), output_size=(112, 96), landmarks=None, limit=20)
    assert crop.landmarks is None and len(crop) == 20
    _check_record(crop[3], (112, 96))
    # Aligned and cropped versions of one image are similar faces, not identical pixels.
    a, b = src[3]["image"].astype(float), crop[3]["image"].astype(float)
    assert 0 < np.abs(a - b).mean() < 60


@pytest.mark.real_data
def test_real_orl_folder_source(shared):
    src = FolderSource(str(shared("data", "orl_faces")), output_size=(112, 96))
    assert len(src) == 400 and len(src.unique_identities()) == 40
    counts = np.unique(src.identities, return_counts=True)[1]
    assert (counts == 10).all()
    rec = src[0]
    _check_record(rec, (112, 96))
    img = rec["image"].astype(int)
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()  # grey -> RGB


@pytest.mark.real_data
def test_real_lfw_small_bin(shared):
    src = VerificationBinSource(str(shared("data", "lfw_small.bin")), output_size=(112, 112))
    assert len(src) == 20 and src.pairs.shape == (10, 2) and src.issame.shape == (10,)
    assert src.issame.dtype == bool
    np.testing.assert_array_equal(src.pairs[:, 1] - src.pairs[:, 0], 1)
    full = src[0]["image"]
    _check_record(src[0], (112, 112))
    narrow = VerificationBinSource(str(shared("data", "lfw_small.bin")), output_size=(112, 96))[0]["image"]
    np.testing.assert_array_equal(narrow, full[:, 8:104])  # the x - 8 template crop


# ---------------------------------------------------------------------------------------------
# Synthetic trees
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["txt", "csv", None])
def test_celeba_layouts(tmp_path, layout):
    names = _fake_celeba(tmp_path, landmarks=layout)
    src = CelebASource(str(tmp_path), output_size=(56, 48))
    assert src.image_ids == names and list(src.identities) == [100, 101, 102, 100, 101, 102]
    assert (src.landmarks is None) == (layout is None)
    _check_record(src[2], (56, 48))


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


def test_empty_and_missing_roots(tmp_path):
    (tmp_path / "img_align_celeba").mkdir()
    (tmp_path / "identity_CelebA.txt").write_text("")
    with pytest.raises(EmptyDatasetError):
        CelebASource(str(tmp_path))
    with pytest.raises(MissingFileError, match="identity_CelebA.txt"):
        CelebASource(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyDatasetError, match="empty"):
        FolderSource(str(tmp_path / "empty"))


def test_folder_source_labelled_and_unlabelled(tmp_path):
    for ident in ("bob", "alice"):
        (tmp_path / "ids" / ident).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(_img(k, (40, 30))[..., 0]).save(tmp_path / "ids" / ident / f"{k}.png")
    src = FolderSource(str(tmp_path / "ids"), output_size=(24, 20))
    assert src.image_ids[0] == "alice/0.png" and list(src.identities) == ["alice"] * 3 + ["bob"] * 3
    _check_record(src[4], (24, 20))
    flat = tmp_path / "distractors" / "frames"
    flat.mkdir(parents=True)
    for k in range(4):
        (flat / f"{k}.jpg").write_bytes(_jpeg(_img(k, (50, 40))))
    d = FolderSource(str(tmp_path / "distractors"), output_size=(24, 20), unlabelled=True)
    assert len(d) == 4 and set(d.identities) == {UNLABELLED}
    with pytest.raises(EmptyDatasetError, match="unlabelled=True"):
        FolderSource(str(tmp_path / "distractors" / "frames"))


def test_vggface2_landmarks_and_boxes(tmp_path):
    root = tmp_path / "vgg"
    for ident in ("n000001", "n000002"):
        (root / "test" / ident).mkdir(parents=True)
        for k in range(2):
            (root / "test" / ident / f"000{k}_01.jpg").write_bytes(_jpeg(_img(k, (120, 100))))
    (root / "bb_landmark").mkdir()
    pts = "40,50,70,50,55,65,45,85,65,85"
    (root / "bb_landmark" / "loose_landmark_test.csv").write_text(
        "NAME_ID,P1X,P1Y,P2X,P2Y,P3X,P3Y,P4X,P4Y,P5X,P5Y\n" + f"n000001/0000_01,{pts}\n"
    )
    (root / "bb_landmark" / "loose_bb_test.csv").write_text("NAME_ID,X,Y,W,H\nn000002/0001_01,20,20,60,70\n")
    src = VGGFace2Source(str(root), "test", output_size=(56, 56))
    assert src.image_ids == ["n000001/0000_01", "n000001/0001_01", "n000002/0000_01", "n000002/0001_01"]
    assert np.isfinite(src.landmarks[0]).all() and not np.isfinite(src.landmarks[1]).any()
    assert np.isfinite(src.boxes[3]).all()
    for i in range(4):
        _check_record(src[i], (56, 56))


def test_cfp_source(tmp_path):
    for ident in ("001", "002"):
        for pose, n in (("frontal", 3), ("profile", 2)):
            d = tmp_path / "Data" / "Images" / ident / pose
            d.mkdir(parents=True)
            for k in range(n):
                (d / f"{k + 1:02d}.jpg").write_bytes(_jpeg(_img(k, (60, 50))))
    src = CFPSource(str(tmp_path), output_size=(32, 32))
    assert len(src) == 10 and list(src.poses).count("profile") == 4
    assert src.image_ids[3] == "001/profile/01"
    prof = CFPSource(str(tmp_path), output_size=(32, 32), poses=("profile",))
    assert len(prof) == 4 and set(prof.identities) == {"001", "002"}
    _check_record(prof[0], (32, 32))


# ---------------------------------------------------------------------------------------------
# Packed formats
# ---------------------------------------------------------------------------------------------


def test_verification_bin_round_trip_and_restricted_unpickler(tmp_path):
    imgs = [_img(k, (112, 112)) for k in range(4)]
    bins = [np.frombuffer(_jpeg(im, "PNG"), np.uint8) for im in imgs]  # lossless, as uint8 arrays
    path = tmp_path / "mini.bin"
    path.write_bytes(pickle.dumps((bins, [True, False]), protocol=2))
    src = VerificationBinSource(str(path), output_size=(112, 112))
    assert len(src) == 4 and src.issame.tolist() == [True, False]
    for k in range(4):
        np.testing.assert_array_equal(src[k]["image"], imgs[k])

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad = tmp_path / "evil.bin"
    bad.write_bytes(pickle.dumps(([Evil()], [True])))
    with pytest.raises(DataError, match="refusing"):
        load_verification_bin(str(bad))
    odd = tmp_path / "odd.bin"
    odd.write_bytes(pickle.dumps(([b"a", b"b", b"c"], [True])))
    with pytest.raises(DataError, match="3 images for 1 pairs"):
        load_verification_bin(str(odd))


def test_recordio_round_trip_exact(tmp_path):
    """An InsightFace-style pack written per FORMATS.md reads back exactly (headers, labels, bytes)."""
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (112, 112, 3), dtype=np.uint8) for _ in range(5)]
    labels = [3, 3, 7, 7, 9]
    payload_imgs = [_jpeg(im, "PNG") for im in imgs]
    # Force one payload to contain the magic word at an aligned offset (split into parts).
    magic = struct.pack("<I", recordio.MAGIC)
    tricky = b"\x00" * 8 + magic + b"tail-bytes"
    records = [(0, recordio.pack_payload([6.0, 9.0], b""))]
    records += [(k + 1, recordio.pack_payload(float(labels[k]), payload_imgs[k], record_id=k + 1)) for k in range(5)]
    records += [(6, recordio.pack_payload([1.0, 3.0], b"")), (7, recordio.pack_payload(0.0, tricky))]
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    recordio.write_recordio(rec, idx, records)

    # Byte layout of the first record: magic, length word, 24-byte header + 2 labels, padding.
    raw = rec.read_bytes()
    assert struct.unpack_from("<II", raw, 0) == (recordio.MAGIC, 24 + 8)
    reader = recordio.RecordIOReader(rec, idx)
    assert reader.read_key(7) == recordio.pack_payload(0.0, tricky)  # split record rejoined
    for key, payload in records:
        assert reader.read_key(key) == payload
    lab, data, rid, _ = recordio.unpack_payload(reader.read_key(2))
    assert lab == 3.0 and rid == 2 and data == payload_imgs[1]

    src = RecordIOSource(str(rec), str(idx), output_size=(112, 112))
    assert len(src) == 5 and src.identities.tolist() == labels
    for k in range(5):
        np.testing.assert_array_equal(src[k]["image"], imgs[k])
    assert make_source("recordio", str(rec), output_size=(112, 96))[0]["image"].shape == (112, 96, 3)

    idx.write_text("0\t4\n")
    with pytest.raises(recordio.RecordIOError, match="bad magic"):
        recordio.RecordIOReader(rec, idx).read_key(0)
