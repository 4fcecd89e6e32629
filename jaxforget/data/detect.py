"""Face detection, five landmarks and face descriptors in raw photos: dlib's, or InsightFace's SCRFD.

Two detectors behind one interface (:class:`Detector`), picked by name with :func:`make_detector`
(``DETECTORS``: ``dlib``, ``scrfd``); :mod:`jaxforget.data.align_photos` uses only the interface.
Each returns :class:`Face` records (box, five points in the original photo's pixels, which
detector found it) and descriptors that pick the labelled person among several faces
(:func:`choose_face`).

``dlib`` (:class:`FaceDetector`): an optional dependency (the ``align`` extra: ``pip install
'jaxforget[align]'``, i.e. the prebuilt ``dlib-bin`` wheel and ``face-recognition-models``, which
ships the model files); imported here only, when a :class:`FaceDetector` is made, and its absence
is a :class:`DetectorUnavailableError` naming the extra. The procedure (the one the shared
CelebA-wild crops were made with):

* the photo is downscaled to at most ``detect_size`` pixels on its long side for detection;
* dlib's HOG detector at that scale, then upsampled once when it found nothing, then (``cnn=True``)
  dlib's CNN (MMOD) detector, upsampled once, when HOG found nothing;
* dlib's 68-point shape predictor on each face; the five points are the mean of each eye's six
  points, the nose tip (point 30) and the mouth corners (48, 54), returned in the original photo's
  pixel coordinates (integer values at pixel centres, docs/FORMATS.md);
* on request, dlib's ResNet descriptor (128-d, unit scale: same person below about 0.6) of the
  150x150 face chip.

``scrfd`` (:class:`ScrfdDetector`): the detector of InsightFace's model packs (``buffalo_s``'s
``scrfd_500m_bnkps.onnx``) run with onnxruntime (the ``onnx`` extra), its outputs decoded as
InsightFace decodes them (:mod:`jaxforget.data.scrfd`: a 640x640 letterbox, strides 8/16/32, two
anchors per cell, score threshold 0.5, NMS at IoU 0.4); the five points are the network's. The
descriptor is the pack's recognition model (``w600k_mbf.onnx``, 512-d, L2-normalised) on the
112x112 crop aligned to the ArcFace template, so a photo with several faces gives the face the
deployed model finds closest to the person's other photos. No file is downloaded: both paths are
given (:data:`SCRFD_MODEL`, :data:`SCRFD_DESCRIPTOR` are where this project keeps them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import pathlib
from typing import Any, Protocol, Sequence

import numpy as np
from PIL import Image

from jaxforget.data import scrfd
from jaxforget.data.align import crop_face
from jaxforget.io.onnx_format import OnnxUnavailableError, onnx_session

#: Name of the pyproject extra that installs the detector.
EXTRA = "align"
_INSTALL = f"pip install 'jaxforget[{EXTRA}]' (dlib-bin and face-recognition-models)"

#: Model files of the ``face_recognition_models`` package.
MODEL_FILES = {
    "shape68": "shape_predictor_68_face_landmarks.dat",
    "descriptor": "dlib_face_recognition_resnet_model_v1.dat",
    "cnn": "mmod_human_face_detector.dat",
}


#: Photos with a side shorter than this (in pixels, at the detection scale) hold no detectable face.
MIN_SIDE = 20


class DetectorUnavailableError(ImportError):
    """dlib or its model files, or onnxruntime, are not installed."""


class DetectorFileError(ValueError):
    """A model file given to a detector is missing or is not the model it should be.

    ``option`` is the detector's argument that named it (``'model'`` or ``'descriptor_model'``),
    so that a command line can name its own flag.
    """

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


def _import_dlib() -> Any:
    try:
        import dlib  # optional dependency: the 'align' extra
    except ImportError as e:
        raise DetectorUnavailableError(f"face detection needs dlib ({e}); install it with {_INSTALL}") from None
    return dlib


def model_dir() -> pathlib.Path:
    """Folder of ``face_recognition_models``' ``.dat`` files.

    Found without importing the package: its ``__init__`` imports ``pkg_resources``, which
    setuptools no longer ships (81 and later).
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise DetectorUnavailableError(f"face detection needs the face-recognition-models package; install it with {_INSTALL}")
    folder = pathlib.Path(list(spec.submodule_search_locations)[0]) / "models"
    missing = [f for f in MODEL_FILES.values() if not (folder / f).is_file()]
    if missing:
        raise DetectorUnavailableError(f"{folder} lacks {', '.join(missing)}; reinstall face-recognition-models ({_INSTALL})")
    return folder


def five_points(points68: np.ndarray) -> np.ndarray:
    """The five alignment points ``(5, 2)`` from dlib's 68 (iBUG 300-W numbering, 0-based):
    left eye = mean of 36..41, right eye = mean of 42..47, nose tip 30, mouth corners 48 and 54
    (left and right as seen in the image)."""
    p = np.asarray(points68, np.float64)
    if p.shape != (68, 2):
        raise ValueError(f"five_points needs (68, 2) points; got {p.shape}")
    return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])


@dataclasses.dataclass
class Face:
    """One detected face. Coordinates are the original photo's pixels."""

    box: tuple[float, float, float, float]  # left, top, right, bottom
    landmarks: np.ndarray  # (5, 2) x, y
    detector: str  # 'hog', 'hog-upsampled' or 'cnn' (dlib), 'scrfd'
    chip: np.ndarray | None = None  # the face chip the descriptor reads, when asked
    score: float | None = None  # the detector's confidence, where it gives one (SCRFD)

    @property
    def area(self) -> float:
        left, top, right, bottom = self.box
        return max(0.0, right - left) * max(0.0, bottom - top)


def _rescale(points: np.ndarray, factor: float) -> np.ndarray:
    """Pixel-centre coordinates at one scale -> at a scale ``factor`` times larger."""
    return (np.asarray(points, np.float64) + 0.5) * factor - 0.5


class Detector(Protocol):
    """What :mod:`jaxforget.data.align_photos` needs of a detector."""

    name: str

    @property
    def settings(self) -> dict[str, Any]:
        """What decides the detections (written in a report; a resumed run must match it)."""

    def detect(self, image: np.ndarray | Image.Image, chips: bool = False) -> list[Face]:
        """Every face of an RGB image, largest first; ``chips=True`` keeps what
        :meth:`descriptors` reads."""

    def descriptors(self, faces: Sequence[Face]) -> np.ndarray:
        """One descriptor row per face (detected with ``chips=True``); closer is more alike."""


def _rgb(image: np.ndarray | Image.Image) -> Image.Image:
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
    return pil.convert("RGB")


class FaceDetector:
    """dlib's detectors, 68-point shape predictor and descriptor network, loaded once.

    Args:
      cnn: fall back to the CNN (MMOD) detector where HOG finds nothing (slower: seconds per photo
        on a CPU, but finds profile and tilted faces).
      detect_size: long side, in pixels, to which larger photos are downscaled for detection.
    """

    name = "dlib"

    def __init__(self, cnn: bool = True, detect_size: int = 700):
        if int(detect_size) < 32:
            raise ValueError(f"detect_size must be at least 32 pixels; got {detect_size}")
        dlib = _import_dlib()
        folder = model_dir()
        self.cnn, self.detect_size = bool(cnn), int(detect_size)
        self._dlib = dlib
        self._hog = dlib.get_frontal_face_detector()
        self._shape = dlib.shape_predictor(str(folder / MODEL_FILES["shape68"]))
        self._mmod = dlib.cnn_face_detection_model_v1(str(folder / MODEL_FILES["cnn"])) if self.cnn else None
        self._rec = None  # the descriptor network, loaded on first use

    @property
    def settings(self) -> dict[str, Any]:
        """What decides the detections (for a report and for resuming)."""
        return {"detector": self.name, "dlib_detectors": "hog+cnn" if self.cnn else "hog", "detect_size": self.detect_size}

    def detect(self, image: np.ndarray | Image.Image, chips: bool = False) -> list[Face]:
        """Every face in an RGB image (``uint8 (H, W, 3)`` or PIL), largest first (none in an
        image with a side under :data:`MIN_SIDE` pixels).

        With ``chips=True`` each face carries dlib's 150x150 chip for :meth:`descriptors`.
        """
        pil = _rgb(image)
        w, h = pil.size
        factor = max(w, h) / self.detect_size
        if factor > 1.0:
            pil = pil.resize((max(1, round(w / factor)), max(1, round(h / factor))), Image.Resampling.BILINEAR)
            factor = w / pil.size[0]
        else:
            factor = 1.0
        small = np.ascontiguousarray(np.asarray(pil, np.uint8))
        if min(small.shape[:2]) < MIN_SIDE:  # no detectable face; the CNN fails on such sizes
            return []
        rects, how = self._hog(small, 0), "hog"
        if len(rects) == 0:
            rects, how = self._hog(small, 1), "hog-upsampled"
        if len(rects) == 0 and self._mmod is not None:
            rects, how = [d.rect for d in self._mmod(small, 1)], "cnn"
        faces = []
        for r in rects:
            shape = self._shape(small, r)
            pts = np.array([[p.x, p.y] for p in shape.parts()], np.float64)
            box = _rescale(np.array([[r.left(), r.top()], [r.right(), r.bottom()]], np.float64), factor)
            chip = np.asarray(self._dlib.get_face_chip(small, shape, size=150, padding=0.25)) if chips else None
            faces.append(Face(tuple(float(v) for v in box.ravel()), _rescale(five_points(pts), factor), how, chip))
        faces.sort(key=lambda f: -f.area)
        return faces

    def descriptors(self, faces: Sequence[Face]) -> np.ndarray:
        """dlib's 128-d descriptors ``(n, 128)`` of faces detected with ``chips=True``."""
        if not faces:
            return np.zeros((0, 128), np.float64)
        if any(f.chip is None for f in faces):
            raise ValueError("descriptors need faces detected with chips=True")
        if self._rec is None:
            self._rec = self._dlib.face_recognition_model_v1(str(model_dir() / MODEL_FILES["descriptor"]))
        out = self._rec.compute_face_descriptor([np.ascontiguousarray(f.chip) for f in faces])
        return np.asarray([np.asarray(v, np.float64) for v in out])


#: Where this project keeps InsightFace's ``buffalo_s`` pack (../shared/weights/insightface_buffalo_s,
#: relative to the repository root): SCRFD's model and the recognition model it picks faces with.
SCRFD_MODEL = "../shared/weights/insightface_buffalo_s/scrfd_500m_bnkps.onnx"
SCRFD_DESCRIPTOR = "../shared/weights/insightface_buffalo_s/w600k_mbf.onnx"


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _session(option: str, path: str | pathlib.Path, what: str) -> tuple[Any, str]:
    """An onnxruntime session of ``path`` and the file's sha256; a missing or unreadable file is a
    :class:`DetectorFileError` for ``option``."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DetectorFileError(option, f"{path}: file not found; give {what}")
    try:
        return onnx_session(path), _sha256(path)
    except OnnxUnavailableError as e:
        raise DetectorUnavailableError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - onnxruntime's own errors for a file it cannot load
        raise DetectorFileError(option, f"{path}: not an ONNX model onnxruntime can run "
                                        f"({type(e).__name__}: {str(e).splitlines()[0][:120]}); give {what}") from None


class ScrfdDetector:
    """InsightFace's SCRFD detector with five keypoints, and a recognition model as descriptor.

    Args:
      model: SCRFD with keypoints as ONNX (``scrfd_500m_bnkps.onnx`` of the ``buffalo_s`` pack).
      descriptor_model: an InsightFace recognition ONNX (``w600k_mbf.onnx``: input
        ``(N, 3, 112, 112)`` RGB ``(x - 127.5) / 127.5``, one output) whose L2-normalised
        embeddings of the aligned faces are the descriptors.
      detect_size: side of the square network input (InsightFace's ``det_size``, default 640; a
        multiple of 32).
      score_threshold, nms_threshold: InsightFace's 0.5 and 0.4.
    """

    name = "scrfd"
    _WHAT = {"model": "InsightFace's SCRFD detector with keypoints (scrfd_500m_bnkps.onnx of the buffalo_s pack)",
             "descriptor_model": "an InsightFace recognition model (w600k_mbf.onnx of the buffalo_s pack)"}

    def __init__(self, model: str | pathlib.Path = SCRFD_MODEL, descriptor_model: str | pathlib.Path = SCRFD_DESCRIPTOR,
                 detect_size: int = scrfd.INPUT_SIZE, score_threshold: float = scrfd.SCORE_THRESHOLD,
                 nms_threshold: float = scrfd.NMS_THRESHOLD):
        if int(detect_size) < 32 or int(detect_size) % 32:
            raise ValueError(f"SCRFD's detect_size must be a multiple of 32 (640 by default); got {detect_size}")
        self.detect_size, self.score_threshold, self.nms_threshold = int(detect_size), float(score_threshold), float(nms_threshold)
        self.model_path = pathlib.Path(model)
        self._det, self._det_sha = _session("model", model, self._WHAT["model"])
        self._det_input = self._det.get_inputs()[0].name
        outputs = self._det.get_outputs()
        if len(self._det.get_inputs()) != 1 or len(outputs) != 3 * len(scrfd.STRIDES):
            raise DetectorFileError("model", f"{model}: {len(self._det.get_inputs())} inputs and {len(outputs)} outputs, "
                                             f"not SCRFD's 1 and 9; give {self._WHAT['model']}")
        self._rec, self._rec_sha = _session("descriptor_model", descriptor_model, self._WHAT["descriptor_model"])
        shape = self._rec.get_inputs()[0].shape
        if len(self._rec.get_inputs()) != 1 or len(self._rec.get_outputs()) != 1 or len(shape) != 4 or shape[1] != 3:
            raise DetectorFileError("descriptor_model", f"{descriptor_model}: input {shape} and "
                                    f"{len(self._rec.get_outputs())} outputs, not one (N, 3, H, W) input and one "
                                    f"output; give {self._WHAT['descriptor_model']}")
        self.chip_size = tuple(int(v) if isinstance(v, int) else 112 for v in shape[2:])

    @property
    def settings(self) -> dict[str, Any]:
        return {"detector": self.name, "detect_size": self.detect_size, "score_threshold": self.score_threshold,
                "nms_threshold": self.nms_threshold, "model_sha256": self._det_sha,
                "descriptor_sha256": self._rec_sha}

    def detect(self, image: np.ndarray | Image.Image, chips: bool = False) -> list[Face]:
        """Every face SCRFD finds in an RGB image (``uint8 (H, W, 3)`` or PIL), largest first.

        With ``chips=True`` each face carries its crop aligned to the recognition model's input
        (the ArcFace template) for :meth:`descriptors`.
        """
        pil = _rgb(image)
        blob, det_scale = scrfd.letterbox(pil, self.detect_size)
        outputs = self._det.run(None, {self._det_input: blob})
        try:
            boxes, scores, points = scrfd.decode(outputs, self.detect_size, det_scale, self.score_threshold,
                                                 self.nms_threshold)
        except ValueError as e:
            raise DetectorFileError("model", f"{self.model_path}: {e}") from None
        faces = [Face(tuple(float(v) for v in box), pts, self.name,
                      crop_face(pil, pts, self.chip_size) if chips else None, float(score))
                 for box, score, pts in zip(boxes, scores, points)]
        faces.sort(key=lambda f: -f.area)
        return faces

    def descriptors(self, faces: Sequence[Face]) -> np.ndarray:
        """L2-normalised embeddings ``(n, d)`` of faces detected with ``chips=True``."""
        if not faces:
            return np.zeros((0, self._rec.get_outputs()[0].shape[-1] or 0), np.float64)
        if any(f.chip is None for f in faces):
            raise ValueError("descriptors need faces detected with chips=True")
        x = (np.stack([f.chip for f in faces]).astype(np.float32) - 127.5) / 127.5
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        name = self._rec.get_inputs()[0].name  # one face a run: the zoo's graphs declare a batch of 1
        emb = np.concatenate([self._rec.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])
        emb = np.asarray(emb, np.float64).reshape(len(faces), -1)
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


#: The detectors by name (``python -m jaxforget.align --detector=NAME``); ``dlib`` is the default.
DETECTORS = {"dlib": FaceDetector, "scrfd": ScrfdDetector}
DEFAULT_DETECTOR = "dlib"


def make_detector(name: str = DEFAULT_DETECTOR, **options: Any) -> Detector:
    """The detector called ``name`` (a key of :data:`DETECTORS`), made with its own ``options``
    (``cnn``, ``detect_size`` for dlib; ``model``, ``descriptor_model``, ``detect_size``,
    ``score_threshold``, ``nms_threshold`` for SCRFD; left out, the detector's defaults)."""
    if name not in DETECTORS:
        raise ValueError(f"detector {name!r}: unknown; choose one of {', '.join(DETECTORS)}")
    return DETECTORS[name](**options)


def choose_face(descriptors: np.ndarray, reference: np.ndarray | None, areas: Sequence[float]) -> tuple[int, float | None]:
    """Which of several faces is the labelled person.

    The face whose descriptor is closest (Euclidean, dlib's metric) to ``reference`` -- the mean
    descriptor of the person's one-face photos; without a reference, the largest face.

    Returns ``(index, distance)``; ``distance`` is None when the largest face was taken.
    """
    if len(areas) == 0:
        raise ValueError("choose_face needs at least one face")
    if reference is None:
        return int(np.argmax(np.asarray(areas, np.float64))), None
    d = np.linalg.norm(np.asarray(descriptors, np.float64) - np.asarray(reference, np.float64)[None], axis=1)
    i = int(np.argmin(d))
    return i, float(d[i])
