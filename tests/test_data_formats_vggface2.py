"""VGGFace2 format: loose landmarks and boxes from the CSVs."""

import numpy as np
import pytest

from jaxforget.data.formats.vggface2 import VGGFace2Source, read_vggface2_csv
from jaxforget.data.source import DataError
from tests.data_fixtures import check_record, encode, random_image


def test_vggface2_landmarks_and_boxes(tmp_path):
    root = tmp_path / "vgg"
    for ident in ("n000001", "n000002"):
        (root / "test" / ident).mkdir(parents=True)
        for k in range(2):
            (root / "test" / ident / f"000{k}_01.jpg").write_bytes(encode(random_image(k, (120, 100))))
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
        check_record(src[i], (56, 56))


def test_unreadable_csvs_name_the_file(tmp_path):
    """Before (found by tests/test_fuzz_*.py): a non-UTF-8 CSV escaped as
    UnicodeDecodeError, a field over the csv module's limit as csv.Error."""
    path = tmp_path / "loose_landmark_test.csv"
    path.write_bytes(b"NAME_ID,P1X\n\xff,1\n")
    with pytest.raises(DataError, match=r"loose_landmark_test.csv: not UTF-8 text"):
        read_vggface2_csv(str(path), 1)
    path.write_text('NAME_ID,X\nn000001/0001_01,"' + "9" * 200_000 + '"\n')
    with pytest.raises(DataError, match=r"loose_landmark_test.csv: line 2: not a CSV row \(field larger than field limit"):
        read_vggface2_csv(str(path), 1)
