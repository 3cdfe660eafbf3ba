"""The grooves of the face below the nose (the mouth line) are filled with skin, and no tissue changes there."""

from __future__ import annotations

import numpy as np
import pytest
from truth_detector import TruthDetector

from defacer.distort import MOUTH_BALL_MM, _surface_height
from defacer.labels import Label
from defacer.phantom import make_phantom
from defacer.pipeline import DefaceOptions, deface

SPACING = 2.0
#: A mouth line carved into the phantom's face below its nose: R and S ranges (mm from the grid's
#: centre) and depth (voxels). The phantom's nose ends 64 mm below the centre.
GROOVE_R_MM = (-20.0, 20.0)
GROOVE_S_MM = (-80.0, -76.0)
GROOVE_DEPTH = 3


@pytest.fixture(scope="module")
def mouthed():
    """The phantom with a mouth line: the front GROOVE_DEPTH voxels of the face cut out below the nose."""
    phantom = make_phantom(SPACING, seed=3)
    raw = phantom.volume.raw.copy()
    r, _, s = [(np.arange(n) - (n - 1) / 2.0) * SPACING for n in raw.shape]
    rows = np.flatnonzero((r >= GROOVE_R_MM[0]) & (r <= GROOVE_R_MM[1]))
    cols = np.flatnonzero((s >= GROOVE_S_MM[0]) & (s <= GROOVE_S_MM[1]))
    box = np.ix_(rows, np.arange(raw.shape[1]), cols)
    height, present = _surface_height(phantom.volume.values()[box] > 300)
    assert present.all(), "the groove lies on the face"
    a = np.arange(raw.shape[1])[None, :, None]
    groove = (a > height[:, None, :] - GROOVE_DEPTH) & (a <= height[:, None, :])
    carved = raw[box]
    carved[groove] = 0
    raw[box] = carved
    volume = phantom.volume.with_raw(raw)
    return phantom, volume, (rows, cols), height


def test_mouth_line_below_the_nose_is_filled_with_skin(mouthed):
    """The carved groove (6 mm deep) is filled back to within a voxel of the face around it."""
    phantom, volume, (rows, cols), height = mouthed
    box = np.ix_(rows, np.arange(volume.shape[1]), cols)
    carved_height, _ = _surface_height(volume.values()[box] > 300)
    assert (height - carved_height).min() >= GROOVE_DEPTH - 1, "the groove is there before defacing"
    # nose_scale 1: the nose removal is the detected nose only, so what changes below it is the fill
    result = deface(volume, TruthDetector(phantom.labels), DefaceOptions(features=("nose",), nose_scale=1.0))
    after, present = _surface_height(result.volume.values()[box] > 300)
    assert present.all()
    assert (height - after).max() <= 1, "the mouth line is still a groove after defacing"
    edit = next(e for e in result.provenance["edits"] if e["feature"] == "nose")
    assert edit["mouth_fill"]["ball_mm"] == MOUTH_BALL_MM
    assert edit["mouth_fill"]["voxels"] > 0


def test_mouth_fill_changes_no_tissue_and_nothing_beside_the_nose(mouthed):
    """Below the nose only air becomes skin; nothing beside or above the nose is filled."""
    phantom, volume, _, _ = mouthed
    result = deface(volume, TruthDetector(phantom.labels), DefaceOptions(features=("nose",), nose_scale=1.0))
    nose = np.nonzero(phantom.labels == Label.NOSE)
    changed = result.edit_mask == Label.NOSE
    below = changed.copy()
    below[:, :, nose[2].min():] = False
    assert below.any()
    threshold = result.provenance["head"]["threshold"]
    assert (volume.values()[below] <= threshold).all(), "the mouth fill changed tissue"
    assert (result.volume.values()[below] > volume.values()[below]).all(), "the fill only raises air to skin"
    outside_nose_box = changed.copy()
    outside_nose_box[nose[0].min():nose[0].max() + 1, nose[1].min():nose[1].max() + 1,
                     nose[2].min():nose[2].max() + 1] = False
    assert not outside_nose_box[:, :, nose[2].min():].any(), "the fill reached beside or above the nose"
