"""The detector's view of a head: a fixed RAS box at fixed spacing, and the way back.

:func:`to_box` turns any RAS-ordered image (any voxel size, field of view, obliquity) into the
network input: a ``BOX_SHAPE`` grid at ``BOX_SPACING`` mm, axis-aligned in RAS+ world space (turned with a head
turned 10 degrees or more about S or A: :mod:`defacer.detect.pose`),
placed on the head (centre in R and A, top of the head near the top in S), with intensities
robustly scaled to about [0, 1].  :func:`box_to_grid` maps class probabilities from that box
back onto the input grid exactly through the two affines (trilinear interpolation, only inside
the given regions, so a 1 mm 256^3 head costs little).

Pure array functions; no IO.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from defacer._typing import Affine
from defacer.morphology import dilate, open_cross
from defacer.side_work import each

#: Network input grid size (voxels along R, A, S).
BOX_SHAPE: tuple[int, int, int] = (96, 96, 96)
#: Network input voxel size in mm.
BOX_SPACING: float = 2.5
#: Distance from the top of the head to the box centre along S, in mm.
TOP_TO_CENTRE_MM: float = 120.0
#: Percentiles that map to 0 and 1 in :func:`normalise`.
NORMALISE_PERCENTILES: tuple[float, float] = (0.5, 99.5)


@dataclass(frozen=True)
class Box:
    """Where the network input lies in the world.

    Attributes
    ----------
    shape : tuple of 3 int
        Box grid shape (R, A, S).
    affine : ndarray, shape (4, 4)
        Box voxel -> RAS+ mm: ``spacing`` on the diagonal (axis-aligned), or that turned about the head's
        centre where the head is turned (:func:`defacer.detect.pose.upright_box`).
    pose : defacer.detect.pose.Pose or None
        The head's yaw and roll measured in the axis-aligned box (:func:`to_box`); ``None`` where not measured.
    """

    shape: tuple[int, int, int]
    affine: Affine
    pose: Any = None


def normalise(image: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """Scale intensities so the 0.5th percentile is 0 and the 99.5th is 1, clipped to [0, 1.5].

    Parameters
    ----------
    image : ndarray, any shape
        Physical intensities (MR arbitrary units or CT Hounsfield units).

    Returns
    -------
    ndarray, same shape, float32
    """
    lo, hi = np.percentile(image, NORMALISE_PERCENTILES)
    if not np.isfinite(hi - lo) or hi - lo <= 0:
        return np.zeros(image.shape, np.float32)
    out = (np.asarray(image, np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.5).astype(np.float32, copy=False)


def _block_reduce(image: npt.NDArray[np.floating], affine: Affine, target: float) -> tuple[npt.NDArray[np.float32], Affine]:
    """Average non-overlapping blocks of about ``max(2 mm, target / 2)`` (never coarser) before resampling.

    Cheap anti-aliasing: a 1 mm head becomes 2 mm blocks for a 2.5 mm or 4 mm box.  Voxels past
    the last whole block are dropped.
    """
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    block = max(2.0, target / 2.0)
    factors = [max(1, int(np.floor(block / s + 1e-6))) for s in spacing]
    if all(f == 1 for f in factors):
        return np.asarray(image, np.float32), affine
    scale = np.diag([*factors, 1]).astype(float)
    shift = np.eye(4)
    shift[:3, 3] = [(f - 1) / 2.0 for f in factors]
    return block_mean(image, factors), affine @ shift @ scale


#: Voxels of the image summed at a time by :func:`block_mean` (16 MB of float32).
BLOCK_SLAB_VOXELS = 4 * 1024 * 1024


def block_mean(image: npt.NDArray[np.floating], factors: list[int]) -> npt.NDArray[np.float32]:
    """Mean of non-overlapping blocks of ``factors`` voxels (voxels past the last whole block dropped).

    Sums strided views axis by axis (the array shrinks after the first axis), about ten times
    faster than a mean over a 6-D reshape; float32 throughout.  The image is taken a slab of
    whole blocks along the first axis at a time (:data:`BLOCK_SLAB_VOXELS`), so no temporary of
    the image's size is made (the first touch of new memory is slow on small virtual machines);
    the sums, done in the same order, are the same.

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z)
    factors : list of 3 int
        Block size along each axis, in voxels (>= 1).

    Returns
    -------
    ndarray, shape (X // fx, Y // fy, Z // fz), float32
    """
    image = np.asarray(image)
    out_shape = tuple(n // f for n, f in zip(image.shape, factors, strict=True))
    total = np.empty(out_shape, np.float32)
    rows = max(1, BLOCK_SLAB_VOXELS // max(1, factors[0] * image.shape[1] * image.shape[2]))
    for start in range(0, out_shape[0], rows):
        stop = min(start + rows, out_shape[0])
        total[start:stop] = _block_sum(image[start * factors[0]:stop * factors[0]], factors)
    total /= np.float32(np.prod(factors))
    return total


def _block_sum(image: npt.NDArray[Any], factors: list[int]) -> npt.NDArray[np.float32]:
    """Sum of non-overlapping blocks of ``factors`` voxels of ``image`` (X, Y, Z), float32, axis by axis."""
    out = image[tuple(slice(0, (n // f) * f) for n, f in zip(image.shape, factors, strict=True))]
    for axis, f in enumerate(factors):
        if f == 1:
            continue
        step = [slice(None)] * 3
        step[axis] = slice(0, None, f)
        total = np.array(out[tuple(step)], np.float32)
        for start in range(1, f):
            step[axis] = slice(start, None, f)
            total += out[tuple(step)]
        out = total
    return np.asarray(out, np.float32)


def place_box(image: npt.NDArray[np.floating], affine: Affine, shape: tuple[int, int, int] = BOX_SHAPE,
              spacing: float = BOX_SPACING) -> Box:
    """Choose the box: centred on the head in R and A, top of the head ``TOP_TO_CENTRE_MM`` above centre.

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z)
        Image in RAS axis order (any spacing).
    affine : ndarray, shape (4, 4)
        Its voxel -> RAS+ affine.
    """
    return _box_around_head(normalise(image), affine, shape, spacing)


def _box_around_head(scaled: npt.NDArray[np.float32], affine: Affine, shape: tuple[int, int, int],
                     spacing: float) -> Box:
    """:func:`place_box` on an image already scaled by :func:`normalise`."""
    head = open_cross(scaled > 0.12)  # ndi.binary_opening's voxels, ~1/20 of its time
    if not head.any():
        head = np.ones(scaled.shape, bool)
    labels, n = ndi.label(head)
    if n > 1:
        sizes = np.bincount(labels.ravel())[1:]
        head = labels == (int(np.argmax(sizes)) + 1)
    lo_i, hi_i = bounding_box(head)
    corners = np.array([[a, b, c] for a in (lo_i[0], hi_i[0]) for b in (lo_i[1], hi_i[1])
                        for c in (lo_i[2], hi_i[2])], float)
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    lo, hi = world.min(axis=0), world.max(axis=0)
    centre = (lo + hi) / 2.0
    centre[2] = max(centre[2], hi[2] - TOP_TO_CENTRE_MM)
    box_affine = np.diag([spacing, spacing, spacing, 1.0])
    box_affine[:3, 3] = centre - spacing * (np.asarray(shape, float) / 2.0 - 0.5)
    return Box(shape=tuple(int(s) for s in shape), affine=box_affine)  # type: ignore[arg-type]


def bounding_box(mask: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """First and last index along each axis of a non-empty boolean array's True voxels (inclusive).

    From the axis projections (:func:`mask_box`), so no index list of every voxel is built.

    Returns
    -------
    lo, hi : ndarray of int, shape (ndim,)
    """
    box = mask_box(mask)
    if box is None:
        raise ValueError("bounding_box needs at least one True voxel.")
    return np.asarray([s.start for s in box], np.intp), np.asarray([s.stop - 1 for s in box], np.intp)


def mask_box(mask: npt.NDArray[np.bool_]) -> tuple[slice, ...] | None:
    """Bounding box of a boolean array's True voxels, one ``slice(first, last + 1)`` per axis; ``None`` when empty.

    From the axis projections, so no index list of every voxel is built (``np.argwhere``): first
    along the axis outermost in memory (each of its planes ORed in one contiguous pass), then the
    other axes from the OR of the planes within that extent only (about a tenth of the time of
    three separate projections of the whole array).
    """
    if mask.ndim == 0:
        return ()
    outer = int(np.argmax(np.abs(mask.strides)))
    others = tuple(a for a in range(mask.ndim) if a != outer)
    hit = np.flatnonzero(mask.any(axis=others))
    if hit.size == 0:
        return None
    box: list[slice] = [slice(None)] * mask.ndim
    box[outer] = slice(int(hit[0]), int(hit[-1]) + 1)
    planes = np.asarray(mask[tuple(box)].any(axis=outer))  # shape: the other axes, in order
    for i, axis in enumerate(others):
        hit = np.flatnonzero(planes.any(axis=tuple(j for j in range(planes.ndim) if j != i)))
        box[axis] = slice(int(hit[0]), int(hit[-1]) + 1)
    return tuple(box)


#: Voxels of the box whose coordinates :func:`resample_to` computes at a time beside (about 1.5 MB of float64).
RESAMPLE_CHUNK_VOXELS = 1 << 16


def resample_to(image: npt.NDArray[np.floating], affine: Affine, shape: tuple[int, int, int], target_affine: Affine,
                order: int = 1, cval: float = 0.0, beside: bool = False) -> npt.NDArray[np.float32]:
    """Resample ``image`` (voxel->world ``affine``) onto the grid ``shape``/``target_affine``.

    With ``beside`` (and ``order`` 0 or 1), the second half of the grid along its first axis is interpolated in a
    thread of its own (:func:`defacer.side_work.each`) by :func:`scipy.ndimage.map_coordinates` at the very
    coordinates :func:`scipy.ndimage.affine_transform` computes (:func:`sampled_points`; the same interpolation
    code): the same values bit for bit, in about half the time where a second core is free.  Where this SciPy's
    coordinates are not known, or for higher orders (their prefilter), the whole grid in one call, as without.
    """
    matrix = np.linalg.inv(affine) @ target_affine
    data = np.asarray(image, np.float32)
    if not beside or order > 1 or shape[0] < 2 or _offset_first() is None:
        return ndi.affine_transform(data, matrix[:3, :3], offset=matrix[:3, 3], output_shape=shape, order=order,
                                    cval=cval, mode="constant")
    out = np.empty(shape, np.float32)
    # a few rows at a time: the coordinates of a whole half (float64, three per voxel) took 30 MB of fresh memory
    step = max(1, RESAMPLE_CHUNK_VOXELS // max(1, shape[1] * shape[2]))

    def part(rows: tuple[int, int]) -> None:
        for lo in range(rows[0], rows[1], step):
            hi = min(lo + step, rows[1])
            index = np.indices((hi - lo, *shape[1:]), dtype=np.int32).reshape(3, -1)
            index[0] += lo
            points = sampled_points(matrix[:3, :3], matrix[:3, 3], (index[0], index[1], index[2]))
            out[lo:hi] = ndi.map_coordinates(data, points, order=order, mode="constant", cval=cval
                                             ).reshape((hi - lo, *shape[1:]))

    half = shape[0] // 2
    each(part, [(0, half), (half, shape[0])], True)
    return out


def to_box(image_ras: npt.NDArray[np.floating], ras_affine: Affine, shape: tuple[int, int, int] = BOX_SHAPE,
           spacing: float = BOX_SPACING, upright: bool = True, beside: bool = False
           ) -> tuple[npt.NDArray[np.float32], Box]:
    """Make the network input from a RAS image.

    Parameters
    ----------
    image_ras : ndarray, shape (X, Y, Z)
        Physical intensities in RAS axis order, any voxel size.
    ras_affine : ndarray, shape (4, 4)
        Voxel -> RAS+ mm affine of ``image_ras`` (may be oblique).
    upright : bool
        Measure the head's yaw and roll (:func:`defacer.detect.pose.head_pose`) and, where it is turned by 10
        degrees or more, turn the box with it so the head in it is upright (``False``: always axis-aligned).
    beside : bool
        Resample half of the box in a thread of its own (:func:`resample_to`: the same values).  Default off.

    Returns
    -------
    box_image : ndarray, shape ``shape``, float32
        Intensities scaled by :func:`normalise` of the image (outside the scanned field: 0).
    box : Box
        Its place in the world, with the measured pose.
    """
    reduced, reduced_affine = _block_reduce(image_ras, np.asarray(ras_affine, float), spacing)
    scaled = normalise(reduced)
    box = _box_around_head(scaled, reduced_affine, shape, spacing)
    box_image = resample_to(scaled, reduced_affine, box.shape, box.affine, order=1, cval=0.0, beside=beside)
    if upright:
        from defacer.detect.pose import head_pose, upright_box

        pose = head_pose(box_image)
        if pose is not None and pose.turned:  # a head turned 10 degrees or more: the network sees it upright
            box = upright_box(box, pose)
            box_image = resample_to(scaled, reduced_affine, box.shape, box.affine, order=1, cval=0.0, beside=beside)
        box = replace(box, pose=pose)
    return box_image, box


def labels_to_box(labels: npt.NDArray[np.integer], affine: Affine, box: Box) -> npt.NDArray[np.uint8]:
    """Nearest-neighbour resampling of a label map onto the box (training targets)."""
    return resample_to(labels.astype(np.float32), affine, box.shape, box.affine, order=0).astype(np.uint8)


def box_to_grid(probabilities: npt.NDArray[np.floating], box: Box, shape: tuple[int, int, int], affine: Affine,
                regions: list[tuple[int, npt.NDArray[np.bool_]]], beside: bool = False) -> npt.NDArray[np.uint8]:
    """Map class probabilities from the box onto an image grid as a label map.

    Parameters
    ----------
    probabilities : ndarray, shape (C, *box.shape)
        Class probabilities on the box (class 0 is background).
    box : Box
        The box the probabilities live on.
    shape : tuple of 3 int
        Target grid shape (the RAS image the box was made from).
    affine : ndarray, shape (4, 4)
        Target grid voxel -> RAS+ affine.
    regions : list of (int, ndarray of bool, shape box.shape)
        ``(label, component)`` pairs on the box: each is interpolated only inside its bounding box
        (grown by two box voxels; :func:`grid_window`), and only voxels where ``label`` is more
        probable than every other class (the margin is interpolated trilinearly) get it.
    beside : bool
        Find the regions' voxels in two threads, the regions shared between them by their size
        (:func:`_shared_by_size`, :func:`defacer.side_work.each`; the same voxels, written in the regions' order as in
        one thread).  Default off.

    Returns
    -------
    ndarray, shape ``shape``, uint8
        Zero outside the union of the regions' windows (:func:`grid_extent`).
    """
    out = np.zeros(shape, np.uint8)
    to_box_index = np.linalg.inv(box.affine) @ affine

    # every region's voxels found from the probabilities alone (the regions shared between two threads by their
    # size where asked: defacer.side_work), then written in the regions' order, a later one over an earlier one
    halves = _shared_by_size([component for _, component in regions])
    done = each(lambda part: [_region_winners(probabilities, box, shape, affine, to_box_index, *regions[i]) for i in part],
                halves, beside and len(regions) > 1)
    found = {i: result for part, results in zip(halves, done, strict=True) for i, result in zip(part, results, strict=True)}
    for index, (label, _) in enumerate(regions):
        result = found[index]
        if result is not None:
            window, where = result
            out[window][where] = label
    return out


def _shared_by_size(components: list[npt.NDArray[np.bool_]]) -> list[list[int]]:
    """The indices of ``components`` in two lists of about equal work for :func:`box_to_grid`'s two threads.

    A region's work grows with its window (:func:`grid_window`: the component's bounding box grown by two box
    voxels), and so with its voxels (counted: the bounding boxes of five components took ~15 ms), so each
    component, the largest first, goes to the list with the fewer voxels so far (taking every other one left a
    1 mm head's nose, an eye and an ear on one thread, one eye and one ear on the other).  Each list is in the
    components' order; the first list is never the shorter in voxels.
    """
    sizes = [int(np.count_nonzero(component)) for component in components]
    parts: list[list[int]] = [[], []]
    load = [0, 0]
    for index in sorted(range(len(components)), key=lambda i: -sizes[i]):  # stable: the earlier one first at a tie
        part = 0 if load[0] <= load[1] else 1
        parts[part].append(index)
        load[part] += sizes[index]
    return [sorted(part) for part in parts]


def _region_winners(probabilities: npt.NDArray[np.floating], box: Box, shape: tuple[int, int, int], affine: Affine,
                    to_box_index: npt.NDArray[np.float64], label: int, component: npt.NDArray[np.bool_]
                    ) -> tuple[tuple[slice, ...], Any] | None:
    """One region of :func:`box_to_grid`: its window on the grid and the window's voxels given ``label`` (a boolean
    mask of the window, or index arrays), ``None`` where the window lies outside the grid."""
    window = grid_window(component, box, shape, affine)
    if window is None:
        return None
    g_lo = np.array([w.start for w in window])
    g_hi = np.array([w.stop for w in window]) - 1
    # the box voxels the window's voxels fall between (plus one), so interpolating on this crop
    # of the box gives what interpolating on the whole box gives
    corners = np.array([[a, b, c, 1.0] for a in (g_lo[0], g_hi[0]) for b in (g_lo[1], g_hi[1])
                        for c in (g_lo[2], g_hi[2])])
    reach = (to_box_index @ corners.T).T[:, :3]
    c_lo = np.maximum(np.floor(reach.min(axis=0)).astype(int) - 1, 0)
    c_hi = np.minimum(np.ceil(reach.max(axis=0)).astype(int) + 2, np.asarray(box.shape))
    crop = tuple(slice(int(a), int(b)) for a, b in zip(c_lo, c_hi, strict=True))
    matrix = to_box_index[:3, :3]
    offset = matrix @ g_lo + to_box_index[:3, 3] - c_lo
    sub_shape = tuple(int(w.stop - w.start) for w in window)
    probs = np.asarray(probabilities[(slice(None), *crop)], np.float32)
    # margin of this label over the best other class: one interpolation instead of C
    margin = probs[label] - np.delete(probs, label, axis=0).max(axis=0)
    allowed = dilate(component[crop]).astype(np.float32)
    allowed_at = ndi.affine_transform(allowed, matrix, offset=offset, output_shape=sub_shape, order=1,
                                      mode="constant") > 0.25
    if _offset_first() is None:  # a scipy whose coordinates are not known: the margin on the whole window
        winner = ndi.affine_transform(margin, matrix, offset=offset, output_shape=sub_shape, order=1,
                                      mode="nearest") > 0
        return window, winner & allowed_at
    # the margin only where the component allows the label (a third of the window or less): the
    # values affine_transform gives there, at the coordinates it computes
    near = np.nonzero(allowed_at)
    winner = ndi.map_coordinates(margin, sampled_points(matrix, offset, near), order=1, mode="nearest") > 0
    return window, tuple(index[winner] for index in near)


def sampled_points(matrix: npt.NDArray[np.float64], offset: npt.NDArray[np.float64],
                   index: tuple[npt.NDArray[np.intp], ...]) -> npt.NDArray[np.float64]:
    """Where ``scipy.ndimage.affine_transform(input, matrix, offset)`` reads its input for the given output voxels.

    scipy computes each input coordinate in float64 as a sum of ``offset[h]`` and the terms
    ``i * matrix[h, 0]``, ``j * matrix[h, 1]``, ... added one by one, the offset first (SciPy 1.17) or
    last (older SciPy: :func:`_offset_first`); the same operations here give the same coordinates bit
    for bit, so ``scipy.ndimage.map_coordinates`` at them (same order, mode and cval) gives the values
    ``affine_transform`` gives at those voxels: a few voxels of a window can be interpolated without
    the rest.

    Parameters
    ----------
    matrix : ndarray, shape (D, D)
        Output voxel -> input voxel.
    offset : ndarray, shape (D,)
    index : tuple of D ndarray of int, each shape (N,)
        The output voxels (as :func:`numpy.nonzero` gives them).

    Returns
    -------
    ndarray, float64, shape (D, N)
        Input voxel coordinates, for :func:`scipy.ndimage.map_coordinates`.

    Raises
    ------
    RuntimeError
        When this SciPy's order of operations is not known (:func:`_offset_first` is ``None``).
    """
    first = _offset_first()
    if first is None:
        raise RuntimeError("This SciPy's affine_transform computes its coordinates in an unknown order.")
    return _points(matrix, offset, index, offset_first=first)


def _points(matrix: npt.NDArray[np.float64], offset: npt.NDArray[np.float64], index: tuple[npt.NDArray[np.intp], ...],
            *, offset_first: bool) -> npt.NDArray[np.float64]:
    """:func:`sampled_points` with the offset added before the matrix terms or after them."""
    matrix = np.asarray(matrix, np.float64)
    shift = np.asarray(offset, np.float64)
    points = np.zeros((matrix.shape[0], len(index[0]) if index else 0), np.float64)
    for h, point in enumerate(points):
        if offset_first:
            point += shift[h]
        for column, along in zip(matrix[h], index, strict=True):
            point += along * column
        if not offset_first:
            point += shift[h]
    return points


@functools.cache
def _offset_first() -> bool | None:
    """Whether this SciPy's ``affine_transform`` adds the offset before the matrix terms (``True``) or after
    them (``False``); ``None`` when neither gives its values bit for bit.

    Found once per process on a small float64 probe whose values tell the two orders apart (< 1 ms).
    """
    shape = (6, 7, 8)
    data = np.sin(np.arange(np.prod(shape), dtype=np.float64) * 0.7).reshape(shape) * 1000.0
    matrix = np.array([[0.731, 0.113, -0.071], [-0.097, 0.689, 0.137], [0.053, -0.121, 0.917]]) / 3.0
    offset = np.array([1.1, 0.9, 1.3]) / 7.0
    whole = ndi.affine_transform(data, matrix, offset=offset, output_shape=shape, order=1, mode="nearest")
    index = np.nonzero(np.ones(shape, bool))
    for first in (True, False):
        at = ndi.map_coordinates(data, _points(matrix, offset, index, offset_first=first), order=1, mode="nearest")
        if at.tobytes() == whole.ravel().tobytes():
            return first
    return None


def grid_window(component: npt.NDArray[np.bool_], box: Box, shape: tuple[int, int, int],
                affine: Affine) -> tuple[slice, slice, slice] | None:
    """The part of the image grid that :func:`box_to_grid` fills for one box component.

    Parameters
    ----------
    component : ndarray of bool, shape box.shape
        One component on the box (non-empty).
    box : Box
    shape : tuple of 3 int
        Image grid shape.
    affine : ndarray, shape (4, 4)
        Image grid voxel -> RAS+ affine.

    Returns
    -------
    tuple of 3 slice, or None
        The image voxels within the component's bounding box grown by two box voxels; ``None``
        when that lies outside the image.
    """
    from_box = np.linalg.inv(affine) @ box.affine
    c_lo, c_hi = bounding_box(component)
    lo = np.maximum(c_lo - 2, 0)
    hi = np.minimum(c_hi + 2, np.asarray(box.shape) - 1)
    corners = np.array([[a, b, c, 1.0] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    grid_corners = (from_box @ corners.T).T[:, :3]
    g_lo = np.maximum(np.floor(grid_corners.min(axis=0)).astype(int), 0)
    g_hi = np.minimum(np.ceil(grid_corners.max(axis=0)).astype(int) + 1, np.asarray(shape))
    if np.any(g_hi <= g_lo):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(g_lo, g_hi, strict=True))  # type: ignore[return-value]


def grid_extent(regions: list[tuple[int, npt.NDArray[np.bool_]]], box: Box, shape: tuple[int, int, int],
                affine: Affine) -> tuple[slice, slice, slice] | None:
    """The smallest part of the image grid holding every region's :func:`grid_window` (``None``: none)."""
    windows = [w for _, component in regions if (w := grid_window(component, box, shape, affine)) is not None]
    if not windows:
        return None
    return tuple(slice(min(w[a].start for w in windows), max(w[a].stop for w in windows))  # type: ignore[return-value]
                 for a in range(3))
