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
  full-resolution position to the nearest coarse sample outside the opened head (a k-d tree
  query), not a coarse-map lookup: no nearest-sample rounding, no slack.

What it shares with the gate is the head surface itself (the threshold, the sealed head and
its opening in :mod:`defacer.head`): it checks that the writes respect that surface, not that
the surface is right (the phantom tests, which know where the brain is, check that).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from defacer._typing import Mask
from defacer.detect.preprocess import mask_box
from defacer.head import HeadModel


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
    """A k-d tree of :func:`outside_samples` (``None`` when the head fills the whole grid), built once per head."""
    outside = outside_samples(depth, coarse_step_mm)
    return cKDTree(outside) if outside.size else None


#: How far beyond the searched distance the samples kept by :meth:`OutsideSamples.within` reach, in mm
#: (a margin over any rounding: every sample within the distance is kept, and then some).
NEAR_MARGIN_MM = 1.0


@dataclass(frozen=True)
class OutsideSamples:
    """The coarse samples outside the opened head, searched near the voxels asked about only.

    The same question as a query of :func:`outside_tree` (is a sample within the distance?), with
    the same answer: the samples that can lie within reach of the voxels asked about are all kept
    and only they go into a k-d tree, built per question.  A 1 mm head's air holds ~185,000 coarse
    samples (a tree of all of them took 0.03-0.05 s to build, and the gate and the check each built one);
    those near an edit or the changed voxels are a small part of them.

    Attributes
    ----------
    outside : ndarray, bool, coarse grid
        ``depth <= 0`` (:func:`outside_samples`).
    step : tuple of 3 float
        Coarse voxel size along R, A, S in mm (:meth:`defacer.head.HeadModel.coarse_spacing`).
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

    def near(self, indices: npt.NDArray[np.intp], reach_mm: float) -> Mask:
        """Coarse samples that can lie within ``reach_mm`` of a full-grid voxel of ``indices`` (N, 3): a superset.

        A sample ``c`` within ``reach_mm`` of voxel ``i`` has ``|c_a - i_a / s_a| <= reach_mm / step_a``
        along each axis (``s``: strides), so it lies within ``ceil(reach_mm / step_a) + 1`` coarse
        voxels of the coarse voxel ``i_a // s_a`` (clipped to the grid: a voxel past the last sample).
        """
        shape = np.asarray(self.outside.shape)
        cells = np.minimum(np.asarray(indices, np.intp) // np.asarray(self.strides), shape - 1)
        near = np.zeros(self.outside.shape, dtype=bool)
        near[tuple(cells.T)] = True
        for axis, step in enumerate(self.step):
            reach = int(np.ceil(reach_mm / step)) + 1
            near = ndi.maximum_filter1d(near, 2 * reach + 1, axis=axis, mode="constant", cval=False)
        return near

    def within(self, indices: npt.NDArray[np.intp], spacing: tuple[float, float, float],
               depth_mm: float) -> npt.NDArray[np.bool_]:
        """:func:`within_depth` of ``indices`` against every outside sample, from a tree of those near them.

        Parameters
        ----------
        indices : ndarray, int, shape (N, 3)
            Full-grid voxel indices in RAS axis order.
        spacing : tuple of 3 float
            Full-grid voxel size along R, A, S in mm.
        depth_mm : float
            The protection depth.

        Returns
        -------
        ndarray, bool, shape (N,)
        """
        if len(indices) == 0:
            return np.zeros(0, dtype=bool)
        kept = self.outside & self.near(indices, depth_mm + NEAR_MARGIN_MM)
        # the positions outside_samples gives these samples (same indices, same product)
        samples = np.argwhere(kept).astype(np.float64) * np.asarray(self.step)
        return within_depth(indices, cKDTree(samples) if samples.size else None, spacing, depth_mm)


def within_depth(indices: npt.NDArray[np.intp], outside: cKDTree | OutsideSamples | None,
                 spacing: tuple[float, float, float], depth_mm: float) -> npt.NDArray[np.bool_]:
    """Whether each full-grid voxel lies within ``depth_mm`` of the nearest coarse sample outside the opened head.

    The exact depth measure of :func:`check_protection` (a k-d tree query from each voxel's own
    position), for the write gate's uncertain band.

    Parameters
    ----------
    indices : ndarray, int, shape (N, 3)
        Full-grid voxel indices in RAS axis order.
    outside : cKDTree, OutsideSamples or None
        :func:`outside_tree` of the coarse depth map (positions in mm), or the samples to build a tree
        of near ``indices`` from (:meth:`OutsideSamples.within`).
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
    distance, _ = outside.query(points, distance_upper_bound=depth_mm + 1e-6)
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
        # The nearest outside sample, searched up to the protection depth (its own tree, not the gate's, of the
        # samples near these voxels: every sample within that depth of them is among those)
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
