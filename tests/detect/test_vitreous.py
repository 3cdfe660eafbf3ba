"""The vitreous body's centre found in the image (defacer.detect.vitreous): one rule for the reference
eye labels (scripts/make_reference_labels.py) and the detector's eye refinement."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from defacer.detect import vitreous

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import make_reference_labels as mrl

#: The synthetic globe's middle (RAS mm) and the vitreous centre behind it (the lens fills the front).
GLOBE = np.array([0.3, 55.4, 0.6])


def _orbit(affine: np.ndarray, shape: tuple[int, int, int], contrast: float, seed: int = 0
           ) -> tuple[np.ndarray, np.ndarray]:
    """An orbit on any grid: fat (100) round a globe of radius 12 mm (sclera 40, vitreous ``contrast``,
    lens 70 at its front), noise sd 3, the skin 16 mm in front of the globe.  Returns (image, head mask)."""
    rng = np.random.default_rng(seed)
    index = np.indices(shape).reshape(3, -1).T.astype(float)
    world = (index @ affine[:3, :3].T + affine[:3, 3]).reshape(*shape, 3)
    d2 = ((world - GLOBE) ** 2).sum(-1)
    image = np.full(shape, 100.0, np.float32)
    image[d2 <= 12.0**2] = 40.0
    image[d2 <= 11.0**2] = contrast
    lens = ((world - GLOBE - [0.0, 9.0, 0.0]) ** 2).sum(-1) <= 4.5**2
    image[lens & (d2 <= 11.0**2)] = 70.0
    image += rng.normal(0.0, 3.0, shape).astype(np.float32)
    head = world[..., 1] <= GLOBE[1] + 16.0
    image[~head] = rng.normal(2.0, 1.0, int((~head).sum())).astype(np.float32)
    return image, head


def _grid(spacing: tuple[float, float, float], degrees: float) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A voxel -> RAS affine of ``spacing`` mm turned ``degrees`` about the S axis, covering the orbit."""
    angle = np.radians(degrees)
    turn = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = turn @ np.diag(spacing)
    shape = tuple(int(np.ceil(76.0 / s)) for s in spacing)
    centre = np.array([0.0, 60.0, 0.0])
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return affine, shape  # type: ignore[return-value]


@pytest.mark.parametrize("contrast", [20.0, 180.0], ids=["T1-dark", "T2-bright"])
@pytest.mark.parametrize("spacing,degrees", [((1.0, 1.0, 1.0), 0.0), ((2.0, 2.0, 2.0), 0.0), ((1.0, 1.0, 3.0), 20.0)],
                         ids=["1mm", "2mm", "1x1x3mm-turned"])
def test_the_centre_lies_in_the_vitreous_behind_the_globe_middle_on_any_grid(contrast, spacing, degrees) -> None:
    affine, shape = _grid(spacing, degrees)
    image, head = _orbit(affine, shape, contrast)
    for offset in ([6.0, 0.0, 0.0], [0.0, 6.0, 3.0], [-3.0, -4.0, -5.0]):  # seeds 6-7 mm off
        found = vitreous.vitreous_centre(image, head, affine, GLOBE + offset)
        assert found is not None
        centre, _ = found
        behind = GLOBE[1] - centre[1]  # the lens fills the front: the centre lies behind the middle
        sideways = np.hypot(centre[0] - GLOBE[0], centre[2] - GLOBE[2])
        assert 0.0 <= behind <= 4.5
        assert sideways <= 1.5 + max(spacing) / 2


def test_a_seed_outside_the_grid_or_the_field_finds_nothing() -> None:
    affine, shape = _grid((2.0, 2.0, 2.0), 0.0)
    image, head = _orbit(affine, shape, 20.0)
    assert vitreous.vitreous_centre(image, head, affine, GLOBE + [0.0, 0.0, 500.0]) is None
    assert vitreous.vitreous_centre(image, head, affine, GLOBE, field=np.zeros(shape, bool)) is None


def test_the_reference_labels_use_the_same_function() -> None:
    # one implementation: the reference's globe_in_image is vitreous_centre on its 1 mm work grid,
    # the intensities divided by the head's 99th percentile
    affine, shape = _grid((1.0, 1.0, 1.0), 0.0)
    image, head = _orbit(affine, shape, 20.0)
    valid = np.ones(shape, bool)
    seed = GLOBE + [3.0, 5.0, -4.0]
    reference = mrl.globe_in_image(image, head, valid, affine, seed)
    shared = vitreous.vitreous_centre(image, head, affine, seed, search_mm=mrl.GLOBE_SEARCH_MM,
                                      ball_mm=mrl.GLOBE_BALL_MM, shell_mm=mrl.GLOBE_SHELL_MM,
                                      scale=float(np.percentile(image[head], 99)), field=valid)
    assert reference is not None and shared is not None
    assert np.array_equal(reference[0], shared[0]) and reference[1] == shared[1]
