"""A CT rescaled out of Hounsfield units (to 0-1, or to 0-255 by an 8-bit export) keeps the constant round its
round reconstruction field, now as the lowest value just below the air: head.outside_field_value (< -1100 HU) no
longer finds it, and before CTPAD the whole field was sealed as the head (ge-headct_tilted rescaled to 0-1: 1.82x,
the face read as deep and protected, 0.00 of its eyes, nose and ears changed, no warning).
head.field_padding_value finds that constant on any scale: the corners' value, rare inside the field's footprint
carried through every slice.  An MR whose air is exact 0, or a masked head, is not taken for it."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from truth_detector import TruthDetector

from defacer.head import analyse_head, field_padding_value, padding_value
from defacer.labels import Label
from defacer.phantom import make_phantom
from defacer.pipeline import DefaceOptions, deface
from defacer.protection_check import changed_indices, changed_mask, check_protection_at
from defacer.volume import Volume, canonical_reorientation

REFERENCE_LABELS = Path(__file__).resolve().parents[2] / "reference_labels"
FEATURES = (Label.EYES, Label.NOSE, Label.EARS)


def _rescaled(volume: Volume, top: float = 1.0) -> Volume:
    """``volume`` linearly to 0..``top`` (its minimum to 0, its maximum to ``top``); rounded where ``top`` is 255."""
    values = volume.values(np.float32)
    lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) / (hi - lo) * top
    if top == 255.0:
        scaled = np.round(scaled)
    return Volume(scaled.astype(np.float32), volume.affine, 1.0, 0.0, volume.format)


def _defaced_as_in_hu(hu: Volume, before, scaled: Volume, result, labels: np.ndarray) -> None:
    """The rescaled scan's defacing against the HU scan's: the same head, each feature changed at least 0.8x as much
    (and the HU one more than 0.1), no changed voxel in the HU scan's protected region."""
    depth, head, reorientation, _ = before._protection
    ratio = float(result._protection[1].sealed_coarse.sum()) / float(head.sealed_coarse.sum())
    assert 0.98 < ratio < 1.02
    for label in FEATURES:
        stored = float(changed_mask(hu.raw, before.volume.raw)[labels == label].mean())
        done = float(changed_mask(scaled.raw, result.volume.raw)[labels == label].mean())
        assert stored > 0.1 and done >= 0.8 * stored, label
    changed_at = reorientation.indices_to_ras(changed_indices(scaled.raw, result.volume.raw))
    check = check_protection_at(changed_at, head, depth, reorientation.ras_spacing, DefaceOptions().protect_depth_mm)
    assert check.changed_voxels > 0 and check.changed_inside_protected == 0


def _round_field(radius: float, shape: tuple[int, int, int], axis: int) -> np.ndarray:
    """True inside a cylinder of ``radius`` voxels along ``axis``, centred on the grid."""
    plane = [n for i, n in enumerate(shape) if i != axis]
    a, b = np.ogrid[: plane[0], : plane[1]]
    disc = (a - (plane[0] - 1) / 2) ** 2 + (b - (plane[1] - 1) / 2) ** 2 <= radius**2
    return np.broadcast_to(np.expand_dims(disc, axis), shape)


def test_the_constant_round_a_round_field_is_found_on_any_scale():
    rng = np.random.default_rng(0)
    shape = (40, 40, 30)
    field = _round_field(19.0, shape, axis=2)
    air = rng.normal(0.17, 0.01, shape)
    padded = np.where(field, air, 0.0)
    assert field_padding_value(padded) == 0.0
    assert padding_value(padded) == 0.0
    assert field_padding_value(np.round(padded * 255)) == 0.0  # 8-bit: the air (43 +- 3) never rounds to 0
    # along another axis too
    assert field_padding_value(np.where(_round_field(14.0, shape, axis=0), air, 5.0)) == 5.0
    # an MR whose air is exact 0 (integer noise): 0 all over the field's footprint
    mr = np.where(field, np.floor(np.abs(rng.normal(0.0, 1.2, shape))), 0.0)
    assert field_padding_value(mr) is None
    # a masked head: 0 wherever the head is not, and the head changes from slice to slice
    z, y, x = np.ogrid[:40, :40, :30]
    head = ((z - 20) / 15.0) ** 2 + ((y - 20) / 17.0) ** 2 + ((x - 15) / 13.0) ** 2 <= 1.0
    assert field_padding_value(np.where(head, 500.0 + rng.normal(0, 20, shape), 0.0)) is None
    # no constant in the corners, or one too rare to be a frame
    assert field_padding_value(air) is None
    assert field_padding_value(np.where(_round_field(27.0, shape, axis=2), air, 0.0)) is None  # < 2 % outside


@pytest.fixture(scope="module")
def ct_in_a_round_field():
    """The CT phantom (HU, 2 mm) in a 264 x 264 mm slice whose outside of a 125 mm round field holds -1500 HU (as a
    scanner writes it), and the same rescaled to 0-1 and to 0-255."""
    phantom = make_phantom(2.0, fov_mm=(264.0, 264.0, 240.0), contrast="CT", seed=5)
    values = phantom.volume.values(np.float32)
    hu = np.where(_round_field(62.5, values.shape, axis=2), values, np.float32(-1500.0))
    volume = Volume(hu, phantom.volume.affine, 1.0, 0.0, phantom.volume.format)
    return phantom, volume


@pytest.mark.parametrize("top", [1.0, 255.0])
def test_a_ct_rescaled_out_of_hu_keeps_its_head_and_is_defaced(ct_in_a_round_field, top):
    """The rescaled CT's first sealed head is the HU one's (before: the round field, 4.07x, outline 1.71).  End to
    end (the true labels as detector): the head is the HU one's (before: 1.45x at 0-255, where no level of the
    outline search was taken; at 0-1 the search took one and saved it), eyes, nose and ears are changed about as
    much as in HU, and no changed voxel lies in the HU scan's protected region or the brain."""
    phantom, hu = ct_in_a_round_field
    scaled = _rescaled(hu, top)
    spacing = (2.0, 2.0, 2.0)  # the phantom is made in RAS
    first = analyse_head(scaled.values(np.float32), spacing).sealed_coarse.sum()
    assert 0.98 < first / analyse_head(hu.values(np.float32), spacing).sealed_coarse.sum() < 1.02
    detector = TruthDetector(phantom.labels)
    before = deface(hu, detector)
    result = deface(scaled, detector)
    _defaced_as_in_hu(hu, before, scaled, result, phantom.labels)
    assert not (changed_mask(scaled.raw, result.volume.raw) & phantom.brain).any()


@pytest.mark.realdata
@pytest.mark.parametrize("top", [1.0, 255.0])
def test_the_ge_ct_rescaled_out_of_hu_is_defaced_as_in_hu(shared_data, top):
    """ge-headct_tilted (padding -1500 HU round a round field) rescaled to 0-1 / 0-255, its reference labels as
    detector.  Before: sealed 1.82x, 0.00 of each feature changed, no warning.  Now: its head is the HU one's,
    each feature changed at least 0.8x as much as in HU, nothing in the HU scan's protected region."""
    name = "ge-headct_tilted_dicom"
    records = json.loads((REFERENCE_LABELS / "provenance.json").read_text())
    from defacer.io import load_volume

    volume = load_volume(shared_data / records[name]["source"])
    reorientation = canonical_reorientation(volume.affine, volume.shape)
    labels = np.asarray(nib.load(str(REFERENCE_LABELS / f"{name}.labels.nii.gz")).dataobj, np.uint8)
    detector = TruthDetector(reorientation.to_ras(labels))
    before = deface(volume, detector)
    scaled = _rescaled(volume, top)
    result = deface(scaled, detector)
    _defaced_as_in_hu(volume, before, scaled, result, labels)


def test_slices_of_padding_only_at_the_ends_do_not_hide_the_field(ct_in_a_round_field):
    """A round field whose volume also has whole slices of padding at its ends (a CT padded or resampled into a
    taller grid): the field's footprint is carried only through the slices that hold some of it.  Before (3348ec3)
    those slices put the padding on 9 % of the prism, and the rescaled phantom's first head was 4.07x the HU
    one's."""
    _, hu = ct_in_a_round_field
    values = np.pad(hu.values(np.float32), ((0, 0), (0, 0), (6, 6)), constant_values=-1500.0)
    unit = (values - values.min()) / (values.max() - values.min())
    assert field_padding_value(unit[::2, ::2, ::2]) == 0.0
    spacing = (2.0, 2.0, 2.0)
    ratio = analyse_head(unit, spacing).sealed_coarse.sum() / analyse_head(values, spacing).sealed_coarse.sum()
    assert 0.98 < ratio < 1.02
