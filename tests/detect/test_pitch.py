"""A nodded head's pitch, read from where its ears lie below its eyes (defacer.detect.frame.head_pitch)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from real_data import SHARED_DATA

from defacer.detect.frame import EAR_DISTANCE_MM, PITCH_AGREE_DEG, head_pitch
from defacer.detect.metrics import dice_per_feature
from defacer.detect.model import load_default_detector
from defacer.detect.pose import turned_affine
from defacer.io import load_volume
from defacer.phantom import make_phantom
from defacer.volume import canonical_reorientation

DATA = SHARED_DATA / "heads"
REFERENCE = Path(__file__).resolve().parents[2] / "reference_labels"

#: A head as the reference labels place its features on average (RAS mm): the eyes' centroids and the ears' 91 mm
#: behind and 29 mm below them (frame.EAR_OFFSET_MM), i.e. the eyes 17.7 degrees above the ears seen from the side.
EYES = [np.array([-31.0, 74.0, -8.0]), np.array([31.0, 74.0, -8.0])]
EARS = [np.array([-72.0, -17.0, -37.0]), np.array([72.0, -17.0, -37.0])]


def _pitched(points: list[np.ndarray], degrees: float) -> list[np.ndarray]:
    """``points`` turned about the R axis through the origin (positive: A towards S, the chin raised)."""
    a = np.radians(degrees)
    turn = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(a), -np.sin(a)], [0.0, np.sin(a), np.cos(a)]])
    return [turn @ p for p in points]


@pytest.mark.parametrize("degrees", [0.0, 20.0, -25.0, 40.0])
def test_the_pitch_is_the_turn_about_the_eyes_axis(degrees) -> None:
    eyes, ears = _pitched(EYES, degrees), _pitched(EARS, degrees)
    assert head_pitch(eyes[0], eyes[1], ears) == pytest.approx(degrees - 0.3, abs=0.1)
    assert head_pitch(eyes[1], eyes[0], ears[:1]) == pytest.approx(degrees - 0.3, abs=0.1)  # one ear, any eye order


def test_a_yawed_head_reads_the_same_pitch() -> None:
    a = np.radians(30.0)
    yaw = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    eyes, ears = ([yaw @ p for p in points] for points in (_pitched(EYES, 20.0), _pitched(EARS, 20.0)))
    assert head_pitch(eyes[0], eyes[1], ears) == pytest.approx(19.7, abs=0.1)


def test_no_ear_where_a_human_ear_lies_no_pitch() -> None:
    assert head_pitch(EYES[0], EYES[1], []) is None
    cheek = np.array([60.0, 40.0, -40.0])  # a wrong ear on the cheek: 45 mm from the eyes
    assert head_pitch(EYES[0], EYES[1], [cheek]) is None
    assert head_pitch(EYES[0], EYES[1], [cheek, EARS[1]]) == pytest.approx(-0.3, abs=0.1)  # the real ear alone
    in_front = np.array([70.0, 180.0, -37.0])  # 106 mm from the eyes, but in front of them: no side view
    assert head_pitch(EYES[0], EYES[1], [in_front]) is None
    assert EAR_DISTANCE_MM[0] <= np.hypot(91.0, 29.0) <= EAR_DISTANCE_MM[1]


def _grid(degrees: float) -> np.ndarray:
    """A 1 mm RAS grid's affine pitched by ``degrees`` about R (an oblique acquisition)."""
    affine = np.eye(4)
    affine[:3, :3] = np.column_stack(_pitched([np.eye(3)[:, i] for i in range(3)], degrees))
    return affine


@pytest.mark.parametrize("head,grid,applied", [
    (20.0, 20.0, True),    # an oblique grid aligned with a nodded head (AC-PC): the ears confirm it
    (-25.0, -25.0, True),
    (0.0, 30.0, False),    # a grid tilted for another reason (a coronal oblique), the head upright: not confirmed
    (-13.0, 0.0, False),   # a grid aligned with the scanner: its frame stays, whatever the ears read (a child's)
    (20.0, 3.0, False),    # a grid within PITCH_MIN_DEG of the scanner's: as aligned
])
def test_the_grids_pitch_is_taken_only_where_the_ears_confirm_it(head, grid, applied) -> None:
    from defacer.detect.model import _pitch

    eyes, ears = _pitched(EYES, head), _pitched(EARS, head)
    record = _pitch(eyes, ears, _grid(grid))
    assert record["grid_pitch_deg"] == pytest.approx(grid, abs=0.1)
    assert record["pitch_deg"] == pytest.approx(head - 0.3, abs=0.1)
    assert record["pitch_applied"] is applied
    assert _pitch(eyes[:1], ears, _grid(grid)) == {}  # no eye pair, no frame
    assert "pitch_deg" not in _pitch(eyes, [], _grid(grid)) and not _pitch(eyes, [], _grid(grid))["pitch_applied"]


def test_the_phantom_is_not_read_as_pitched() -> None:
    """The phantom's ears (80 mm from its eyes, level with them) are no human ear's: no pitch, labels as before."""
    ph = make_phantom(2.0, seed=3)
    reo = canonical_reorientation(ph.volume.affine, ph.volume.shape)
    detector = load_default_detector()
    detector.predict(reo.to_ras(ph.volume.values()), reo.ras_affine)
    assert "pitch_deg" not in detector.last_pose


@pytest.mark.skipif(not DATA.is_dir(), reason="the real head scans (../shared/data/heads) are not here")
def test_a_real_head_nodded_keeps_its_nose_and_eyes() -> None:
    """ixi014 with its header turned by +20 / -25 degrees about R (an oblique acquisition: the head upright in its
    array, nodded in the world): the ears confirm the grid's pitch and the nose and eyes are re-shaped in the grid's
    frame.  Measured (shipped model): nose Dice 0.915 upright, 0.913 / 0.910 nodded (0.791 / 0.639 in the
    scanner's frame, before); eyes 0.793, 0.779 / 0.829 (0.732 / 0.795)."""
    volume = load_volume(DATA / "ixi014_T1w_2mm.nii.gz")
    values = volume.values().astype(np.float32)
    reference = np.asarray(nib.load(REFERENCE / "ixi014_T1w_2mm.labels.nii.gz").dataobj, np.uint8)
    detector = load_default_detector()
    dice, pitch = {}, {}
    for degrees in (0.0, 20.0, -25.0):
        affine = turned_affine(volume.affine, values.shape, "x", degrees)
        reo = canonical_reorientation(affine, values.shape)
        labels = reo.from_ras(detector.predict(reo.to_ras(values), reo.ras_affine))
        pose = detector.last_pose
        pitch[degrees] = pose["pitch_deg"]
        assert pose["pitch_applied"] is (degrees != 0.0), pose
        assert pose["grid_pitch_deg"] == pytest.approx(degrees, abs=0.5), pose
        dice[degrees] = dice_per_feature(labels, reference)
    assert abs(pitch[0.0]) < PITCH_AGREE_DEG, pitch
    for degrees in (20.0, -25.0):
        assert pitch[degrees] == pytest.approx(pitch[0.0] + degrees, abs=5.0), pitch
        assert dice[degrees]["nose"] >= dice[0.0]["nose"] - 0.05, dice
        assert dice[degrees]["eyes"] >= dice[0.0]["eyes"] - 0.05, dice
