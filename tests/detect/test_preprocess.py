"""The detector's box: placement, normalisation and the exact way back onto the input grid."""

from __future__ import annotations

import numpy as np

from defacer.detect.preprocess import (
    BOX_SHAPE,
    BOX_SPACING,
    Box,
    box_to_grid,
    labels_to_box,
    normalise,
    to_box,
)
from defacer.phantom import make_phantom
from defacer.volume import canonical_reorientation


def _ras_phantom(voxel: float = 2.0, axcodes: str = "RAS"):
    ph = make_phantom(voxel, axcodes=axcodes)
    reo = canonical_reorientation(ph.volume.affine, ph.volume.shape)
    return reo.to_ras(ph.volume.values()), reo.to_ras(ph.labels), reo.ras_affine


def test_normalise_maps_robust_range_to_unit_interval() -> None:
    image = np.concatenate([np.zeros(1000), np.linspace(0, 100, 1000), [1e6]]).reshape(-1, 1, 1)
    out = normalise(image)
    assert out.dtype == np.float32
    assert out.min() == 0.0
    assert out.max() == 1.5
    assert 0.4 < float(np.median(out[1000:2000])) < 0.6


def test_box_has_fixed_shape_and_spacing_whatever_the_voxel_size() -> None:
    for voxel in (1.5, 3.0):
        image, _, affine = _ras_phantom(voxel)
        box_image, box = to_box(image, affine)
        assert box_image.shape == BOX_SHAPE
        assert np.allclose(np.diag(box.affine)[:3], BOX_SPACING)
        assert box_image.max() > 0.5


def test_box_contains_every_feature_of_the_phantom() -> None:
    image, labels, affine = _ras_phantom(2.0)
    _, box = to_box(image, affine)
    box_labels = labels_to_box(labels, affine, box)
    for value in (1, 2, 3):
        assert (box_labels == value).sum() > 0.8 * (labels == value).sum() * 8 / BOX_SPACING**3


def test_box_is_the_same_in_the_world_for_any_axis_order() -> None:
    _, box_ras = to_box(*_ras_phantom(2.0, "RAS")[::2])
    _, box_lps = to_box(*_ras_phantom(2.0, "LPS")[::2])
    assert np.allclose(box_ras.affine, box_lps.affine, atol=2.0)


def test_box_to_grid_maps_a_label_back_onto_the_input_voxels() -> None:
    image, labels, affine = _ras_phantom(2.0)
    _, box = to_box(image, affine)
    box_labels = labels_to_box(labels, affine, box)
    probs = np.stack([(box_labels == c).astype(np.float32) for c in range(4)])
    regions = [(2, box_labels == 2)]
    back = box_to_grid(probs, box, image.shape, affine, regions)
    nose = labels == 2
    overlap = 2 * np.logical_and(back == 2, nose).sum() / ((back == 2).sum() + nose.sum())
    assert overlap > 0.6
    assert set(np.unique(back)) <= {0, 2}


def test_box_to_grid_with_no_regions_is_empty() -> None:
    box = Box(shape=(8, 8, 8), affine=np.diag([4.0, 4.0, 4.0, 1.0]))
    out = box_to_grid(np.zeros((4, 8, 8, 8), np.float32), box, (5, 6, 7), np.eye(4), [])
    assert out.shape == (5, 6, 7) and out.dtype == np.uint8 and not out.any()
