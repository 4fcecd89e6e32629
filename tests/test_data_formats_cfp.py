"""CFP format: frontal / profile poses, five-point landmarks, the verification folds."""

import shutil

import numpy as np
import pytest
from PIL import Image

from jaxforget.data import align
from jaxforget.data.formats.cfp import CFPSource, read_cfp_pairs
from jaxforget.data.source import DataError
from tests.data_fixtures import cfp_tree, check_record, encode, random_image


def test_cfp_source(tmp_path):
    for ident in ("001", "002"):
        for pose, n in (("frontal", 3), ("profile", 2)):
            d = tmp_path / "Data" / "Images" / ident / pose
            d.mkdir(parents=True)
            for k in range(n):
                (d / f"{k + 1:02d}.jpg").write_bytes(encode(random_image(k, (60, 50))))
    src = CFPSource(str(tmp_path), output_size=(32, 32))
    assert len(src) == 10 and list(src.poses).count("profile") == 4
    assert src.image_ids[3] == "001/profile/01"
    prof = CFPSource(str(tmp_path), output_size=(32, 32), poses=("profile",))
    assert len(prof) == 4 and set(prof.identities) == {"001", "002"}
    check_record(prof[0], (32, 32))


def test_landmarks_align_and_images_without_them_are_resized_whole(tmp_path):
    images, _, _ = cfp_tree(tmp_path)
    src = CFPSource(str(tmp_path), output_size=(56, 48))
    assert src.num_without_landmarks == 1 and src.landmark_path.endswith("landmarks_5pt.txt")
    row = src.image_ids.index("001/frontal/02")
    expected, _ = align.align_face(images["001/frontal/02"], src.landmarks[row], (56, 48))
    np.testing.assert_array_equal(src[row]["image"], expected)
    bare = src.image_ids.index("002/profile/01")
    assert np.isnan(src.landmarks[bare]).all()
    whole = np.asarray(Image.fromarray(images["002/profile/01"]).resize((48, 56), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(src[bare]["image"], whole)
    check_record(src[src.image_ids.index("001/frontal/01")], (56, 48))  # points off the image: fine
    plain = CFPSource(str(tmp_path), output_size=(56, 48), landmarks=None)
    assert plain.landmarks is None and plain.num_without_landmarks == len(plain)


def test_pairs_follow_the_folds_same_before_different(tmp_path):
    _, frontal, profile = cfp_tree(tmp_path)
    pairs = read_cfp_pairs(str(tmp_path), "FP")
    assert list(zip(pairs.first, pairs.second)) == [
        (frontal[0], profile[0]), (frontal[1], profile[0]), (frontal[0], profile[1]),
        (frontal[3], profile[1]), (frontal[2], profile[0]), (frontal[1], profile[1])]
    assert pairs.issame.tolist() == [True, True, False, True, False, False]
    assert pairs.folds.tolist() == [0, 0, 0, 1, 1, 1]
    (tmp_path / "Protocol" / "Split" / "FP" / "02" / "diff.txt").write_text("3,1\n9,2\n")
    with pytest.raises(DataError, match=r"02/diff.txt: line 2 should be 'i,j'"):
        read_cfp_pairs(str(tmp_path), "FP")
    assert read_cfp_pairs(str(tmp_path), "FF").second == (frontal[1], frontal[2], frontal[3], frontal[3])
    shutil.rmtree(tmp_path / "Protocol" / "Split" / "FF")
    with pytest.raises(FileNotFoundError, match="Split/FF"):
        read_cfp_pairs(str(tmp_path), "FF")


@pytest.mark.real_data
@pytest.mark.parametrize("protocol", ["FP", "FF"])
def test_shared_cfp_folds(shared, protocol):
    root = shared("data", "cfp")
    pairs = read_cfp_pairs(str(root), protocol)
    split = root / "Protocol" / "Split" / protocol
    folds = sorted(p.name for p in split.iterdir())
    sizes = [sum(1 for f in ("same", "diff") for ln in (split / d / f"{f}.txt").read_text().splitlines()
                 if ln.strip()) for d in folds]
    assert len(folds) == 10 and np.bincount(pairs.folds).tolist() == sizes
    assert len(pairs) == sum(sizes) and pairs.issame.sum() * 2 == len(pairs)  # 350 + 350 per fold
    for k in range(10):
        fold = pairs.issame[pairs.folds == k]
        assert fold[: len(fold) // 2].all() and not fold[len(fold) // 2 :].any()
    second = "profile" if protocol == "FP" else "frontal"
    assert all("/frontal/" in a for a in pairs.first) and all(f"/{second}/" in b for b in pairs.second)
    same = pairs.issame
    assert all(a[:3] == b[:3] for a, b in zip(np.asarray(pairs.first)[same], np.asarray(pairs.second)[same]))
    src = CFPSource(str(root), output_size=(112, 96))
    assert set(pairs.first) | set(pairs.second) <= set(src.image_ids)
    listed = (root / "landmarks_5pt.txt").read_text().splitlines()[1:]
    assert src.num_without_landmarks == len(src) - len(listed)
    # The SCRFD table has every image (7,000 rows); the older dlib table missed only profiles.
    assert set(src.poses[np.isnan(src.landmarks[:, 0, 0])]) <= {"profile"}
