"""dlib and SCRFD detection: five points, the labelled face among several, real CelebA-wild photos.

The real-photo tests compare with ``celeba_wild/raw_sample/landmarks_5pt.txt`` (the same dlib
procedure run on the full-size photos): the issue asks for landmarks "within a few pixels". They
need the ``align`` extra (dlib) or the ``onnx`` extra and the buffalo_s pack (SCRFD) and ../shared,
and skip with the reason otherwise. SCRFD's points are its own (trained on other annotations than
dlib's 68), so they are held to a bound in inter-ocular distances rather than pixels.
"""

import sys

import numpy as np
import pytest
from PIL import Image

from jaxforget.data import align_photos, detect

pytestmark = [pytest.mark.real_data]

FEW_PIXELS = 3.0  # the "within a few pixels", for the median over photos


@pytest.fixture(scope="module")
def detector():
    try:
        import dlib  # noqa: F401
    except ImportError as e:
        pytest.skip(f"needs the 'align' extra: pip install 'jaxforget[align]' ({e})")
    try:
        return detect.FaceDetector()
    except detect.DetectorUnavailableError as e:
        pytest.skip(str(e))


@pytest.fixture
def scrfd_detector(shared):
    pytest.importorskip("onnxruntime", reason="needs the 'onnx' extra: pip install 'jaxforget[onnx]'")
    return detect.make_detector("scrfd", model=shared("weights", "insightface_buffalo_s", "scrfd_500m_bnkps.onnx"),
                                descriptor_model=shared("weights", "insightface_buffalo_s", "w600k_mbf.onnx"))


@pytest.fixture
def sample(shared):
    root = shared("data", "celeba_wild", "raw_sample")
    return root, align_photos.read_landmarks(root / "landmarks_5pt.txt")


def _error(a, b):
    """Mean distance in pixels over the five points."""
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b), axis=1).mean())


def test_five_points_from_68():
    pts = np.zeros((68, 2))
    pts[36:42] = [[0, 0], [2, 0], [4, 0], [0, 2], [2, 2], [4, 2]]  # left eye, mean (2, 1)
    pts[42:48] = np.array([[10, 0]] * 6) + np.arange(6)[:, None] * [0, 1]  # mean (10, 2.5)
    pts[30], pts[48], pts[54] = [6, 5], [3, 8], [9, 8]
    np.testing.assert_allclose(detect.five_points(pts), [[2, 1], [10, 2.5], [6, 5], [3, 8], [9, 8]])
    with pytest.raises(ValueError, match=r"\(68, 2\)"):
        detect.five_points(np.zeros((5, 2)))


def test_choose_face_takes_the_closest_not_the_largest():
    descs = np.array([[1.0, 0], [0, 1.0], [0.7, 0.7]])
    assert detect.choose_face(descs, np.array([0.1, 0.9]), areas=[900, 100, 400]) == (1, pytest.approx(np.hypot(0.1, 0.1)))
    assert detect.choose_face(descs, None, areas=[100, 900, 400]) == (1, None)


def test_missing_dlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib -> ImportError
    with pytest.raises(detect.DetectorUnavailableError, match=r"jaxforget\[align\]"):
        detect.FaceDetector()
    monkeypatch.setattr(detect.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(detect.DetectorUnavailableError, match=r"face-recognition-models.*jaxforget\[align\]"):
        detect.model_dir()


def test_landmarks_on_real_photos(detector, sample):
    """One person's 30 photos: one face each but one (two faces), five points within a few pixels."""
    root, ref = sample
    keys = sorted(k for k in ref if k.startswith("7203/"))
    errors, several = [], []
    for key in keys:
        faces = detector.detect(align_photos.load_photo(root / key))
        assert faces, f"no face found in {key}"
        errors.append(min(_error(f.landmarks, ref[key]) for f in faces))
        if len(faces) > 1:
            several.append(key)
    assert np.median(errors) < FEW_PIXELS, errors
    assert several == ["7203/049668.jpg"]


def test_large_photo_is_detected_downscaled_and_mapped_back(detector, sample):
    root, ref = sample
    key = "7203/049668.jpg"
    photo = align_photos.load_photo(root / key)
    big = photo.resize((photo.width * 3, photo.height * 3), Image.Resampling.BICUBIC)
    assert max(big.size) > detector.detect_size
    faces = detector.detect(big)
    best = min(faces, key=lambda f: _error(f.landmarks, (ref[key] + 0.5) * 3 - 0.5))
    assert _error(best.landmarks, (ref[key] + 0.5) * 3 - 0.5) < 3 * FEW_PIXELS


@pytest.mark.parametrize("name", ["detector", "scrfd_detector"])
def test_several_faces_give_the_labelled_person_not_the_largest(name, sample, request):
    """A composite of a small photo of 7203 beside a large photo of 7210: the descriptor (dlib's,
    or for SCRFD the recognition model's) picks the 7203 face (compared with the mean over other
    7203 photos), though it is the smaller one."""
    detector = request.getfixturevalue(name)
    root, ref = sample
    own = sorted(k for k in ref if k.startswith("7203/") and k != "7203/049668.jpg")
    refs = [f for k in own[:6] for f in detector.detect(align_photos.load_photo(root / k), chips=True)[:1]]
    mean = detector.descriptors(refs).mean(0)
    small = align_photos.load_photo(root / own[6])
    small = small.resize((small.width * 2 // 3, small.height * 2 // 3), Image.Resampling.BILINEAR)
    large = align_photos.load_photo(root / sorted(k for k in ref if k.startswith("7210/"))[0])
    canvas = Image.new("RGB", (small.width + large.width, max(small.height, large.height)))
    canvas.paste(large, (0, 0))
    canvas.paste(small, (large.width, 0))
    faces = detector.detect(canvas, chips=True)
    assert len(faces) == 2 and faces[0].box[0] < large.width <= faces[1].box[0]  # largest first: 7210's
    descs = detector.descriptors(faces)
    i, dist = detect.choose_face(descs, mean, [f.area for f in faces])
    assert i == 1 and dist < np.linalg.norm(descs[0] - mean)


def test_faceless_and_tiny_images_give_no_face(detector):
    noise = np.random.default_rng(0).integers(0, 255, (160, 200, 3), dtype=np.uint8)
    assert detector.detect(noise) == []
    assert detector.detect(np.zeros((1, 1, 3), np.uint8)) == []


# -- SCRFD (InsightFace's detector, onnxruntime) -------------------------------------------------
SCRFD_ERROR = 0.08  # median keypoint error / inter-ocular distance vs the dlib-made reference


def _iod_error(a, ref):
    return _error(a, ref) / float(np.linalg.norm(np.asarray(ref[0]) - ref[1]))


def test_scrfd_keypoints_on_real_photos(scrfd_detector, sample):
    """Ten photos of 7203 (the two-face one among them): a face in each, its five points near the
    reference's (left and right, nose and mouth in the template's order), boxes around them."""
    root, ref = sample
    keys = sorted(k for k in ref if k.startswith("7203/"))[:10]
    assert "7203/049668.jpg" in keys
    errors = []
    for key in keys:
        faces = scrfd_detector.detect(align_photos.load_photo(root / key))
        assert faces and all(f.detector == "scrfd" and f.score >= 0.5 for f in faces), key
        best = min(faces, key=lambda f: _iod_error(f.landmarks, ref[key]))
        errors.append(_iod_error(best.landmarks, ref[key]))
        left, top, right, bottom = best.box
        assert np.all((best.landmarks >= [left, top]) & (best.landmarks <= [right, bottom])), key
    assert np.median(errors) < SCRFD_ERROR and max(errors) < 2 * SCRFD_ERROR, errors


def test_scrfd_large_photo_maps_back_to_its_pixels(scrfd_detector, sample):
    root, ref = sample
    key = sorted(k for k in ref if k.startswith("7206/"))[0]
    photo = align_photos.load_photo(root / key)
    big = photo.resize((photo.width * 3, photo.height * 3), Image.Resampling.BICUBIC)
    faces = scrfd_detector.detect(big)
    assert faces and _iod_error(faces[0].landmarks, (ref[key] + 0.5) * 3 - 0.5) < SCRFD_ERROR


def test_scrfd_descriptors_are_unit_embeddings_and_tiny_images_have_no_face(scrfd_detector, sample):
    root, ref = sample
    faces = scrfd_detector.detect(align_photos.load_photo(root / "7203/049668.jpg"), chips=True)
    assert len(faces) == 2 and faces[0].chip.shape == (112, 112, 3)
    descs = scrfd_detector.descriptors(faces)
    assert descs.shape == (2, 512) and np.allclose(np.linalg.norm(descs, axis=1), 1)
    with pytest.raises(ValueError, match="chips=True"):
        scrfd_detector.descriptors(scrfd_detector.detect(align_photos.load_photo(root / "7203/049668.jpg")))
    assert scrfd_detector.detect(np.zeros((1, 1, 3), np.uint8)) == []


def test_scrfd_refuses_missing_and_wrong_files(tmp_path, shared):
    pytest.importorskip("onnxruntime", reason="needs the 'onnx' extra: pip install 'jaxforget[onnx]'")
    pack = shared("weights", "insightface_buffalo_s")
    with pytest.raises(detect.DetectorFileError, match="file not found; give InsightFace's SCRFD") as e:
        detect.make_detector("scrfd", model=tmp_path / "none.onnx", descriptor_model=pack / "w600k_mbf.onnx")
    assert e.value.option == "model"
    with pytest.raises(detect.DetectorFileError, match="1 inputs and 1 outputs, not SCRFD's 1 and 9"):
        detect.make_detector("scrfd", model=pack / "w600k_mbf.onnx", descriptor_model=pack / "w600k_mbf.onnx")
    (tmp_path / "text.onnx").write_text("not a model")
    with pytest.raises(detect.DetectorFileError, match="not an ONNX model onnxruntime can run") as e:
        detect.make_detector("scrfd", model=pack / "scrfd_500m_bnkps.onnx", descriptor_model=tmp_path / "text.onnx")
    assert e.value.option == "descriptor_model"
    with pytest.raises(ValueError, match="multiple of 32"):
        detect.make_detector("scrfd", detect_size=650)


def test_make_detector_names_the_detectors():
    with pytest.raises(ValueError, match="detector 'mtcnn': unknown; choose one of dlib, scrfd"):
        detect.make_detector("mtcnn")
    assert set(detect.DETECTORS) == {"dlib", "scrfd"} and detect.DEFAULT_DETECTOR == "dlib"
