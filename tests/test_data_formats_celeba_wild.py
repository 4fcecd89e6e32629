"""Aligned face trees (CelebA-wild's aligned_112/<identity>/<image> with identities.txt)."""

import numpy as np
import pytest
from PIL import Image

from jaxforget.data.formats.celeba_wild import CelebAWildSource
from jaxforget.data.source import MissingFileError
from tests.data_fixtures import check_record, encode, random_image


def _tree(tmp_path, listed=True):
    faces = {}
    for ident, n in (("7201", 3), ("7202", 2)):
        d = tmp_path / "aligned_112" / ident
        d.mkdir(parents=True)
        for k in range(n):
            img = random_image(10 * int(ident) + k, (112, 112))
            (d / f"{k:06d}.png").write_bytes(encode(img, "PNG"))
            faces[f"{ident}/{k:06d}.png"] = img
    if listed:
        lines = ["image identity"] + [f"{r.split('/')[1]} {r.split('/')[0]}" for r in sorted(faces)][::-1]
        (tmp_path / "identities.txt").write_text("\n".join(lines) + "\n")
    return faces


@pytest.mark.parametrize("listed", [True, False])
def test_the_crop_follows_the_model_input(tmp_path, listed):
    faces = _tree(tmp_path, listed)
    narrow = CelebAWildSource(str(tmp_path), (112, 96))
    assert narrow.image_ids == sorted(faces)  # sorted whatever the order of identities.txt
    assert narrow.identities.tolist() == [7201] * 3 + [7202] * 2  # CelebA numbers stay ints
    for i, rid in enumerate(narrow.image_ids):
        check_record(narrow[i], (112, 96))
        np.testing.assert_array_equal(narrow[i]["image"], faces[rid][:, 8:104])  # central columns
    square = CelebAWildSource(str(tmp_path / "aligned_112"), (112, 112))  # root = the tree itself
    np.testing.assert_array_equal(square[0]["image"], faces[square.image_ids[0]])
    small = CelebAWildSource(str(tmp_path), (56, 48))[0]["image"].astype(float)
    central = np.asarray(Image.fromarray(faces[narrow.image_ids[0]][:, 8:104]).resize((48, 56)), float)
    whole = np.asarray(Image.fromarray(faces[narrow.image_ids[0]]).resize((48, 56)), float)
    assert np.abs(small - central).mean() < np.abs(small - whole).mean()


def test_a_listed_face_missing_from_the_tree_is_named(tmp_path):
    _tree(tmp_path)
    (tmp_path / "aligned_112" / "7202" / "000001.png").unlink()
    with pytest.raises(MissingFileError, match=r"names 000001.png of identity 7202"):
        CelebAWildSource(str(tmp_path))
    with pytest.raises(MissingFileError, match="aligned face folder not found"):
        CelebAWildSource(str(tmp_path / "nowhere"))


@pytest.mark.real_data
def test_shared_celeba_wild(shared):
    root = shared("data", "celeba_wild")
    src = CelebAWildSource(str(root), (112, 96))
    lines = (root / "identities.txt").read_text().split("\n")[1:]
    listed = sorted(f"{ident}/{image}" for image, ident in (ln.split() for ln in lines if ln.strip()))
    assert src.image_ids == listed
    ids, counts = np.unique(src.identities, return_counts=True)
    assert ids.min() >= 7201 and ids.max() <= 7399 and src.identities.dtype == np.int64
    assert (counts >= 20).sum() == 142  # the README's count of forget candidates
    face = np.asarray(Image.open(root / "aligned_112" / src.image_ids[5]).convert("RGB"))
    np.testing.assert_array_equal(src[5]["image"], face[:, 8:104])
