"""SCRFD, InsightFace's face detector: the input it takes and the decoding of what it returns.

Pure numpy (no model, no onnxruntime): :class:`jaxforget.data.detect.ScrfdDetector` runs the
network and uses these. The steps are InsightFace's (``insightface.model_zoo.scrfd.SCRFD``):

* :func:`letterbox`: the photo resized, aspect kept, so that its long side fills a square
  ``size x size`` input, placed at the top-left corner, the rest black; ``det_scale`` is the
  resized height over the photo's. Fed as RGB ``(x - 127.5) / 128``, NCHW.
* The network answers, for each stride 8, 16, 32, a score, four distances and ten keypoint
  offsets per anchor; a ``(size / stride)^2`` grid with :data:`ANCHORS_PER_CELL` anchors per
  cell, anchors in row-major cell order, the anchors of one cell next to each other, all centred
  on the cell's corner ``(column * stride, row * stride)`` (:func:`anchor_centres`).
* :func:`decode`: anchors scoring at least the threshold; distances times the stride give the
  box ``(cx - left, cy - top, cx + right, cy + bottom)`` (:func:`distance_to_box`) and the
  keypoint offsets times the stride the five points ``(cx + dx, cy + dy)``
  (:func:`distance_to_keypoints`), divided by ``det_scale`` into the photo's pixels.
* :func:`nms`: greedy non-maximum suppression in score order with InsightFace's inclusive box
  areas (``(x2 - x1 + 1) * (y2 - y1 + 1)``), dropping boxes whose IoU with a kept one exceeds the
  threshold.

The keypoints come in the order of the five-point template: left eye, right eye, nose tip, left
and right mouth corners (left and right as seen in the image).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

#: Strides of SCRFD's three output levels, and anchors per grid cell (InsightFace's ``_feat_stride_fpn``
#: and ``_num_anchors`` for the 9-output models with keypoints).
STRIDES = (8, 16, 32)
ANCHORS_PER_CELL = 2
#: Input normalisation: ``(x - mean) / std`` on RGB.
INPUT_MEAN, INPUT_STD = 127.5, 128.0
#: InsightFace's defaults: the input side, the score threshold and the NMS IoU threshold.
INPUT_SIZE = 640
SCORE_THRESHOLD = 0.5
NMS_THRESHOLD = 0.4


def letterbox(photo: Image.Image, size: int = INPUT_SIZE) -> tuple[np.ndarray, float]:
    """The network input ``float32 (1, 3, size, size)`` of an RGB photo, and ``det_scale``.

    Sizes are truncated as InsightFace truncates them (``int(size / (h / w))``); the resize is
    PIL's bilinear (InsightFace's OpenCV ``INTER_LINEAR``, which does not low-pass when it shrinks,
    can differ by a few grey levels on detailed photos).
    """
    w, h = photo.size
    if h / w > 1.0:
        new_h, new_w = size, max(1, int(size / (h / w)))
    else:
        new_w, new_h = size, max(1, int(size * (h / w)))
    canvas = np.zeros((size, size, 3), np.float32)
    canvas[:new_h, :new_w] = np.asarray(photo.convert("RGB").resize((new_w, new_h), Image.Resampling.BILINEAR))
    blob = (canvas - INPUT_MEAN) / INPUT_STD
    return np.ascontiguousarray(blob.transpose(2, 0, 1)[None]), new_h / h


def anchor_centres(size: int, stride: int, per_cell: int = ANCHORS_PER_CELL) -> np.ndarray:
    """``(cells * per_cell, 2)`` anchor centres ``(x, y)`` of one level of a ``size x size`` input."""
    n = size // stride
    rows, cols = np.mgrid[:n, :n]
    centres = np.stack([cols, rows], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(centres, per_cell, axis=0)


def distance_to_box(centres: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Boxes ``(n, 4)`` ``(x1, y1, x2, y2)`` from centres ``(n, 2)`` and distances ``(n, 4)``
    to the left, top, right and bottom edges."""
    c, d = np.asarray(centres), np.asarray(distances)
    return np.concatenate([c - d[:, :2], c + d[:, 2:4]], axis=1)


def distance_to_keypoints(centres: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Keypoints ``(n, k, 2)`` from centres ``(n, 2)`` and offsets ``(n, 2k)`` ``(dx, dy, ...)``."""
    o = np.asarray(offsets)
    return np.asarray(centres)[:, None, :] + o.reshape(len(o), o.shape[1] // 2, 2)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float = NMS_THRESHOLD) -> np.ndarray:
    """Indices of the boxes kept by greedy NMS, highest score first."""
    boxes, scores = np.asarray(boxes, np.float64), np.asarray(scores, np.float64)
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou <= threshold]
    return np.asarray(keep, np.int64)


def split_outputs(outputs: Sequence[np.ndarray], size: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The network's nine outputs (scores, boxes, keypoints, each at strides 8, 16, 32, in that
    order; a leading batch axis of 1 is dropped) as ``(scores (n,), distances (n, 4),
    offsets (n, 10))`` per stride. Raises ValueError when they are not SCRFD's with keypoints."""
    levels = len(STRIDES)
    if len(outputs) != 3 * levels:
        raise ValueError(f"expected {3 * levels} outputs (score, bbox, kps at strides {STRIDES}); got {len(outputs)}: "
                         "not an SCRFD model with keypoints (e.g. scrfd_500m_bnkps.onnx)")
    out = []
    for i, stride in enumerate(STRIDES):
        n = (size // stride) ** 2 * ANCHORS_PER_CELL
        parts = []
        for j, width in enumerate((1, 4, 10)):
            a = np.asarray(outputs[i + j * levels])
            a = a[0] if a.ndim == 3 else a
            if a.shape != (n, width):
                raise ValueError(f"output {i + j * levels} has shape {a.shape}; SCRFD with keypoints at stride {stride} "
                                 f"on a {size}x{size} input gives {(n, width)}")
            parts.append(a)
        out.append((parts[0][:, 0], parts[1], parts[2]))
    return out


def decode(outputs: Sequence[np.ndarray], size: int, det_scale: float = 1.0, score_threshold: float = SCORE_THRESHOLD,
           nms_threshold: float = NMS_THRESHOLD) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The faces of one input: ``boxes (k, 4)``, ``scores (k,)``, ``keypoints (k, 5, 2)`` in the
    photo's pixels (network coordinates over ``det_scale``), highest score first, after NMS."""
    boxes, scores, points = [], [], []
    for (score, dist, offs), stride in zip(split_outputs(outputs, size), STRIDES):
        hit = score >= score_threshold
        centres = anchor_centres(size, stride)[hit]
        boxes.append(distance_to_box(centres, dist[hit] * stride))
        points.append(distance_to_keypoints(centres, offs[hit] * stride))
        scores.append(score[hit])
    boxes_a = np.concatenate(boxes).astype(np.float64) / det_scale
    points_a = np.concatenate(points).astype(np.float64) / det_scale
    scores_a = np.concatenate(scores).astype(np.float64)
    keep = nms(boxes_a, scores_a, nms_threshold)
    return boxes_a[keep], scores_a[keep], points_a[keep]
