"""Raw photos -> aligned faces: a tree of photos per person in, the same tree of crops out.

``INPUT/<person>/<photo>`` (the folder layout of :class:`~jaxforget.data.formats.folder.FolderSource`;
files directly in ``INPUT`` are ignored) gives

* ``OUTPUT/<person>/<photo>``: the face aligned to the five-point template at ``size``
  (:mod:`jaxforget.data.align`), same file name (JPEG quality 95 for ``.jpg``);
* ``OUTPUT/landmarks_5pt.txt``: the five points of every written crop in the original photo's
  pixels (:func:`read_landmarks`, docs/FORMATS.md);
* ``OUTPUT/report.json``: one row per photo -- ``found`` (one face), ``several`` (which face was
  taken and why), ``none`` (no face) or ``unreadable`` (the decoder's error) -- then the counts.

The detector is any :class:`~jaxforget.data.detect.Detector` (dlib's or SCRFD, made by name with
:func:`~jaxforget.data.detect.make_detector`); its ``settings`` are the report's. A person is done
in two passes: every photo is detected; then, if some photos hold several faces, the face taken is
the one whose descriptor (the detector's: dlib's, or the recognition model's for SCRFD) is closest
to the mean descriptor of the person's one-face photos (the largest face, noted in the report,
when the person has no one-face photo).

Resuming: the landmarks file and the report are rewritten after each person, so an interrupted
run continues where it stopped when run again with the same input and settings (people whose
photos are all in the report are skipped). An output folder written with other settings or from
another input, or one that is not empty and has no report, is refused.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from jaxforget import workdir
from jaxforget.data import align as align_lib
from jaxforget.data.align import crop_face
from jaxforget.data.detect import Detector, choose_face
from jaxforget.data.formats.files import IMAGE_EXTENSIONS
from jaxforget.data.source import DataError, EmptyDatasetError, LandmarkError, MissingFileError

LANDMARKS_FILE = "landmarks_5pt.txt"
REPORT_FILE = "report.json"
LANDMARKS_HEADER = ("image lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y "
                    "leftmouth_x leftmouth_y rightmouth_x rightmouth_y")
STATUSES = ("found", "several", "none", "unreadable")


class OutputFolderError(DataError):
    """The output folder holds something this run must not overwrite or cannot resume."""


# --------------------------------------------------------------------------------------------
# The landmarks file
# --------------------------------------------------------------------------------------------
def format_landmarks(landmarks: Mapping[str, np.ndarray]) -> str:
    """The landmarks file: the header line, then ``<person>/<photo>`` and ten numbers per line."""
    lines = [LANDMARKS_HEADER]
    for key in sorted(landmarks):
        pts = np.asarray(landmarks[key], np.float64).reshape(10)
        lines.append(key + " " + " ".join(f"{v:.2f}" for v in pts))
    return "\n".join(lines) + "\n"


def read_landmarks(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A landmarks file (:func:`format_landmarks`) -> ``{'<person>/<photo>': (5, 2)}``.

    The name is everything before the last ten fields, so names may hold spaces. Raises
    :class:`LandmarkError` naming the file and line for a wrong header, a short or non-numeric
    row, a non-finite value or a repeated name.
    """
    path = os.fspath(path)
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise LandmarkError(f"{path}: not a text landmarks file (not UTF-8)") from None
    lines = text.splitlines()
    if not lines or lines[0].split() != LANDMARKS_HEADER.split():
        raise LandmarkError(f"{path}: line 1 should be the header '{LANDMARKS_HEADER}'")
    out: dict[str, np.ndarray] = {}
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=10)
        if len(parts) != 11:
            raise LandmarkError(f"{path}: line {n} should be a name and 10 numbers; got {line[:80]!r}")
        try:
            pts = np.array([float(v) for v in parts[1:]], np.float64)
        except ValueError:
            raise LandmarkError(f"{path}: line {n}: non-numeric landmark in {line[:80]!r}") from None
        if not np.all(np.isfinite(pts)):
            raise LandmarkError(f"{path}: line {n}: landmarks must be finite numbers")
        if parts[0] in out:
            raise LandmarkError(f"{path}: line {n}: {parts[0]!r} is listed twice")
        out[parts[0]] = pts.reshape(5, 2)
    return out


# --------------------------------------------------------------------------------------------
# Photos and crops
# --------------------------------------------------------------------------------------------
def list_people(input_dir: str | os.PathLike) -> dict[str, list[str]]:
    """``{person: sorted photo file names}`` for every folder of ``input_dir`` holding images."""
    root = pathlib.Path(input_dir)
    if not root.is_dir():
        raise MissingFileError(f"input folder not found: {root} (expected {root}/<person>/<photo>)")
    people = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(f.name for f in d.iterdir() if f.is_file() and f.name.lower().endswith(IMAGE_EXTENSIONS))
        if files:
            people[d.name] = files
    if not people:
        raise EmptyDatasetError(f"{root} has no person folders with images (expected {root}/<person>/<photo>, "
                                f"photos ending {', '.join(IMAGE_EXTENSIONS)})")
    return people


def load_photo(path: str | os.PathLike) -> Image.Image:
    """The decoded RGB photo (any PIL decoder error propagates: the caller reports it)."""
    with Image.open(path) as img:
        img.load()
        return img.convert("RGB")


def _save(path: pathlib.Path, image: np.ndarray) -> None:
    jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    workdir.write_atomic(path, lambda tmp: Image.fromarray(image).save(tmp, **({"quality": 95} if jpeg else {})))


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def _align_person(person: str, files: Sequence[str], root: pathlib.Path, out: pathlib.Path, size: tuple[int, int],
                  detector: Detector, progress: Callable[[int], None]) -> tuple[list[dict], dict[str, np.ndarray]]:
    rows: list[dict[str, Any]] = []
    marks: dict[str, np.ndarray] = {}
    singles, several = [], []
    for name in files:
        rel = f"{person}/{name}"
        row: dict[str, Any] = {"image": rel}
        rows.append(row)
        if any(c in rel for c in "\n\r\t"):
            row.update(status="unreadable", error="the file name holds a line break or tab; rename it")
            progress(1)
            continue
        try:
            photo = load_photo(root / rel)
        except Exception as e:  # noqa: BLE001 - any decoder failure is an unreadable photo
            row.update(status="unreadable", error=f"{type(e).__name__}: {e}")
            progress(1)
            continue
        faces = detector.detect(photo, chips=True)
        row.update(faces=len(faces))
        if len(faces) == 1:
            row.update(status="found", **_found_by(faces[0]))
            _save(out / rel, crop_face(photo, faces[0].landmarks, size))
            marks[rel] = faces[0].landmarks
            singles.append(faces[0])
        elif not faces:
            row.update(status="none")
        else:
            several.append((row, faces))
        progress(1)
    # Second pass: the labelled face of each several-face photo.
    reference = detector.descriptors(singles).mean(0) if several and singles else None
    for row, faces in several:
        descs = detector.descriptors(faces) if reference is not None else None
        i, dist = choose_face(descs, reference, [f.area for f in faces])
        face = faces[i]
        row.update(status="several", **_found_by(face))
        if dist is None:
            row.update(chosen="largest", note=f"{person} has no one-face photo to compare with")
        else:
            row.update(chosen="closest", distance=round(dist, 4))
        _save(out / row["image"], crop_face(load_photo(root / row["image"]), face.landmarks, size))
        marks[row["image"]] = face.landmarks
    return rows, marks


def _found_by(face: Any) -> dict[str, Any]:
    """The report's fields of the face taken: which detector found it, and its score if it has one."""
    score = getattr(face, "score", None)
    return {"detector": face.detector, **({} if score is None else {"score": round(score, 4)})}


def count(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Photos per status, plus the total."""
    out = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    out["images"] = len(rows)
    return out


def _relative(image: Any) -> bool:
    """``image`` is a ``<person>/<photo>`` path that stays inside the output folder."""
    parts = image.split("/") if isinstance(image, str) else []
    return len(parts) == 2 and all(p not in ("", ".", "..") and "\\" not in p for p in parts)


def _previous(out: pathlib.Path, header: dict[str, Any]) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Rows and landmarks of an earlier run into ``out`` to resume; refuses a folder it cannot."""
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"output {out} is a file; give a folder")
    if not out.exists() or not any(out.iterdir()):
        return [], {}
    report_path = out / REPORT_FILE
    try:
        old = workdir.read_json(report_path)
        rows, settings, source = old["images"], old["settings"], old["input"]
        if not isinstance(rows, list) or not isinstance(settings, dict):
            raise ValueError(f"{report_path} is not a report of jaxforget.align")
        if not all(_relative(r["image"]) and r["status"] in STATUSES for r in rows):
            raise ValueError(f"{report_path} has a row without an image '<person>/<photo>' and a status")
        marks = read_landmarks(out / LANDMARKS_FILE)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise OutputFolderError(
            f"output folder {out} is not empty and holds no readable {REPORT_FILE} and {LANDMARKS_FILE} of an "
            f"earlier run ({type(e).__name__}: {e}); give a new or empty folder") from None
    if source != header["input"]:
        raise OutputFolderError(f"{out} was made from {source}, not {header['input']}; give a new or empty output folder")
    for key, value in header["settings"].items():
        if settings.get(key) != value:
            raise OutputFolderError(
                f"{out} was made with {key}={settings.get(key)}, this run asks {key}={value}; run again with "
                f"{key}={settings.get(key)} to resume, or give a new or empty output folder")
    return rows, marks


def align_folder(input_dir: str | os.PathLike, output_dir: str | os.PathLike, detector: Detector,
                 size: Sequence[int] = (112, 112), progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Detects, aligns and writes every photo of ``input_dir``; returns the report (also written).

    Args:
      detector: a :class:`~jaxforget.data.detect.Detector` (``detect.make_detector(name)``,
        or anything with its ``detect``, ``descriptors`` and ``settings``).
      size: crop ``(height, width)``: 112x112 is InsightFace's template, 112x96 the SphereFace /
        MobileFaceNet one (the same with 8 columns dropped each side).
      progress: called with the number of photos handled, as they are.
    """
    root, out = pathlib.Path(input_dir).resolve(), pathlib.Path(output_dir).resolve()
    size = (int(size[0]), int(size[1]))
    align_lib.template_for(size)  # checks the size
    if out == root or root in out.parents:
        raise OutputFolderError(f"the output folder {out} must not be inside the input folder {root}")
    people = list_people(root)
    header = {"input": str(root), "settings": {"size": list(size), **detector.settings}}
    old_rows, old_marks = _previous(out, header)
    progress = progress or (lambda n: None)
    done: dict[str, list[dict]] = {}
    for row in old_rows:
        done.setdefault(row["image"].split("/", 1)[0], []).append(row)
    marks = dict(old_marks)
    for person, files in people.items():
        prior = done.get(person, [])
        ok = [r for r in prior if r["status"] in ("found", "several")]
        if sorted(r["image"] for r in prior) == [f"{person}/{f}" for f in files] and all(r["image"] in marks for r in ok):
            progress(len(files))
            continue
        for r in prior:  # redo the person: drop what an older pass wrote
            (out / r["image"]).unlink(missing_ok=True)
        marks = {k: v for k, v in marks.items() if not k.startswith(f"{person}/")}
        done[person], new_marks = _align_person(person, files, root, out, size, detector, progress)
        marks.update(new_marks)
        _write(out, header, done, marks)
    return _write(out, header, done, marks)


def _write(out: pathlib.Path, header: dict[str, Any], done: Mapping[str, list[dict]],
           marks: Mapping[str, np.ndarray]) -> dict[str, Any]:
    rows = [r for person in sorted(done) for r in done[person]]
    report = {**header, "images": rows, "counts": {**count(rows), "people": len(done)}}
    workdir.write_atomic(out / LANDMARKS_FILE, format_landmarks(marks))
    workdir.write_json(out / REPORT_FILE, report)
    return report
