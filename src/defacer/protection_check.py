"""After the fact: did any voxel that changed lie deeper than the protection depth below the head surface?

:func:`defacer.pipeline.deface` writes an edit only where the coarse depth map (about 4 mm
grid), read at the *nearest coarse sample* of each voxel, is at most ``depth - slack``; by
the 1-Lipschitz argument in that module's docstring this keeps every written voxel within
``depth`` of the surface.  Looking the changed voxels up in the same coarse map with the same
rule would give 0 by construction, so this check measures something else:

* **what changed** is taken from the stored values themselves (output differs from input),
  not from the edit masks, so a write that bypassed the gate, a wrong map back onto the
  file's grid or a mis-quantised value all count;
* **its depth** is the exact Euclidean distance, in mm, from each changed voxel's own
  full-resolution position to the nearest coarse sample outside the opened head (searched among
  the samples within reach, :meth:`OutsideSamples.within`), not a coarse-map lookup: no
  nearest-sample rounding, no slack.

What it shares with the gate is the head surface itself (the threshold, the sealed head and
its opening in :mod:`defacer.head`): it checks that the writes respect that surface, not that
the surface is right (the phantom tests, which know where the brain is, check that).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from defacer._typing import Mask
from defacer.detect.preprocess import mask_box
from defacer.head import HeadModel

if TYPE_CHECKING:  # scipy.spatial costs 0.05-0.15 s to import (SciPy's linalg, sparse, constants): not at run time
    from scipy.spatial import cKDTree

#: Added to the protection depth as the search's reach, in mm, as :func:`within_depth` gives it to a k-d tree
#: (``distance_upper_bound``): a voxel at exactly the depth counts as within.
REACH_MARGIN_MM = 1e-6


@dataclass(frozen=True)
class ProtectionCheck:
    """Depth of the voxels that changed, measured independently of the write gate.

    Attributes
    ----------
    changed_voxels : int
        Voxels whose stored value differs between input and output.
    changed_inside_protected : int
        Of those, the ones deeper than the protection depth below the head surface.
    """

    changed_voxels: int
    changed_inside_protected: int


def outside_samples(depth: npt.NDArray[np.floating], coarse_step_mm: tuple[float, float, float]) -> npt.NDArray[np.float64]:
    """Positions (mm, full-grid frame) of the coarse samples outside the opened head (depth 0)."""
    return np.argwhere(depth <= 0).astype(np.float64) * np.asarray(coarse_step_mm)


def outside_tree(depth: npt.NDArray[np.floating], coarse_step_mm: tuple[float, float, float]) -> cKDTree | None:
    """A k-d tree of :func:`outside_samples` (``None`` when the head fills the whole grid), built once per head.

    For the benchmarks and tests (the measure :meth:`OutsideSamples.within` answers as); the command does not
    build it.
    """
    from scipy.spatial import cKDTree

    outside = outside_samples(depth, coarse_step_mm)
    return cKDTree(outside) if outside.size else None


@dataclass(frozen=True)
class OutsideSamples:
    """The coarse samples outside the opened head, searched near the voxels asked about only.

    The same question as a query of :func:`outside_tree` (is a sample within the distance?), with the
    same answer, without a k-d tree: the samples are points of the coarse grid, so those within reach of a
    voxel lie in a small block of coarse cells around the voxel's own, and that block is searched cell by
    cell, nearest cells first, each voxel until a sample within the distance is found (most voxels asked
    about are within: the first few cells decide them).  The distance is computed as the k-d tree computes
    it (positions in mm as :func:`outside_samples` and :func:`within_depth` form them, differences squared
    and summed in axis order, compared with the squared reach), so every answer is the tree's.  A tree was
    built per question, of the samples near the voxels, and scipy.spatial was imported for it (0.05-0.15 s
    of every command).

    Attributes
    ----------
    outside : ndarray, bool, coarse grid
        ``depth <= 0`` (:func:`outside_samples`).
    step : tuple of 3 float
        Coarse voxel size along R, A, S in mm (:meth:`defacer.head.HeadModel.coarse_spacing`): the full
        grid's voxel size times ``strides``.
    strides : tuple of 3 int
        Full-grid voxels per coarse voxel along each axis (:attr:`defacer.head.HeadModel.strides`).
    """

    outside: Mask
    step: tuple[float, float, float]
    strides: tuple[int, int, int]

    @classmethod
    def of(cls, depth: npt.NDArray[np.floating], head: HeadModel,
           spacing: tuple[float, float, float]) -> OutsideSamples:
        """The samples of a head's coarse depth map (:func:`defacer.head.depth_below_surface`)."""
        return cls(np.asarray(depth <= 0), head.coarse_spacing(spacing), head.strides)

    def within(self, indices: npt.NDArray[np.intp], spacing: tuple[float, float, float],
               depth_mm: float) -> npt.NDArray[np.bool_]:
        """:func:`within_depth` of ``indices``: is an outside sample within ``depth_mm`` of each voxel?

        Parameters
        ----------
        indices : ndarray, int, shape (N, 3)
            Full-grid voxel indices in RAS axis order (voxels past the last coarse sample too).
        spacing : tuple of 3 float
            Full-grid voxel size along R, A, S in mm (:attr:`step` is it times :attr:`strides`).
        depth_mm : float
            The protection depth.

        Returns
        -------
        ndarray, bool, shape (N,)
            Whether a sample lies closer than ``depth_mm + REACH_MARGIN_MM`` (a k-d tree's
            ``distance_upper_bound``: strictly closer, distances squared as the tree squares them).

        Raises
        ------
        ValueError
            Where :attr:`step` is not ``spacing`` times :attr:`strides` (the block searched would not hold
            every sample within reach).
        """
        indices = np.asarray(indices, dtype=np.intp).reshape(-1, 3)
        found = np.zeros(len(indices), dtype=bool)
        strides = np.asarray(self.strides, dtype=np.intp)
        sp = np.asarray(spacing, dtype=np.float64)
        step = np.asarray(self.step, dtype=np.float64)
        if not np.allclose(step, strides * sp, rtol=1e-9, atol=0.0):
            raise ValueError(f"The coarse step {tuple(step)} mm is not the voxel size {tuple(sp)} mm times the "
                             f"strides {tuple(strides)}.")
        if len(indices) == 0 or not self.outside.any():
            return found
        reach_mm = depth_mm + REACH_MARGIN_MM
        bound = reach_mm * reach_mm  # as the tree squares distance_upper_bound
        # A sample c within reach of voxel i (cell b = i // s, so 0 <= i - b s <= s - 1 along each axis) has
        # |c - b| <= ceil(reach / step) + 1 cells along each axis: the block searched.  Voxels whose block
        # lies wholly off the grid have no sample within reach.
        reach = np.ceil(reach_mm / step).astype(np.intp) + 1
        cells = indices // strides
        shape = np.asarray(self.outside.shape, dtype=np.intp)
        near = np.all((cells >= -reach) & (cells < shape + reach), axis=1)
        pad = 2 * reach  # the block of a voxel within `reach` cells of the grid stays inside the padded grid
        padded = np.pad(self.outside, [(int(p), int(p)) for p in pad], constant_values=False)
        flat = padded.ravel()
        flat_strides = np.asarray(padded.strides, dtype=np.intp) // padded.itemsize
        # the block's offsets, nearest first by the least distance they can lie at (a voxel anywhere in its
        # cell); offsets beyond reach even so are left out (a margin over that bound's rounding)
        offsets = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij"), -1).reshape(-1, 3)
        gap = np.where(offsets > 0, offsets * strides - (strides - 1), np.where(offsets < 0, -offsets * strides, 0))
        least = np.sum((gap * sp) ** 2, axis=1)
        kept = least < bound * (1 + 1e-9)
        offsets = offsets[kept][np.argsort(least[kept], kind="stable")]
        # the positions the tree's queries and samples have: index (as float64) times spacing / step
        position = indices.astype(np.float64) * sp
        corner = cells.astype(np.float64)
        at = (cells + pad) @ flat_strides
        todo = np.flatnonzero(near)
        for offset in offsets:
            if not len(todo):
                break
            candidates = todo[flat[at[todo] + int(offset @ flat_strides)]]
            if not len(candidates):
                continue
            d = [position[candidates, a] - (corner[candidates, a] + offset[a]) * step[a] for a in range(3)]
            close = (d[0] * d[0] + d[1] * d[1]) + d[2] * d[2] < bound
            if close.any():
                found[candidates[close]] = True
                todo = todo[~found[todo]]
        return found


def within_depth(indices: npt.NDArray[np.intp], outside: cKDTree | OutsideSamples | None,
                 spacing: tuple[float, float, float], depth_mm: float) -> npt.NDArray[np.bool_]:
    """Whether each full-grid voxel lies within ``depth_mm`` of the nearest coarse sample outside the opened head.

    The exact depth measure of :func:`check_protection` (from each voxel's own position), for the write
    gate's uncertain band.

    Parameters
    ----------
    indices : ndarray, int, shape (N, 3)
        Full-grid voxel indices in RAS axis order.
    outside : cKDTree, OutsideSamples or None
        :func:`outside_tree` of the coarse depth map (positions in mm), or its samples, searched near
        ``indices`` (:meth:`OutsideSamples.within`, the same answers).
    spacing : tuple of 3 float
        Full-grid voxel size along R, A, S in mm.
    depth_mm : float
        The protection depth.

    Returns
    -------
    ndarray, bool, shape (N,)
    """
    if isinstance(outside, OutsideSamples):
        return outside.within(indices, spacing, depth_mm)
    if len(indices) == 0 or outside is None:
        return np.zeros(len(indices), dtype=bool)
    points = indices.astype(np.float64) * np.asarray(spacing, dtype=np.float64)
    distance, _ = outside.query(points, distance_upper_bound=depth_mm + REACH_MARGIN_MM)
    return np.asarray(np.isfinite(distance))


def changed_mask(before: npt.NDArray[np.generic], after: npt.NDArray[np.generic]) -> Mask:
    """Voxels whose stored value differs between ``before`` and ``after`` (NaN equal to NaN)."""
    if before.shape != after.shape:
        raise ValueError(f"Input and output grids differ: {before.shape} vs {after.shape}.")
    changed: Mask = before != after
    if np.issubdtype(before.dtype, np.floating):
        changed &= ~(np.isnan(before) & np.isnan(after))
    return changed


def changed_indices(before: npt.NDArray[np.generic], after: npt.NDArray[np.generic]) -> npt.NDArray[np.intp]:
    """Indices of the voxels whose stored value differs (:func:`changed_mask`), as :func:`numpy.argwhere` gives them.

    Listed from the changed voxels' bounding box only, in the same (C) order with the same values:
    listing a whole scan (about 14 M voxels, in the file's memory order) took 0.07 s.

    Parameters
    ----------
    before, after : ndarray, shape (X, Y, Z)
        Stored values on the same grid (any axis order).

    Returns
    -------
    ndarray, int, shape (N, 3)
    """
    changed = changed_mask(before, after)
    box = mask_box(changed)
    if box is None:
        return np.zeros((0, changed.ndim), dtype=np.intp)
    return np.argwhere(changed[box]) + np.asarray([s.start for s in box], dtype=np.intp)


def check_protection(changed_ras: Mask, head: HeadModel, depth: npt.NDArray[np.floating],
                     spacing: tuple[float, float, float], protect_depth_mm: float) -> ProtectionCheck:
    """Count the changed voxels deeper than ``protect_depth_mm`` below the head surface.

    The depth of a point is its exact distance to the nearest coarse sample outside the opened
    head: on the samples themselves, the distance map :func:`defacer.head.depth_below_surface`
    holds; between them, the 1-Lipschitz function the gate's bound is about.

    Parameters
    ----------
    changed_ras : ndarray, bool, full grid in RAS axis order
        The voxels whose stored value changed (:func:`changed_mask` of input and output).
    head : HeadModel
        Gives the coarse grid's strides.
    depth : ndarray, float, coarse grid
        :func:`defacer.head.depth_below_surface`; only its zero set (outside the opened head)
        is used.
    spacing : tuple of 3 float
        Full-grid voxel size along R, A, S in mm.
    protect_depth_mm : float
        The protection depth.

    Returns
    -------
    ProtectionCheck
    """
    return check_protection_at(np.argwhere(changed_ras), head, depth, spacing, protect_depth_mm)


def check_protection_at(indices: npt.NDArray[np.intp], head: HeadModel, depth: npt.NDArray[np.floating],
                        spacing: tuple[float, float, float], protect_depth_mm: float) -> ProtectionCheck:
    """:func:`check_protection` of the changed voxels given by their indices (no full-grid mask needed).

    Parameters
    ----------
    indices : ndarray, int, shape (N, 3)
        Full-grid indices, in RAS axis order, of the voxels whose stored value changed (each once).
    head, depth, spacing, protect_depth_mm
        As :func:`check_protection`.

    Returns
    -------
    ProtectionCheck
    """
    count = len(indices)
    if count == 0:
        return ProtectionCheck(0, 0)
    samples = OutsideSamples.of(depth, head, spacing)
    if not samples.outside.any():  # the head fills the whole grid: every voxel is inside, none measurable
        return ProtectionCheck(count, count)
    # A voxel in a coarse cell with an outside corner is within one cell diagonal of the outside: when that
    # is no more than the protection depth, it needs no search (most changed voxels: the face's surface band).
    todo = np.ones(len(indices), dtype=bool)
    if float(np.linalg.norm(samples.step)) <= protect_depth_mm:
        lower = np.minimum(indices // np.asarray(head.strides), np.asarray(depth.shape) - 1)
        todo = ~_cells_touching_outside(samples.outside)[lower[:, 0], lower[:, 1], lower[:, 2]]
    deep = 0
    if todo.any():
        # The nearest outside sample, searched up to the protection depth near these voxels
        deep = int(np.count_nonzero(~samples.within(indices[todo], spacing, protect_depth_mm)))
    return ProtectionCheck(count, deep)


def _cells_touching_outside(outside: Mask) -> Mask:
    """For each coarse sample ``c``: is any corner ``c + {0, 1}^3`` of its cell outside (last index repeated)?"""
    cell = outside.copy()
    for axis in range(3):
        n = cell.shape[axis]
        following = np.take(cell, np.minimum(np.arange(1, n + 1), n - 1), axis=axis)
        cell |= following
    return cell
