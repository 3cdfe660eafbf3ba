"""Found / missed / extra components, judged within 6 mm of each reference centroid."""

from __future__ import annotations

import numpy as np

from defacer.detect.metrics import dice_per_feature, feature_matches

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _maps() -> tuple[np.ndarray, np.ndarray]:
    reference = np.zeros((40, 40, 40), np.uint8)
    predicted = reference.copy()
    reference[5:10, 5:10, 5:10] = 1
    reference[25:30, 5:10, 5:10] = 1
    reference[15:20, 30:35, 10:15] = 3
    predicted[6:11, 5:10, 5:10] = 1  # the first eye, 2 mm off
    predicted[30:35, 30:35, 30:35] = 1  # an "eye" far from both reference eyes
    return predicted, reference


def test_one_eye_found_one_missed_one_extra_and_the_ear_missed() -> None:
    predicted, reference = _maps()
    result = feature_matches(predicted, reference, AFFINE)
    assert result["eyes"] == {"in_view": 2, "found": 1, "missed": 1, "extra": 1, "centroid_mm": [2.0]}
    assert result["ears"]["in_view"] == 1 and result["ears"]["missed"] == 1
    assert result["nose"] == {"in_view": 0, "found": 0, "missed": 0, "extra": 0, "centroid_mm": []}


def test_a_label_just_beyond_six_mm_is_not_found() -> None:
    reference = np.zeros((40, 40, 40), np.uint8)
    reference[10:13, 10:13, 10:13] = 2  # centroid at voxel 11 -> 22 mm
    predicted = np.zeros_like(reference)
    predicted[15:18, 10:13, 10:13] = 2  # nearest voxel 15 -> 8 mm away
    assert feature_matches(predicted, reference, AFFINE)["nose"]["found"] == 0
    predicted[14, 11, 11] = 2  # 6 mm away: found
    assert feature_matches(predicted, reference, AFFINE)["nose"]["found"] == 1
    assert dice_per_feature(predicted, reference)["nose"] == 0.0


def test_crumbs_of_the_reference_map_are_not_features() -> None:
    predicted, reference = _maps()
    reference[38, 38, 38] = 1  # a one-voxel crumb of eye label: still two eyes in view
    assert feature_matches(predicted, reference, AFFINE)["eyes"]["in_view"] == 2
