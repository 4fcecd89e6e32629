"""Folder format: real ORL, labelled and unlabelled trees, empty roots."""

import numpy as np
import pytest
from PIL import Image

from jaxforget.data.formats.folder import UNLABELLED, FolderSource
from jaxforget.data.source import EmptyDatasetError
from tests.data_fixtures import check_record, encode, random_image


@pytest.mark.real_data
def test_real_orl_folder_source(shared):
    src = FolderSource(str(shared("data", "orl_faces")), output_size=(112, 96))
    assert len(src) == 400 and len(src.unique_identities()) == 40
    counts = np.unique(src.identities, return_counts=True)[1]
    assert (counts == 10).all()
    rec = src[0]
    check_record(rec, (112, 96))
    img = rec["image"].astype(int)
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()  # grey -> RGB


def test_folder_source_labelled_and_unlabelled(tmp_path):
    for ident in ("bob", "alice"):
        (tmp_path / "ids" / ident).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(random_image(k, (40, 30))[..., 0]).save(tmp_path / "ids" / ident / f"{k}.png")
    src = FolderSource(str(tmp_path / "ids"), output_size=(24, 20))
    assert src.image_ids[0] == "alice/0.png" and list(src.identities) == ["alice"] * 3 + ["bob"] * 3
    check_record(src[4], (24, 20))
    flat = tmp_path / "distractors" / "frames"
    flat.mkdir(parents=True)
    for k in range(4):
        (flat / f"{k}.jpg").write_bytes(encode(random_image(k, (50, 40))))
    d = FolderSource(str(tmp_path / "distractors"), output_size=(24, 20), unlabelled=True)
    assert len(d) == 4 and set(d.identities) == {UNLABELLED}
    with pytest.raises(EmptyDatasetError, match="unlabelled=True"):
        FolderSource(str(tmp_path / "distractors" / "frames"))


def test_folder_empty_root(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyDatasetError, match="empty"):
        FolderSource(str(tmp_path / "empty"))
