"""Command line: raw photos -> aligned faces.

    python -m jaxforget.align INPUT_DIR OUTPUT_DIR [--size 112x112|112x96] [--detector dlib|scrfd]

``INPUT_DIR/<person>/<photo>`` in, ``OUTPUT_DIR/<person>/<photo>`` (aligned crops),
``OUTPUT_DIR/landmarks_5pt.txt`` and ``OUTPUT_DIR/report.json`` out; progress on stderr, a summary
on stdout. Running again on the same output resumes.

Detectors: ``dlib`` (the default; HOG, then its CNN where HOG finds nothing; needs the ``align``
extra, ``pip install 'jaxforget[align]'``) or ``scrfd``, InsightFace's own detector (the
``buffalo_s`` pack's ``scrfd_500m_bnkps.onnx`` through onnxruntime, the ``onnx`` extra; photos with
several faces are resolved with the pack's recognition model ``w600k_mbf.onnx``), so that raw
photos are cropped as a deployed InsightFace system crops them. The work is done by
:func:`jaxforget.data.align_photos.align_folder` with :func:`jaxforget.data.detect.make_detector`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from jaxforget.data import align_photos, detect
from jaxforget.data.source import DataError
from jaxforget.errors import UserError
from jaxforget.eval.embed import Progress


def parse_size(text: str) -> tuple[int, int]:
    """``'112x96'`` (height x width) or ``'112'`` (square) -> ``(112, 96)``."""
    parts = text.lower().split("x")
    try:
        h, w = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (0, 0)
    except ValueError:
        h = w = 0
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"--size {text!r}: give HEIGHTxWIDTH, e.g. 112x112 or 112x96")
    return h, w


#: The command's flag for each model-file argument of a detector (named in errors).
FILE_FLAGS = {"model": "--detector-model", "descriptor_model": "--descriptor-model"}
#: Flags that belong to one detector only.
ONLY_FOR = {"no_cnn": "dlib", "detector_model": "scrfd", "descriptor_model": "scrfd"}
DEFAULT_DETECT_SIZE = {"dlib": 700, "scrfd": 640}


def detect_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 32:
        raise argparse.ArgumentTypeError(f"--detect-size {text!r}: give a number of pixels, at least 32")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jaxforget.align", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input_dir", help="folder of person folders of photos: INPUT_DIR/<person>/<photo>")
    parser.add_argument("output_dir", help="where the crops, landmarks_5pt.txt and report.json go (new, empty, "
                        "or an earlier run of this command to resume)")
    parser.add_argument("--size", type=parse_size, default=(112, 112), metavar="HxW",
                        help="crop size: 112x112 (InsightFace / ArcFace template, default) or 112x96 "
                        "(SphereFace / MobileFaceNet: the same template, central 96 columns)")
    parser.add_argument("--detector", choices=tuple(detect.DETECTORS), default=detect.DEFAULT_DETECTOR,
                        help="dlib (default: needs only the align extra) or scrfd (InsightFace's own detector, "
                        "the one a deployed buffalo_s / buffalo_l system crops with; needs the onnx extra and "
                        "the pack's files)")
    parser.add_argument("--no-cnn", action="store_true",
                        help="dlib: do not fall back to dlib's CNN detector where HOG finds no face (faster, finds fewer)")
    parser.add_argument("--detector-model", metavar="ONNX",
                        help=f"scrfd: SCRFD with keypoints as ONNX (default {detect.SCRFD_MODEL}, "
                        "the buffalo_s pack's file; nothing is downloaded)")
    parser.add_argument("--descriptor-model", metavar="ONNX",
                        help="scrfd: the recognition model whose embeddings pick the person's face in a photo with "
                        f"several faces (default {detect.SCRFD_DESCRIPTOR}, the same pack's)")
    parser.add_argument("--detect-size", type=detect_size, default=None, metavar="PIXELS",
                        help="dlib: long side larger photos are downscaled to for detection (default 700); "
                        "scrfd: side of the square network input, a multiple of 32 (default 640, InsightFace's)")
    args = parser.parse_args(argv)
    for flag, owner in ONLY_FOR.items():
        if getattr(args, flag) not in (None, False) and args.detector != owner:
            parser.error(f"--{flag.replace('_', '-')} is for --detector={owner}, not --detector={args.detector}")
    if args.detector == "scrfd" and args.detect_size is not None and args.detect_size % 32:
        parser.error(f"--detect-size {args.detect_size}: scrfd's input side must be a multiple of 32, e.g. 640")
    if args.detect_size is None:
        args.detect_size = DEFAULT_DETECT_SIZE[args.detector]
    return args


def make_detector(args: argparse.Namespace) -> detect.Detector:
    """The detector the flags ask for (a missing or wrong model file: :class:`detect.DetectorFileError`)."""
    if args.detector == "dlib":
        return detect.make_detector("dlib", cnn=not args.no_cnn, detect_size=args.detect_size)
    return detect.make_detector("scrfd", model=args.detector_model or detect.SCRFD_MODEL,
                                descriptor_model=args.descriptor_model or detect.SCRFD_DESCRIPTOR,
                                detect_size=args.detect_size)


def summary(report: dict[str, Any], output_dir: str, shown: int = 5) -> str:
    """The printed summary of a report: counts, then the first photos without a crop."""
    c, rows = report["counts"], report["images"]
    h, w = report["settings"]["size"]
    largest = sum(r.get("chosen") == "largest" for r in rows)
    people = f"{c['people']} {'person' if c['people'] == 1 else 'people'}"
    how = f" ({c['several'] - largest} closest to the person's other photos, {largest} largest face)" if c["several"] else ""
    lines = [
        f"aligned {c['found'] + c['several']} of {c['images']} photos of {people} into {output_dir} ({h}x{w})",
        f"  found {c['found']}, several {c['several']}{how}, none {c['none']}, unreadable {c['unreadable']}",
    ]
    for status in ("none", "unreadable"):
        names = [r["image"] for r in rows if r["status"] == status]
        if names:
            more = f" and {len(names) - shown} more" if len(names) > shown else ""
            lines.append(f"  {status}: {', '.join(names[:shown])}{more}")
    lines.append(f"  landmarks: {align_photos.LANDMARKS_FILE}, per-photo report: {align_photos.REPORT_FILE}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    try:
        people = align_photos.list_people(args.input_dir)
        detector = make_detector(args)
        bar = Progress("align", total=sum(len(f) for f in people.values()), every_s=2.0)
        report = align_photos.align_folder(args.input_dir, args.output_dir, detector, args.size, progress=bar.update)
        bar.close()
    except (DataError, detect.DetectorUnavailableError) as e:
        raise UserError(str(e)) from None
    except detect.DetectorFileError as e:  # names the flag that gave the file
        raise UserError(f"{FILE_FLAGS[e.option]} {e}") from None
    except OSError as e:  # the file system: a folder that cannot be read or written, a full disk
        raise UserError(f"{e}; check the folder's permissions and free space") from None
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary(report, args.output_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
