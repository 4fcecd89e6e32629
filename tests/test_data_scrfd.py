"""SCRFD's input and decoding on synthetic outputs: anchor centres, distances, keypoints, NMS.

No model is needed: the outputs are made by hand, so each number below is known exactly. The real
network on real photos is tested in tests/test_data_detect.py.
"""

import numpy as np
import pytest
from PIL import Image

from jaxforget.data import scrfd


def test_anchor_centres_are_cell_corners_two_per_cell_row_major():
    c = scrfd.anchor_centres(64, 32)
    assert c.shape == (8, 2)
    np.testing.assert_array_equal(c, [[0, 0], [0, 0], [32, 0], [32, 0], [0, 32], [0, 32], [32, 32], [32, 32]])
    assert scrfd.anchor_centres(640, 8).shape == (80 * 80 * 2, 2)
    assert tuple(scrfd.anchor_centres(640, 8)[2 * 81]) == (8, 8)  # cell (row 1, column 1)


def test_distances_give_boxes_and_keypoints():
    centres = np.array([[10.0, 20.0], [0.0, 0.0]])
    boxes = scrfd.distance_to_box(centres, np.array([[1.0, 2.0, 3.0, 4.0], [0, 0, 5, 6]]))
    np.testing.assert_array_equal(boxes, [[9, 18, 13, 24], [0, 0, 5, 6]])
    kps = scrfd.distance_to_keypoints(centres, np.arange(20, dtype=float).reshape(2, 10))
    assert kps.shape == (2, 5, 2)
    np.testing.assert_array_equal(kps[0, 1], [12, 23])  # (10 + 2, 20 + 3)
    np.testing.assert_array_equal(kps[1, 4], [18, 19])
    assert scrfd.distance_to_keypoints(np.zeros((0, 2)), np.zeros((0, 10))).shape == (0, 5, 2)


def test_nms_keeps_the_best_of_overlapping_boxes_with_inclusive_areas():
    # IoU with InsightFace's inclusive areas: inter 2*3 = 6 of 9 + 9 - 6 -> 0.5 (above 0.4: dropped);
    # with exclusive areas it would be 2 / 6 = 0.33 and the box kept.
    boxes = np.array([[1, 0, 3, 2], [0, 0, 2, 2], [50, 50, 60, 60], [51, 50, 61, 60]], float)
    scores = np.array([0.6, 0.9, 0.7, 0.55])
    assert list(scrfd.nms(boxes, scores, 0.4)) == [1, 2]
    assert list(scrfd.nms(boxes, scores, 0.95)) == [1, 2, 0, 3]  # nothing overlaps that much
    assert scrfd.nms(np.zeros((0, 4)), np.zeros(0)).shape == (0,)


def _outputs(size, batch_axis=False):
    """Zero-score outputs for a ``size`` input, as the network orders them, and the anchor rows."""
    levels = [(size // s) ** 2 * scrfd.ANCHORS_PER_CELL for s in scrfd.STRIDES]
    outs = [np.zeros((n, w), np.float32) for w in (1, 4, 10) for n in levels]
    return [o[None] for o in outs] if batch_axis else outs


@pytest.mark.parametrize("batch_axis", [False, True])
def test_decode_scores_boxes_keypoints_nms_and_scale(batch_axis):
    size = 64
    outs = _outputs(size, batch_axis)
    sel = (lambda a: a[0]) if batch_axis else (lambda a: a)
    score16, box16, kps16 = (sel(outs[1 + 3 * j]) for j in range(3))  # stride 16: a 4x4 grid
    i = (1 * 4 + 2) * 2 + 1  # row 1, column 2, second anchor: centre (32, 16)
    score16[i] = 0.9
    box16[i] = [1, 2, 3, 4]  # x stride 16
    kps16[i] = [0.5, 0.5, 1.5, 0.5, 1, 1, 0.5, 2, 1.5, 2]
    # The same face seen by a stride-8 anchor with a lower score: suppressed by NMS.
    score8, box8 = sel(outs[0]), sel(outs[3])
    j = (2 * 8 + 4) * 2  # row 2, column 4: centre (32, 16)
    score8[j], box8[j] = 0.7, [2, 4, 6, 8]
    # A face elsewhere at stride 32, and an anchor just under the threshold.
    score32, box32 = sel(outs[2]), sel(outs[5])
    score32[7], box32[7] = 0.5, [0.25, 0.25, 0.25, 0.25]  # cell (1, 1): centre (32, 32); 0.5 counts
    score32[0] = 0.4999

    boxes, scores, kps = scrfd.decode(outs, size, det_scale=0.5)
    np.testing.assert_allclose(scores, [0.9, 0.5])
    np.testing.assert_allclose(boxes[0], np.array([32 - 16, 16 - 32, 32 + 48, 16 + 64]) / 0.5)
    np.testing.assert_allclose(boxes[1], np.array([24, 24, 40, 40]) / 0.5)
    np.testing.assert_allclose(kps[0], (np.array([32, 16]) + np.reshape(kps16[i], (5, 2)) * 16) / 0.5)
    # Without NMS both views of the first face stay; a high threshold leaves only the best.
    assert len(scrfd.decode(outs, size, nms_threshold=1.0)[0]) == 3
    assert len(scrfd.decode(outs, size, score_threshold=0.8)[0]) == 1
    assert [len(a) for a in scrfd.decode(_outputs(size), size)] == [0, 0, 0]


def test_decode_refuses_outputs_that_are_not_scrfd_with_keypoints():
    outs = _outputs(64)
    with pytest.raises(ValueError, match="expected 9 outputs"):
        scrfd.decode(outs[:6], 64)
    with pytest.raises(ValueError, match=r"output 4 has shape \(32, 5\)"):
        scrfd.decode(outs[:4] + [np.zeros((32, 5))] + outs[5:], 64)
    with pytest.raises(ValueError, match="stride 8"):
        scrfd.decode(outs, 640)  # outputs of a 64x64 input read as a 640x640 one


def test_letterbox_keeps_the_aspect_at_the_top_left_rgb_normalised():
    tall = Image.new("RGB", (100, 200), (255, 0, 128))
    blob, scale = scrfd.letterbox(tall, 64)
    assert blob.shape == (1, 3, 64, 64) and blob.dtype == np.float32 and scale == pytest.approx(64 / 200)
    pad = (0 - 127.5) / 128
    colour = np.broadcast_to(np.array([127.5, -127.5, 0.5])[:, None, None] / 128, (3, 64, 32))
    np.testing.assert_allclose(blob[0, :, :, :32], colour, atol=1e-6)
    np.testing.assert_allclose(blob[0, :, :, 32:], np.full((3, 64, 32), pad), atol=1e-6)
    wide = Image.new("RGB", (300, 100), (10, 20, 30))
    blob, scale = scrfd.letterbox(wide, 64)
    assert scale == pytest.approx(int(64 * 100 / 300) / 100)  # InsightFace truncates: 21 rows
    np.testing.assert_allclose(blob[0, 1, :21], np.full((21, 64), (20 - 127.5) / 128), atol=1e-6)
    np.testing.assert_allclose(blob[0, 1, 21:], np.full((43, 64), pad), atol=1e-6)
