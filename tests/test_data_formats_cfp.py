"""CFP format: frontal / profile poses."""

from jaxforget.data.formats.cfp import CFPSource
from tests.data_fixtures import check_record, encode, random_image


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
