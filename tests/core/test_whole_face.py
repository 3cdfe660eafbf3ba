"""``--whole-face`` (``DefaceOptions.whole_face``): the whole face in front of the eyes set to air, the last step
of ``--retry-stronger``.  It changes only the face region the eyes place, never the protected region or the brain,
and turns with the head's axis order."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from defacer.cli.main import main
from defacer.detect.frame import eye_frame
from defacer.detect.label_file import LabelMapDetector
from defacer.distort_face import FACE_BEHIND_MM, FACE_SIDE_MM, FACE_TOP_MM, eye_centroids
from defacer.options import DefaceOptions
from defacer.phantom import make_phantom
from defacer.pipeline import deface
from defacer.volume import Volume


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(3.0)


def _labels(phantom, labels: np.ndarray | None = None) -> LabelMapDetector:
    values = phantom.labels if labels is None else labels
    return LabelMapDetector(Volume(values.astype(np.uint8), phantom.volume.affine))


def _frame_coordinates(labels: np.ndarray, affine: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, float]:
    origin, axes, eyes_mm = eye_frame(*eye_centroids(labels == 1, affine))
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    return (world - origin) @ axes.T, eyes_mm


def test_the_whole_face_changes_only_the_face_in_front_of_the_eyes(phantom) -> None:
    detector = _labels(phantom)
    plain = deface(phantom.volume, detector, DefaceOptions())
    whole = deface(phantom.volume, detector, DefaceOptions(whole_face=True))
    extra = np.argwhere(plain.volume.raw != whole.volume.raw)
    assert len(extra) > 1000  # it removes much more than the features
    frame, eyes_mm = _frame_coordinates(phantom.labels, phantom.volume.affine, extra.astype(float))
    slack = 3.0  # one voxel
    assert frame[:, 1].min() >= -FACE_BEHIND_MM - slack  # never behind the eyes' centres
    assert frame[:, 2].max() <= FACE_TOP_MM + slack  # never above the brows
    assert np.abs(frame[:, 0]).max() <= eyes_mm / 2 + FACE_SIDE_MM + slack
    changed = whole.volume.raw != phantom.volume.raw
    assert not (changed & phantom.brain).any()
    assert whole.provenance["protection"]["changed_inside_protected"] == 0
    record = whole.provenance["whole_face"]
    assert record["done"] is True and record["voxels_written"] > 0
    assert "whole_face" not in plain.provenance
    # the face's tissue more than 15 mm in front of the eyes' centres (the nose, lips, chin's front) is gone
    tissue_before = np.argwhere(phantom.volume.raw > whole.provenance["head"]["threshold"])
    tissue_after = np.argwhere(whole.volume.raw > whole.provenance["head"]["threshold"])
    front_before = _frame_coordinates(phantom.labels, phantom.volume.affine, tissue_before.astype(float))[0]
    front_after = _frame_coordinates(phantom.labels, phantom.volume.affine, tissue_after.astype(float))[0]
    ahead_before = np.count_nonzero((front_before[:, 1] > 15) & (front_before[:, 2] < FACE_TOP_MM))
    ahead_after = np.count_nonzero((front_after[:, 1] > 15) & (front_after[:, 2] < FACE_TOP_MM))
    assert ahead_before > 300 and ahead_after < 0.05 * ahead_before, (ahead_before, ahead_after)


def test_the_whole_face_follows_the_axis_order(phantom, tmp_path: Path) -> None:
    """The same head stored in another axis order loses the same voxels (the region is placed in world mm)."""
    other = make_phantom(3.0, axcodes="LPI")
    a = deface(phantom.volume, _labels(phantom), DefaceOptions(whole_face=True))
    b = deface(other.volume, _labels(other), DefaceOptions(whole_face=True))
    assert np.count_nonzero(phantom.volume.raw != a.volume.raw) == np.count_nonzero(other.volume.raw != b.volume.raw)
    assert a.provenance["whole_face"]["eyes_midpoint_mm"] == b.provenance["whole_face"]["eyes_midpoint_mm"]


def test_without_two_eyes_the_whole_face_is_not_removed_and_a_warning_says_why(phantom) -> None:
    labels = phantom.labels.copy()
    eyes = np.argwhere(labels == 1)
    labels[labels == 1] = 0
    one = eyes[eyes[:, 0] < np.median(eyes[:, 0])]
    labels[tuple(one.T)] = 1
    plain = deface(phantom.volume, _labels(phantom, labels), DefaceOptions())
    whole = deface(phantom.volume, _labels(phantom, labels), DefaceOptions(whole_face=True))
    assert np.array_equal(plain.volume.raw, whole.volume.raw)
    assert whole.provenance["whole_face"]["done"] is False
    assert any("whole face not removed" in w and "1 eye" in w for w in whole.provenance["warnings"])


def test_the_command_line_option(phantom, tmp_path: Path) -> None:
    scan, labels = tmp_path / "head.nii.gz", tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(phantom.volume.raw, phantom.volume.affine), str(scan))
    nib.save(nib.Nifti1Image(phantom.labels.astype(np.uint8), phantom.volume.affine), str(labels))
    out = tmp_path / "out.nii.gz"
    assert main(["deface", str(scan), str(out), "--labels", str(labels), "--whole-face"]) == 0
    sidecar = json.loads((tmp_path / "out.defacer.json").read_text())
    assert sidecar["options"]["whole_face"] is True and sidecar["whole_face"]["done"] is True
    with pytest.raises(ValueError, match="whole_face"):
        DefaceOptions(whole_face="yes")  # type: ignore[arg-type]
