"""defacer.morphology gives scipy.ndimage's binary erosion, dilation, opening and hole filling voxel for voxel."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from defacer.morphology import dilate, dilate_box, erode, fill_holes, open_cross

SHAPES = [(1,), (7,), (1, 1), (4, 1), (5, 6), (1, 5, 5), (2, 3, 4), (6, 1, 7), (12, 11, 10), (3, 4, 5, 2)]


@pytest.mark.parametrize("shape", SHAPES)
def test_erosion_dilation_and_opening_equal_scipys(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(shape) * 100 + sum(shape))
    for fraction in (0.0, 0.3, 0.7, 0.95, 1.0):
        mask = rng.random(shape) < fraction
        # C order, Fortran order, a reversed view and a non-bool array
        for given in (mask, np.asfortranarray(mask), mask[::-1], mask.astype(np.uint8)):
            assert np.array_equal(erode(given), ndi.binary_erosion(given)), (shape, fraction)
            assert np.array_equal(dilate(given), ndi.binary_dilation(given)), (shape, fraction)
            assert np.array_equal(open_cross(given), ndi.binary_opening(given, iterations=1)), (shape, fraction)


def test_the_outside_of_the_array_is_background() -> None:
    full = np.ones((3, 4, 5), bool)
    eroded = erode(full)
    assert eroded.sum() == 1 * 2 * 3 and eroded[1:-1, 1:-1, 1:-1].all()
    assert not open_cross(np.ones((2, 9, 9), bool)).any()  # two planes thick: eroded away, nothing to grow back


def test_the_input_is_not_changed() -> None:
    mask = np.random.default_rng(0).random((6, 7, 8)) < 0.5
    before = mask.copy()
    erode(mask), dilate(mask), open_cross(mask)
    assert np.array_equal(mask, before)


@pytest.mark.parametrize("shape", SHAPES)
def test_cube_dilation_and_hole_filling_equal_scipys(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(shape) * 1000 + sum(shape))
    cube = np.ones((3,) * len(shape), dtype=bool)
    for fraction in (0.0, 0.05, 0.3, 0.6, 0.95, 1.0):
        mask = rng.random(shape) < fraction
        if len(shape) == 3 and min(shape) > 2:  # smooth blobs: real holes and cavities
            mask = ndi.uniform_filter(mask.astype(float), 3) > 0.4
        for given in (mask, np.asfortranarray(mask), mask[::-1]):
            for reach in (1, 2, 3):
                assert np.array_equal(dilate_box(given, reach), ndi.binary_dilation(given, structure=cube, iterations=reach))
            assert np.array_equal(fill_holes(given), ndi.binary_fill_holes(given)), (shape, fraction)


def test_a_closed_shell_is_filled_and_an_open_one_is_not() -> None:
    shell = np.zeros((9, 9, 9), dtype=bool)
    shell[2:7, 2:7, 2:7] = True
    shell[3:6, 3:6, 3:6] = False
    assert fill_holes(shell)[3:6, 3:6, 3:6].all()
    shell[4, 4, 2] = False  # a hole through to the outside: the cavity is not closed
    assert not fill_holes(shell)[3:6, 3:6, 3:6].any()
    with pytest.raises(ValueError):
        dilate_box(shell, 0)
