"""Face detection, five landmarks and face descriptors in raw photos, through dlib.

dlib is an optional dependency (the ``align`` extra: ``pip install 'jaxforget[align]'``, i.e. the
prebuilt ``dlib-bin`` wheel and ``face-recognition-models``, which ships the model files); it is
imported here only, when a :class:`FaceDetector` is made, and its absence is a
:class:`DetectorUnavailableError` naming the extra.

The procedure (the one the shared CelebA-wild crops were made with):

* the photo is downscaled to at most ``detect_size`` pixels on its long side for detection;
* dlib's HOG detector at that scale, then upsampled once when it found nothing, then (``cnn=True``)
  dlib's CNN (MMOD) detector, upsampled once, when HOG found nothing;
* dlib's 68-point shape predictor on each face; the five points are the mean of each eye's six
  points, the nose tip (point 30) and the mouth corners (48, 54), returned in the original photo's
  pixel coordinates (integer values at pixel centres, docs/FORMATS.md);
* on request, dlib's ResNet descriptor (128-d, unit scale: same person below about 0.6) of the
  150x150 face chip, used to pick the labelled person among several faces
  (:func:`choose_face`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

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
    """dlib or its model files are not installed."""


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
    detector: str  # 'hog', 'hog-upsampled' or 'cnn'
    chip: np.ndarray | None = None  # dlib's 150x150 face chip (for the descriptor), when asked

    @property
    def area(self) -> float:
        left, top, right, bottom = self.box
        return max(0.0, right - left) * max(0.0, bottom - top)


def _rescale(points: np.ndarray, factor: float) -> np.ndarray:
    """Pixel-centre coordinates at one scale -> at a scale ``factor`` times larger."""
    return (np.asarray(points, np.float64) + 0.5) * factor - 0.5


class FaceDetector:
    """dlib's detectors, 68-point shape predictor and descriptor network, loaded once.

    Args:
      cnn: fall back to the CNN (MMOD) detector where HOG finds nothing (slower: seconds per photo
        on a CPU, but finds profile and tilted faces).
      detect_size: long side, in pixels, to which larger photos are downscaled for detection.
    """

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
        return {"detector": "hog+cnn" if self.cnn else "hog", "detect_size": self.detect_size}

    def detect(self, image: np.ndarray | Image.Image, chips: bool = False) -> list[Face]:
        """Every face in an RGB image (``uint8 (H, W, 3)`` or PIL), largest first (none in an
        image with a side under :data:`MIN_SIDE` pixels).

        With ``chips=True`` each face carries dlib's 150x150 chip for :meth:`descriptors`.
        """
        pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
        pil = pil.convert("RGB")
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


#: Face detectors by name (``python -m jaxforget.reindex --align=<name>``): each makes, with no
#: argument, an object with :class:`FaceDetector`'s ``detect(image) -> [Face]`` and ``settings``.
DETECTORS: dict[str, Callable[[], Any]] = {"dlib": FaceDetector}


def make_detector(name: str) -> Any:
    """The detector registered as ``name`` in :data:`DETECTORS`."""
    if name not in DETECTORS:
        raise DetectorUnavailableError(f"face detector {name!r} is not in this version of jaxforget; known: "
                                       f"{', '.join(sorted(DETECTORS))}")
    return DETECTORS[name]()


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
