"""studies.align_detectors: the keypoint error is in inter-ocular distances, the table reads its numbers."""

import numpy as np

from studies import align_detectors as study


def test_keypoint_error_is_mean_point_distance_over_the_inter_ocular_distance():
    ref = {"a/1.jpg": np.array([[10.0, 10], [30, 10], [20, 20], [12, 30], [28, 30]]), "a/2.jpg": np.zeros((5, 2))}
    mine = {"a/1.jpg": ref["a/1.jpg"] + [2.0, 0], "b/3.jpg": np.zeros((5, 2))}  # shifted by a tenth of 20
    assert study.keypoint_errors(mine, ref) == {"a/1.jpg": 0.1}


def test_face_frame_offsets_follow_the_eye_line():
    ref = {"a": np.array([[0.0, 0], [0, 10], [5, 5], [8, 2], [8, 8]])}  # eyes along +y: the face turned 90 degrees
    mine = {"a": ref["a"] + [[0, 1], [-1, 0], [0, 0], [0, 0], [0, 0]]}
    off = study.face_frame_offsets(mine, ref)
    np.testing.assert_allclose(off[0, :2], [[0.1, 0], [0, 0.1]], atol=1e-12)  # along, then across the eye line


def test_summary_and_table():
    s = study.summary(np.array([1.0, 2.0, 6.0]), "max")
    assert s == {"mean": 3.0, "median": 2.0, "max": 6.0} and all(type(v) is float for v in s.values())
    row = {"found": 174, "images": 175, "keypoint_error": {"mean": 0.05, "median": 0.04, "max": 0.3, "beyond_0.5": 1},
           "pixel_mad": {"mean": 11.1}, "cosine_mobilefacenet": {"mean": 0.97, "min": 0.6},
           "cosine_w600k_mbf": {"mean": 0.96, "min": 0.7}, "w600k_mbf_leave_one_out": {"mAP": 0.9936},
           "seconds_per_photo": 0.036, "cpu_seconds_per_photo": 0.05}
    lines = study.table({"scrfd": row}).splitlines()
    assert len(lines) == 3 and lines[2] == ("| scrfd | 174 / 175 | 0.0500, 0.0400, 0.300 (1) | 11.10 | 0.9700, 0.6000 | "
                                            "0.9600, 0.7000 | 99.36 | 0.036, 0.050 |")
