"""A head holder's plate pressed against the ear is no part of the auricle (defacer.auricle.standing_sheets).

A CT head holder (ge-headct_tilted_dicom: a ~320 HU plastic plate, about 76 x 101 mm, 3-4 mm thick,
following the head 5-20 mm off it and centred 18 mm posterior of the auricle) touches the auricle's
lateral face: the opening that delimits the auricle also separates the plate, and through the ear the
plate joined the ear's protrusion (12.6 cm^3 of tissue far from every feature changed there).  The
phantom gets such a plate, of the ear's own intensity (intensity does not tell them apart).
"""

from __future__ import annotations

import numpy as np
import pytest
from auricle_grid import SPACING
from auricle_grid import inside_head as _inside_head
from auricle_grid import voxel as _voxel
from auricle_grid import world as _world

from defacer.auricle import delimit_auricle, standing_sheets
from defacer.distort_ears import distort_ears
from defacer.head import analyse_head, depth_below_surface
from defacer.labels import Label
from defacer.phantom import make_phantom


@pytest.fixture(scope="module")
def held():
    """The phantom with a holder plate beside its right head: (labels, image, plate, head, depth).

    The plate is a 4 mm layer 12-16 mm off the head (the auricle stands 4-11 mm off it: the plate
    touches its lateral face), 76 mm along A and 100 mm along S, centred 18 mm posterior of the
    auricle, with the ear's intensity.
    """
    made = make_phantom(2.0, seed=3)
    image = made.volume.values(np.float32)
    x, y, z = _world(image.shape)
    plate = ((x > 0) & _inside_head(x, y, z, -16.0) & ~_inside_head(x, y, z, -12.0)
             & (np.abs(y + 24.0) <= 38.0) & (np.abs(z + 4.0) <= 50.0))
    plate = np.broadcast_to(plate, image.shape)
    image = image.copy()
    image[plate] = 650.0
    head = analyse_head(image, SPACING)
    return made.labels, image, plate, head, depth_below_surface(head, SPACING)


def _off_the_ear(labels: np.ndarray, plate: np.ndarray) -> np.ndarray:
    """The plate farther than 4 mm (two voxels) from the auricle: 3,509 voxels."""
    from scipy import ndimage as ndi

    return plate & ~ndi.binary_dilation(labels == Label.EARS, iterations=2)


def _right_ear(labels: np.ndarray, plate: np.ndarray) -> np.ndarray:
    """The right auricle where the plate did not overwrite it (8 voxels did)."""
    x = _world(labels.shape)[0]
    return (labels == Label.EARS) & (x > 0) & ~plate


@pytest.mark.parametrize(("reference_mask", "coverage", "plate_left"), [(False, 0.99, 0.01), (True, 0.9, 0.05)])
def test_a_holder_plate_pressed_against_the_ear_is_not_the_auricle(held, reference_mask, coverage, plate_left) -> None:
    """From the ear: by the distortion's rule, or by the reference rule's head mask with 20 mm followed
    beyond the search (the detector's ear search), the auricle (0.997 / 0.928; 1.0 / 0.928 before), and little of
    the plate off it: 5 / 145 of its 3,509 voxels (before standing_sheets: 1,614 / 3,381; the reference
    rule's smoothing, a 1 mm Gaussian on 2 mm voxels, thickens the plate's edges beyond the sheet's 8 mm)."""
    labels, image, plate, head, depth = held
    follow = 20.0 if reference_mask else 0.0
    found = delimit_auricle(image, head, depth, SPACING, _voxel((80.0, -6.0, -4.0), image.shape), (1.0, 0.0, 0.0),
                            follow_mm=follow, reference_mask=reference_mask)
    assert found is not None
    mask = np.zeros(image.shape, dtype=bool)
    mask[found.box] = found.mask
    assert mask[_right_ear(labels, plate)].mean() >= coverage
    off = _off_the_ear(labels, plate)
    assert (mask & off).sum() <= plate_left * off.sum()


def test_the_ear_edit_leaves_the_holder_plate(held) -> None:
    """The ear distortion from a small detection at the lobule changes the auricle (0.997), and at most
    1 % of the plate off it (5 voxels; 1,572 before standing_sheets)."""
    labels, image, plate, head, depth = held
    x, y, z = _world(image.shape)
    ears = (labels == Label.EARS) & (((x - 82.0) ** 2 + (y + 6.0) ** 2 + (z + 22.0) ** 2) <= 6.0**2)
    edits = distort_ears(image, ears, head, SPACING, np.random.default_rng(0), depth=depth)
    changed = np.zeros(image.shape, dtype=bool)
    for edit in edits:
        changed[edit.box] |= edit.mask
    assert changed[_right_ear(labels, plate)].mean() >= 0.97
    off = _off_the_ear(labels, plate)
    assert (changed & off).sum() <= 0.01 * off.sum()


def test_standing_sheets_finds_the_plate_and_never_an_auricle(held) -> None:
    """Seen from the right, the plate is a sheet (0.999 of it off the ear; 2 auricle voxels where they
    touch); the left auricle, standing off the head by itself, is none."""
    labels, image, plate, head, depth = held
    solid = (image > head.threshold) | head.upsample(depth > 4.0, tuple(slice(0, n) for n in image.shape))
    right = standing_sheets(solid, 0, True, SPACING)
    assert right[_off_the_ear(labels, plate)].mean() >= 0.99
    ear = _right_ear(labels, plate)
    assert right[ear].sum() <= 0.01 * ear.sum()
    assert not standing_sheets(solid, 0, False, SPACING).any()
