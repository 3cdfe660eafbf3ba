"""The detector's box: placement, normalisation and the exact way back onto the input grid."""

from __future__ import annotations

import numpy as np
import pytest

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


@pytest.mark.parametrize("slab_voxels", [4 * 1024 * 1024, 3 * 40 * 23, 1])
def test_block_mean_equals_the_mean_over_a_six_axis_reshape(slab_voxels: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Also when the image is summed a few planes (or one block row) at a time, the ragged last slab included."""
    from defacer.detect import preprocess
    from defacer.detect.preprocess import block_mean

    monkeypatch.setattr(preprocess, "BLOCK_SLAB_VOXELS", slab_voxels)
    image = np.random.default_rng(1).normal(500.0, 200.0, (37, 40, 23)).astype(np.float32)
    for factors in ([2, 2, 2], [3, 1, 2], [1, 1, 4]):
        shape = [(n // f) * f for n, f in zip(image.shape, factors)]
        blocks = image[: shape[0], : shape[1], : shape[2]].reshape(
            shape[0] // factors[0], factors[0], shape[1] // factors[1], factors[1], shape[2] // factors[2], factors[2])
        expected = blocks.astype(np.float64).mean(axis=(1, 3, 5))
        got = block_mean(image, factors)
        assert got.dtype == np.float32 and got.shape == expected.shape
        assert np.allclose(got, expected, rtol=1e-5, atol=1e-3)


def _box_to_grid_on_the_whole_box(probabilities, box, shape, affine, regions):
    """Reference: the earlier box_to_grid, interpolating every region's point list on the whole box."""
    from scipy import ndimage as ndi

    out = np.zeros(shape, np.uint8)
    to_box_index = np.linalg.inv(box.affine) @ affine
    from_box = np.linalg.inv(affine) @ box.affine
    for label, component in regions:
        idx = np.argwhere(component)
        lo = np.maximum(idx.min(axis=0) - 2, 0)
        hi = np.minimum(idx.max(axis=0) + 2, np.asarray(box.shape) - 1)
        corners = np.array([[a, b, c, 1.0] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        grid_corners = (from_box @ corners.T).T[:, :3]
        g_lo = np.maximum(np.floor(grid_corners.min(axis=0)).astype(int), 0)
        g_hi = np.minimum(np.ceil(grid_corners.max(axis=0)).astype(int) + 1, np.asarray(shape))
        if np.any(g_hi <= g_lo):
            continue
        ii, jj, kk = np.meshgrid(*(np.arange(a, b) for a, b in zip(g_lo, g_hi)), indexing="ij")
        points = np.stack([ii, jj, kk], axis=0).reshape(3, -1).astype(float)
        box_points = to_box_index[:3, :3] @ points + to_box_index[:3, 3:4]
        allowed = ndi.binary_dilation(component, iterations=1)
        margin = probabilities[label] - np.delete(probabilities, label, axis=0).max(axis=0)
        winner = ndi.map_coordinates(margin, box_points, order=1, mode="nearest") > 0
        winner &= ndi.map_coordinates(allowed.astype(np.float32), box_points, order=1, mode="constant") > 0.25
        sub = out[g_lo[0]:g_hi[0], g_lo[1]:g_hi[1], g_lo[2]:g_hi[2]]
        sub[winner.reshape(sub.shape)] = label
    return out


def _random_classes(rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Smooth random class probabilities on a 24^3 box (4 classes) and their winners' components of more than 5
    voxels as ``(label, component)`` regions, as box_to_grid takes them."""
    from scipy import ndimage as ndi

    logits = ndi.gaussian_filter(rng.normal(size=(4, 24, 24, 24)), (0, 1.5, 1.5, 1.5))
    probabilities = (np.exp(8 * logits) / np.exp(8 * logits).sum(axis=0)).astype(np.float32)
    winners = probabilities.argmax(axis=0)
    regions = []
    for label in (1, 2, 3):
        parts, count = ndi.label(winners == label)
        regions += [(label, parts == i) for i in range(1, count + 1) if (parts == i).sum() > 5]
    return probabilities, regions


def test_box_to_grid_on_crops_of_the_box_equals_interpolating_on_the_whole_box() -> None:
    from defacer.detect.preprocess import grid_extent

    rng = np.random.default_rng(3)
    box = Box(shape=(24, 24, 24), affine=np.diag([2.5, 2.5, 2.5, 1.0]))
    box.affine[:3, 3] = [-30.0, -30.0, -30.0]
    probabilities, regions = _random_classes(rng)
    rotation = np.array([[0.98, -0.17, 0.0], [0.17, 0.98, 0.05], [0.0, -0.05, 1.0]])
    grids = {"1 mm axial": (np.diag([1.0, 1.0, 1.0, 1.0]), (60, 60, 60)),
             "oblique, thick slices": (np.block([[rotation @ np.diag([0.9, 0.9, 6.0]), np.array([[-28.0], [-31.0], [-33.0]])],
                                                 [np.zeros((1, 3)), np.ones((1, 1))]]), (70, 70, 10))}
    for name, (affine, shape) in grids.items():
        if name == "1 mm axial":
            affine = affine.copy()
            # not on whole box voxels: a point exactly on the box's last voxel centre may round to either
            # side of it in the two computations, and is outside ('constant' mode) on one of them
            affine[:3, 3] = [-31.13, -29.71, -30.37]
        expected = _box_to_grid_on_the_whole_box(probabilities, box, shape, affine, regions)
        got = box_to_grid(probabilities, box, shape, affine, regions)
        assert expected.any(), name
        assert np.array_equal(got, expected), f"{name}: {int((got != expected).sum())} voxels differ"
        extent = grid_extent(regions, box, shape, affine)
        outside = np.ones(shape, bool)
        outside[extent] = False
        assert not got[outside].any(), f"{name}: a label outside the regions' extent"


def _box_to_grid_two_window_transforms(probabilities, box, shape, affine, regions):
    """Reference: box_to_grid as it was before 2026-12-04 (session 14): the margin and the allowed
    region each interpolated over the whole window by ``affine_transform``."""
    from scipy import ndimage as ndi

    from defacer.detect.preprocess import grid_window

    out = np.zeros(shape, np.uint8)
    to_box_index = np.linalg.inv(box.affine) @ affine
    for label, component in regions:
        window = grid_window(component, box, shape, affine)
        if window is None:
            continue
        g_lo = np.array([w.start for w in window])
        g_hi = np.array([w.stop for w in window]) - 1
        corners = np.array([[a, b, c, 1.0] for a in (g_lo[0], g_hi[0]) for b in (g_lo[1], g_hi[1])
                            for c in (g_lo[2], g_hi[2])])
        reach = (to_box_index @ corners.T).T[:, :3]
        c_lo = np.maximum(np.floor(reach.min(axis=0)).astype(int) - 1, 0)
        c_hi = np.minimum(np.ceil(reach.max(axis=0)).astype(int) + 2, np.asarray(box.shape))
        crop = tuple(slice(int(a), int(b)) for a, b in zip(c_lo, c_hi))
        matrix = to_box_index[:3, :3]
        offset = matrix @ g_lo + to_box_index[:3, 3] - c_lo
        sub_shape = tuple(int(w.stop - w.start) for w in window)
        probs = np.asarray(probabilities[(slice(None), *crop)], np.float32)
        margin = probs[label] - np.delete(probs, label, axis=0).max(axis=0)
        allowed = ndi.binary_dilation(component[crop], iterations=1).astype(np.float32)
        winner = ndi.affine_transform(margin, matrix, offset=offset, output_shape=sub_shape, order=1, mode="nearest") > 0
        winner &= ndi.affine_transform(allowed, matrix, offset=offset, output_shape=sub_shape, order=1,
                                       mode="constant") > 0.25
        out[window][winner] = label
    return out


@pytest.mark.parametrize("scipy_order_known", [True, False])
def test_box_to_grid_equals_interpolating_the_whole_windows(scipy_order_known: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The margin read only where the region allows the label (map_coordinates at affine_transform's own
    coordinates) labels the very voxels the two whole-window interpolations did, also on oblique grids;
    and so does the whole-window fallback for a SciPy whose order of operations is not known."""
    from defacer.detect import preprocess

    if not scipy_order_known:
        monkeypatch.setattr(preprocess, "_offset_first", lambda: None)
    rng = np.random.default_rng(11)
    box = Box(shape=(24, 24, 24), affine=np.diag([2.5, 2.5, 2.5, 1.0]))
    box.affine[:3, 3] = [-30.0, -30.0, -30.0]
    for trial in range(2):
        probabilities, regions = _random_classes(rng)
        angle = rng.uniform(-0.4, 0.4)
        rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.05], [0.0, -0.05, 1.0]])
        for zooms, shape in (((1.0, 1.0, 1.0), (60, 60, 60)), ((0.9, 0.9, 6.0), (70, 70, 10)), ((0.7, 0.7, 0.7), (80, 80, 80))):
            affine = np.eye(4)
            affine[:3, :3] = (rotation if trial % 2 else np.eye(3)) @ np.diag(zooms)
            affine[:3, 3] = rng.uniform(-33.0, -27.0, 3)
            expected = _box_to_grid_two_window_transforms(probabilities, box, shape, affine, regions)
            got = box_to_grid(probabilities, box, shape, affine, regions)
            assert expected.any()
            assert np.array_equal(got, expected), f"{int((got != expected).sum())} voxels differ"


def test_sampled_points_are_affine_transforms_own_coordinates() -> None:
    """map_coordinates at sampled_points gives affine_transform's values bit for bit (float64 data, where a
    coordinate one ulp off shows in the value; float32 as box_to_grid uses it)."""
    from itertools import product

    from scipy import ndimage as ndi

    from defacer.detect.preprocess import sampled_points

    rng = np.random.default_rng(7)
    for trial in range(20):
        data = rng.standard_normal((15, 17, 19))
        matrix = rng.standard_normal((3, 3)) * 0.3 + np.diag(rng.uniform(0.2, 0.7, 3))
        if trial % 3 == 0:
            matrix = np.diag(np.diag(matrix))
        offset = rng.uniform(-3.0, 9.0, 3)
        shape = tuple(int(n) for n in rng.integers(8, 30, 3))
        index = np.nonzero(np.ones(shape, bool))
        for values, mode in product((data, data.astype(np.float32)), ("nearest", "constant")):
            whole = ndi.affine_transform(values, matrix, offset=offset, output_shape=shape, order=1, mode=mode)
            at = ndi.map_coordinates(values, sampled_points(matrix, offset, index), order=1, mode=mode)
            assert whole.dtype == at.dtype == values.dtype
            assert whole.ravel().tobytes() == at.tobytes(), (trial, mode, values.dtype)


def test_scipys_order_of_operations_is_found_and_the_other_order_differs() -> None:
    """The probe tells the two orders apart: this SciPy's is found, and the other gives other values
    (so the bit-for-bit test above could fail)."""
    from scipy import ndimage as ndi

    from defacer.detect.preprocess import _offset_first, _points

    first = _offset_first()
    assert first is not None
    rng = np.random.default_rng(2)
    data = rng.standard_normal((9, 10, 11))
    matrix = rng.standard_normal((3, 3)) * 0.3 + np.diag([0.5, 0.6, 0.4])
    offset = rng.uniform(-2.0, 5.0, 3)
    index = np.nonzero(np.ones((12, 12, 12), bool))
    whole = ndi.affine_transform(data, matrix, offset=offset, output_shape=(12, 12, 12), order=1, mode="nearest").ravel()
    other = ndi.map_coordinates(data, _points(matrix, offset, index, offset_first=not first), order=1, mode="nearest")
    assert not np.array_equal(whole, other)


def test_mask_box_equals_the_projections_along_every_axis() -> None:
    from defacer.detect.preprocess import mask_box

    def projections(mask):
        box = []
        for axis in range(mask.ndim):
            hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
            if hit.size == 0:
                return None
            box.append(slice(int(hit[0]), int(hit[-1]) + 1))
        return tuple(box)

    rng = np.random.default_rng(5)
    for _ in range(400):
        shape = tuple(int(n) for n in rng.integers(1, 9, int(rng.integers(1, 5))))
        mask = rng.random(shape) < rng.choice([0.0, 0.01, 0.1, 0.5])
        for view in (mask, np.asfortranarray(mask), mask[::-1], mask[..., ::2], np.moveaxis(mask, 0, -1)):
            assert mask_box(view) == projections(view), shape


@pytest.mark.parametrize("chunk", [None, 700])
def test_the_box_resampled_in_two_halves_beside_is_the_one_resampled_whole(chunk: int | None,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """SPEED27: with ``beside``, half of the box is interpolated in a thread of its own by map_coordinates at the
    coordinates affine_transform computes: the same float32 values bit for bit, on an oblique grid, a box reaching
    past the image (its constant 0 there) and an odd number of rows."""
    from defacer.detect import preprocess
    from defacer.detect.pose import turned_affine
    from defacer.detect.preprocess import resample_to

    if chunk is not None:  # a few rows at a time (several chunks per half, the last one short)
        monkeypatch.setattr(preprocess, "RESAMPLE_CHUNK_VOXELS", chunk)
    rng = np.random.default_rng(11)
    image = rng.normal(0.5, 0.3, (41, 47, 38)).astype(np.float32)
    affine = turned_affine(np.diag([2.0, 2.0, 2.0, 1.0]), image.shape, "z", 13.0) @ turned_affine(
        np.eye(4), image.shape, "x", -7.0)
    target = np.diag([2.5, 2.5, 2.5, 1.0])
    target[:3, 3] = [-10.0, 5.0, -3.0]
    for shape in ((33, 36, 40), (34, 20, 17)):
        whole = resample_to(image, affine, shape, target)
        halves = resample_to(image, affine, shape, target, beside=True)
        assert halves.dtype == whole.dtype == np.float32 and halves.shape == whole.shape == shape
        assert halves.tobytes() == whole.tobytes()
        assert np.count_nonzero(whole == 0) > 0 and np.count_nonzero(whole) > whole.size // 4  # past the image, and in it


def test_the_box_resampled_beside_takes_little_fresh_memory() -> None:
    """SPEED27: the coordinates of each half of a 96^3 box at once (float64, three per voxel) took about 30 MB (peak
    RSS 561 -> 591 MB for petdeface's command), fresh pages whose first touch is slow on small VMs; a few rows at a
    time take a few MB.  tracemalloc counts numpy's and SciPy's arrays the same on every machine."""
    import tracemalloc

    from defacer.detect.preprocess import resample_to

    image = np.random.default_rng(5).random((104, 128, 128), dtype=np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, :3] += 0.03  # oblique
    target = np.diag([2.5, 2.5, 2.5, 1.0])
    tracemalloc.start()
    try:
        resample_to(image, affine, (96, 96, 96), target, beside=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000, peak  # 12.4 MB here (the box 3.5 MB, a few MB per thread); whole halves 42.6 MB
