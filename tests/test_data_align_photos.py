"""Raw photo tree -> crops, landmarks file and report, with a scripted detector (no dlib needed).

The fake detector reads which faces a photo holds from the red value of its top-left block, so every
branch (one face, several faces picked by descriptor or by size, no face, unreadable file, resume,
refusals) is exercised exactly and fast; tests/test_data_detect.py runs dlib on real photos.
"""

import json

import numpy as np
import pytest
from PIL import Image

from jaxforget.data import align as align_lib
from jaxforget.data import align_photos as ap
from jaxforget.data.detect import Face
from jaxforget.data.source import EmptyDatasetError, LandmarkError, MissingFileError


def _face(rng, scale, descriptor):
    """A face whose five points are the 112 template scaled by ``scale`` and moved at random."""
    pts = align_lib.ARCFACE_TEMPLATE_112 * scale + rng.uniform(5, 40, 2)
    box = (pts[:, 0].min() - 10, pts[:, 1].min() - 20, pts[:, 0].max() + 10, pts[:, 1].max() + 10)
    return Face(tuple(float(v) for v in box), pts, "hog", np.asarray(descriptor, np.float64))


class FakeDetector:
    """Faces per photo, looked up by the red value of its top-left block; descriptors are the chips."""

    settings = {"detector": "fake", "detect_size": 700}

    def __init__(self, faces):
        self.faces, self.calls = faces, 0

    def detect(self, photo, chips=False):
        self.calls += 1
        return list(self.faces.get(round(photo.getpixel((4, 4))[0] / 20), []))

    def descriptors(self, faces):
        return np.stack([f.chip for f in faces]) if faces else np.zeros((0, 4))


def _photo(path, key, hw=(200, 180)):
    arr = np.random.default_rng(key).integers(0, 255, hw + (3,), dtype=np.uint8)
    arr[:16, :16] = (20 * key, 128, 128)  # survives JPEG
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture
def scene(tmp_path):
    """Person ``a``: three one-face photos, one two-face photo whose larger face is someone else,
    one faceless photo, one corrupt file; person ``b``: a two-face photo only."""
    rng = np.random.default_rng(0)
    me, other = np.array([1.0, 0, 0, 0]), np.array([0, 1.0, 0, 0])
    faces = {k: [_face(rng, 1.0, me + rng.normal(0, 0.05, 4))] for k in (1, 2, 3)}
    faces[4] = [_face(rng, 1.3, other), _face(rng, 0.9, me)]
    faces[10] = [_face(rng, 1.2, other), _face(rng, 0.8, me)]
    root = tmp_path / "in"
    for k, name in [(1, "a/p1.png"), (2, "a/p2.png"), (3, "a/p3.jpg"), (4, "a/p4.png"), (5, "a/empty.png"), (10, "b/q.png")]:
        _photo(root / name, k)
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "loose.png").write_bytes(b"")  # files directly in the input are ignored
    return root, tmp_path / "out", FakeDetector(faces), faces


def test_statuses_choice_and_outputs(scene):
    root, out, det, faces = scene
    report = ap.align_folder(root, out, det)
    rows = {r["image"]: r for r in report["images"]}
    assert sorted(rows) == ["a/broken.jpg", "a/empty.png", "a/p1.png", "a/p2.png", "a/p3.jpg", "a/p4.png", "b/q.png"]
    assert [rows[f"a/p{k}.{e}"]["status"] for k, e in [(1, "png"), (2, "png"), (3, "jpg")]] == ["found"] * 3
    assert rows["a/empty.png"]["status"] == "none" and rows["a/broken.jpg"]["status"] == "unreadable"
    assert rows["a/broken.jpg"]["error"].startswith("OSError")  # the decoder's error, kept
    # Several faces: the person's face (closest to the mean of a's one-face photos), not the larger.
    assert rows["a/p4.png"]["status"] == "several" and rows["a/p4.png"]["chosen"] == "closest"
    mean = np.mean([faces[k][0].chip for k in (1, 2, 3)], axis=0)
    assert rows["a/p4.png"]["distance"] == pytest.approx(np.linalg.norm(faces[4][1].chip - mean), abs=1e-4)
    # No one-face photo of b: the largest face, said so.
    assert rows["b/q.png"]["chosen"] == "largest" and "b has no one-face photo" in rows["b/q.png"]["note"]
    assert report["counts"] == {"found": 3, "several": 2, "none": 1, "unreadable": 1, "images": 7, "people": 2}

    marks = ap.read_landmarks(out / ap.LANDMARKS_FILE)
    expected = {"a/p1.png": faces[1][0], "a/p2.png": faces[2][0], "a/p3.jpg": faces[3][0],
                "a/p4.png": faces[4][1], "b/q.png": faces[10][0]}
    assert sorted(marks) == sorted(expected)
    for key, face in expected.items():
        np.testing.assert_allclose(marks[key], face.landmarks, atol=0.005)  # written with 2 decimals
        crop = np.asarray(Image.open(out / key))
        assert crop.shape == (112, 112, 3)
        if key.endswith(".png"):  # lossless: the crop is exactly align_face's
            want = align_lib.align_face(Image.open(root / key).convert("RGB"), face.landmarks, (112, 112))[0]
            np.testing.assert_array_equal(crop, want)
    assert not (out / "a" / "empty.png").exists() and not (out / "a" / "broken.jpg").exists()
    assert json.loads((out / ap.REPORT_FILE).read_text())["counts"] == report["counts"]


def test_size_112x96(scene):
    root, out, det, faces = scene
    report = ap.align_folder(root, out, det, size=(112, 96))
    assert report["settings"]["size"] == [112, 96]
    crop = np.asarray(Image.open(out / "a" / "p1.png"))
    wide = align_lib.align_face(Image.open(root / "a" / "p1.png").convert("RGB"), faces[1][0].landmarks, (112, 112))[0]
    assert crop.shape == (112, 96, 3)
    # The 112x96 template is the 112x112 one shifted 8 px: the same crop's central 96 columns.
    assert np.abs(crop.astype(int) - wide[:, 8:104].astype(int)).max() <= 1


def test_resume_skips_done_people_and_redoes_changed_ones(scene):
    root, out, det, _ = scene
    first = ap.align_folder(root, out, det)
    calls = det.calls
    assert ap.align_folder(root, out, det) == first and det.calls == calls  # nothing redone
    _photo(root / "b" / "r.png", 5)  # b gets a new (faceless) photo: only b is redone
    second = ap.align_folder(root, out, det)
    assert det.calls == calls + 2
    assert second["counts"]["none"] == 2 and second["counts"]["images"] == 8
    # An interrupted person (its rows missing from the report) is redone as well.
    report = json.loads((out / ap.REPORT_FILE).read_text())
    report["images"] = [r for r in report["images"] if not r["image"].startswith("a/")]
    (out / ap.REPORT_FILE).write_text(json.dumps(report))
    assert ap.align_folder(root, out, det)["counts"] == second["counts"]
    assert det.calls == calls + 2 + 5  # a's five readable photos


def test_refusals(scene, tmp_path):
    root, out, det, _ = scene
    ap.align_folder(root, out, det)
    with pytest.raises(ap.OutputFolderError, match=r"size=\[112, 112\].*asks size=\[112, 96\]"):
        ap.align_folder(root, out, det, size=(112, 96))
    other = tmp_path / "in2"
    (other / "x").mkdir(parents=True)
    _photo(other / "x" / "1.png", 1)
    with pytest.raises(ap.OutputFolderError, match="was made from"):
        ap.align_folder(other, out, det)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    with pytest.raises(ap.OutputFolderError, match="not empty"):
        ap.align_folder(root, foreign, det)
    # A report row pointing outside the output folder is not trusted (resuming deletes old crops).
    report = json.loads((out / ap.REPORT_FILE).read_text())
    (tmp_path / "victim.png").write_bytes(b"x")
    report["images"].append({"image": "../victim.png", "status": "found"})
    (out / ap.REPORT_FILE).write_text(json.dumps(report))
    with pytest.raises(ap.OutputFolderError, match="without an image"):
        ap.align_folder(root, out, det)
    assert (tmp_path / "victim.png").exists()
    with pytest.raises(ap.OutputFolderError, match="inside the input"):
        ap.align_folder(root, root / "crops", det)
    with pytest.raises(MissingFileError, match="input folder not found"):
        ap.align_folder(tmp_path / "nowhere", tmp_path / "o", det)
    (tmp_path / "hollow" / "x").mkdir(parents=True)
    with pytest.raises(EmptyDatasetError, match="no person folders"):
        ap.align_folder(tmp_path / "hollow", tmp_path / "o", det)


def test_landmarks_file_round_trip_and_errors(tmp_path):
    marks = {"p q/a b.jpg": np.arange(10.0).reshape(5, 2) + 0.25, "7201/1.jpg": np.ones((5, 2))}
    path = tmp_path / "lm.txt"
    path.write_text(ap.format_landmarks(marks))
    back = ap.read_landmarks(path)
    assert sorted(back) == sorted(marks)
    for k in marks:
        np.testing.assert_allclose(back[k], marks[k])
    head = ap.LANDMARKS_HEADER + "\n"
    for text, match in [
        ("", "line 1 should be the header"),
        (head + "x.jpg 1 2 3\n", "line 2 should be a name and 10 numbers"),
        (head + "x.jpg 1 2 3 4 5 6 7 8 9 ten\n", "line 2: non-numeric"),
        (head + "x.jpg 1 2 3 4 5 6 7 8 9 nan\n", "line 2: landmarks must be finite"),
        (head + "x.jpg " + "1 " * 10 + "\nx.jpg " + "2 " * 10 + "\n", "line 3: 'x.jpg' is listed twice"),
    ]:
        path.write_text(text)
        with pytest.raises(LandmarkError, match=match) as e:
            ap.read_landmarks(path)
        assert str(path) in str(e.value)
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(LandmarkError, match="not UTF-8"):
        ap.read_landmarks(path)


def test_crop_face_shrinks_big_photos_before_warping():
    """A face far larger than the crop is box-filtered first: a photo with a fine 1-pixel
    checkerboard (which a bare bilinear warp would alias) crops like the same scene drawn at 1/4."""
    yy, xx = np.mgrid[0:800, 0:720]
    smooth = 127 + 60 * np.sin(xx / 36.0) * np.cos(yy / 28.0)
    big = (smooth + 50 * ((xx + yy) % 2 * 2 - 1))[..., None].repeat(3, axis=2).astype(np.uint8)
    small = np.asarray(Image.fromarray(big).reduce(4))
    lm_small = align_lib.ARCFACE_TEMPLATE_112 * 1.2 + 30
    lm_big = (lm_small + 0.5) * 4 - 0.5
    a = ap.crop_face(Image.fromarray(big), lm_big, (112, 112)).astype(int)
    b = ap.crop_face(Image.fromarray(small), lm_small, (112, 112)).astype(int)
    assert np.abs(a - b).max() <= 1
