"""The eye cover and the nose removal of a turned head, built in the head's own frame.

:mod:`defacer.distort` works on the RAS-ordered voxel array: the nose's bounding box x2 is taken along the
array's axes, the eye cover reads the face as a height map along the array's A axis in (R, S) columns, the
nose box stops at the head's centre along A.  On a head turned in the scanner (yaw, roll: measured once by
:func:`defacer.detect.pose.head_pose`, the detector's ``last_pose``) or acquired on an oblique grid, those axes
are not the head's: at 30 degrees of yaw the box x2 is a slanted slab wider than the nose (it cuts the cheek
beside the nose and the eye cover, and misses the tip), and the cover's height map looks at the face from
30 degrees off its front.

Here the face's region (the eyes and the nose with a margin) is resampled onto an upright grid along the head's
own axes (isotropic voxels, :func:`HeadGrid.resample`), the same distortions run there on the upright image and
its labels, and each edit is carried back onto the array's voxels by nearest neighbour (every array voxel takes
its mask, value and shield from the upright voxel it falls in; :func:`HeadGrid.edit_to_array`).  Only what the
distortions read is resampled: the labels over their own extent, the image over the eye covers' boxes
(:func:`defacer.distort.eye_cover_boxes`; the nose removal reads no value), and the grid is cut to those boxes and
the nose's: the edits are those of the whole grid (bar ties, :meth:`HeadGrid.edit_to_array`), at a third to a
half of the cost.  The nose's box x2 becomes an oriented box on the array, still clipped to its reach ball; the
cover meets the face from its front.  Nothing changes where the head's axes are the array's (within :data:`TURN_MIN_DEG`): those heads take
:mod:`defacer.distort`'s path unchanged, byte for byte.  The ears (a morphological opening of the head near the
detected ear) and the whole-face option (already in the eyes' own frame, :func:`defacer.detect.frame.eye_frame`)
are not re-framed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from defacer._typing import LabelMap
from defacer.detect.pose import POSE_MIN_DEG, plane_rotation
from defacer.detect.preprocess import mask_box
from defacer.distort import (
    Box,
    Edit,
    _box_list,
    components,
    distort_eyes,
    distort_nose,
    eye_cover_boxes,
    nose_region,
)
from defacer.head import HeadModel
from defacer.labels import Label

#: The eye cover and the nose removal are built in the head's frame where its axes are this far (degrees, one
#: rotation angle) from the array's: the detector's own threshold for turning its box.
TURN_MIN_DEG = POSE_MIN_DEG
#: The head-frame region resampled: this far beyond the eyes' and nose's labels to the sides and up and down (the
#: eye cover reaches 51 mm from an eye's centre, the nose removal 55 mm from the nose's), behind them and in front
#: of them (the cover reads the air in front of the face), in mm.
MARGIN_SIDE_MM = 70.0
MARGIN_BEHIND_MM = 50.0
MARGIN_FRONT_MM = 100.0
#: The upright grid's voxel: the array's finest spacing, never finer than this (mm).
MIN_STEP_MM = 1.0
#: ...and never more voxels than this: coarser where the region would hold more (a label map's eye or nose spread
#: over a whole anisotropic array).  The eyes and nose of a head with the margins hold about 13 million 1 mm voxels.
MAX_GRID_VOXELS = 32_000_000


def head_rotation(pose: Mapping[str, Any] | None, ras_affine: npt.NDArray[np.floating]) -> npt.NDArray[np.float64] | None:
    """The head's axes in the RAS array's axes, where they are :data:`TURN_MIN_DEG` or more apart.

    Parameters
    ----------
    pose : mapping or None
        The head's pose as the detector records it (:meth:`defacer.detect.pose.Pose.as_dict`: ``yaw_deg``,
        ``roll_deg``, ``box_turned``); unless ``box_turned`` the head is upright and the array's axes are taken as
        its axes, as they always were (``None``).
    ras_affine : ndarray, shape (4, 4)
        Voxel -> world (RAS+ mm) of the RAS-ordered array: an oblique grid turns its axes from the world's.

    Returns
    -------
    ndarray, shape (3, 3), or None
        Orthonormal; its columns are the head's R, A and S directions in the array's axes (index times spacing).
        ``None`` for an upright head, or where the turned head's axes are the array's (within :data:`TURN_MIN_DEG`: a
        head turned in the world but acquired on a grid turned with it).
    """
    if not pose or not pose.get("box_turned"):
        return None  # an upright head: the array's axes, as always (a tilted grid's pitch is not the head's pose)
    linear = np.asarray(ras_affine, float)[:3, :3]
    directions = linear / np.linalg.norm(linear, axis=0)
    world = plane_rotation(float(pose["yaw_deg"]), float(pose["roll_deg"]))
    u, _, vt = np.linalg.svd(directions.T @ world)  # the nearest rotation (a sheared grid is close to one)
    rotation = u @ vt
    angle = float(np.degrees(np.arccos(np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0))))
    return rotation if angle >= TURN_MIN_DEG else None


@dataclass(frozen=True)
class HeadGrid:
    """An upright grid along the head's axes over part of the RAS array.

    Attributes
    ----------
    rotation : ndarray, shape (3, 3)
        :func:`head_rotation`.
    spacing : tuple of 3 float
        The array's voxel size along its axes (mm).
    step : float
        The grid's (isotropic) voxel size, mm.
    origin : ndarray, shape (3,)
        Head-frame coordinates (mm) of the grid's voxel 0.
    shape : tuple of 3 int
    """

    rotation: npt.NDArray[np.float64]
    spacing: tuple[float, float, float]
    step: float
    origin: npt.NDArray[np.float64]
    shape: tuple[int, int, int]

    @property
    def to_array(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """(matrix, offset): array index = matrix @ grid index + offset."""
        scale = np.diag(1.0 / np.asarray(self.spacing, float)) @ self.rotation
        return scale * self.step, scale @ self.origin

    def resample(self, values: npt.NDArray[Any], order: int, cval: float) -> npt.NDArray[Any]:
        """``values`` (on the array) on this grid: linear (``order`` 1) or nearest (0); ``cval`` outside the array."""
        matrix, offset = self.to_array
        return ndimage.affine_transform(values, matrix, offset, output_shape=self.shape, order=order, cval=cval,
                                        prefilter=False)

    def crop(self, box: Box) -> HeadGrid:
        """The part ``box`` (slices of this grid) of this grid: the same voxels, ``box``'s first at index 0."""
        start = np.array([s.start for s in box], float)
        shape = tuple(int(s.stop - s.start) for s in box)
        return HeadGrid(self.rotation, self.spacing, self.step, self.origin + start * self.step,
                        shape)  # type: ignore[arg-type]

    def index_of(self, points: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """Where array indices ``points`` (shape (N, 3)) fall on this grid (continuous indices, shape (N, 3))."""
        frame = (np.asarray(points, float) * np.asarray(self.spacing, float)) @ self.rotation
        return np.asarray((frame - self.origin) / self.step, dtype=np.float64)

    def edit_to_array(self, edit: Edit, image_shape: tuple[int, ...]) -> Edit | None:
        """``edit`` (on this grid) on the array: each array voxel takes the edit's at the grid voxel it falls in.

        Only the extent of the edit's mask is carried over (its shield with it: the nose removal that leaves the
        eye cover's shield alone runs on the grid, before this).  Nearest is scipy's order 0, which takes an array
        voxel lying exactly half-way between two grid voxels (an array of 1.5 mm slices on a 1 mm grid: every other
        slice) into the upper one; numpy's ``rint`` before it took the even one (invesalius-ct0051 turned by 30
        degrees: 1,541 of the 245,000 voxels its cover and nose removal write moved by that half voxel).  ``None`` where no voxel of the
        array falls in the edit's mask.
        """
        inner = mask_box(edit.mask)
        if inner is None:
            return None
        edit = Edit(edit.feature, tuple(slice(b.start + i.start, b.start + i.stop)  # type: ignore[arg-type]
                                        for b, i in zip(edit.box, inner, strict=True)),
                    edit.mask[inner], edit.values[inner], edit.params,
                    shield=None if edit.shield is None else edit.shield[inner])
        matrix, offset = self.to_array
        corners = np.array([[s.start if bit == 0 else s.stop - 1 for s, bit in zip(edit.box, bits, strict=True)]
                            for bits in np.ndindex(2, 2, 2)], float)
        at = corners @ matrix.T + offset
        lo = np.maximum(np.floor(at.min(axis=0)).astype(int) - 1, 0)
        hi = np.minimum(np.ceil(at.max(axis=0)).astype(int) + 2, np.asarray(image_shape[:3]))
        if np.any(hi <= lo):
            return None
        box: Box = (slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1])), slice(int(lo[2]), int(hi[2])))
        # nearest neighbour (scipy's order 0) from the edit's arrays, padded by one voxel of nothing on each side, so
        # an array voxel falling outside the edit's box takes nothing: mask and shield packed in one uint8
        inverse = np.linalg.inv(matrix)
        start = np.array([s.start for s in box], float)
        local = inverse @ (start - offset) - np.array([s.start for s in edit.box], float) + 1.0
        shape = tuple(s.stop - s.start for s in box)
        codes = edit.mask.astype(np.uint8)
        if edit.shield is not None:
            codes |= edit.shield.astype(np.uint8) << 1
        codes = ndimage.affine_transform(np.pad(codes, 1), inverse, local, output_shape=shape, order=0, cval=0,
                                         prefilter=False)
        mask = (codes & 1).astype(bool)
        if not mask.any():
            return None
        written = np.asarray(edit.values, np.float32)[edit.mask]
        if written.min() == written.max():  # one value (the nose removal's air): nothing to resample
            values = np.full(shape, written[0], dtype=np.float32)
        else:
            values = ndimage.affine_transform(np.pad(np.asarray(edit.values, np.float32), 1), inverse, local,
                                              output_shape=shape, order=0, cval=0.0, prefilter=False)
        shield = (codes & 2).astype(bool) if edit.shield is not None else None
        # voxel positions on the upright grid go under head_frame; the edit's box and the nose's centre are the array's
        moved = ("box", "centres_rs_voxel", "centre_voxel")
        upright = {k: v for k, v in edit.params.items() if k in moved}
        params: dict[str, Any] = {k: v for k, v in edit.params.items() if k not in moved}
        params.update(box=_box_list(box), head_frame={
            **upright, "grid_mm": round(self.step, 3), "origin_mm": [round(float(o), 3) for o in self.origin],
            "rotation": [[round(float(x), 4) for x in row] for row in self.rotation]})
        if "centre_voxel" in upright:
            centre = matrix @ np.asarray(upright["centre_voxel"], float) + offset
            params["centre_voxel"] = [round(float(c), 2) for c in centre]
        return Edit(edit.feature, box, mask, values, params, shield=shield)


def head_grid(rotation: npt.NDArray[np.float64], spacing: tuple[float, float, float], image_shape: tuple[int, ...],
              points: npt.NDArray[Any]) -> HeadGrid:
    """The upright grid over ``points`` (array indices, shape (N, 3)) and the margins, within the array's extent;
    its voxel coarser than the array's finest where it would hold more than :data:`MAX_GRID_VOXELS`."""
    sp = np.asarray(spacing, float)
    step = max(float(sp.min()), MIN_STEP_MM)
    frame = (np.asarray(points, float) * sp) @ rotation  # head-frame mm
    corners = (np.array(list(np.ndindex(2, 2, 2)), float) * (np.asarray(image_shape[:3]) - 1) * sp) @ rotation
    lo = frame.min(axis=0) - np.array([MARGIN_SIDE_MM, MARGIN_BEHIND_MM, MARGIN_SIDE_MM])
    hi = frame.max(axis=0) + np.array([MARGIN_SIDE_MM, MARGIN_FRONT_MM, MARGIN_SIDE_MM])
    lo, hi = np.maximum(lo, corners.min(axis=0)), np.minimum(hi, corners.max(axis=0))
    extent = np.maximum(hi - lo, 0.0)
    while np.prod(np.floor(extent / step) + 2.0) > MAX_GRID_VOXELS:  # at most MAX_GRID_VOXELS (a whole array)
        step *= 1.25
    # the grid's voxels at whole steps from the array's voxel 0: where the head's axes are the array's and the step
    # its spacing, they are the array's own voxels (at 70 mm from a 1.5 mm array's voxels they fell a third of a
    # voxel between them, and the image was interpolated there)
    lo = np.floor(lo / step + 1e-6) * step
    shape = tuple(int(n) for n in np.maximum(np.ceil((hi - lo) / step).astype(int) + 1, 1))
    return HeadGrid(rotation, tuple(float(s) for s in sp), step, lo, shape)  # type: ignore[arg-type]


def feature_points(labels_ras: LabelMap, *, eyes: bool, nose: bool) -> npt.NDArray[np.intp]:
    """The array indices (N, 3) of the eye and nose voxels the distortions build on: those in the boxes of the
    components :mod:`defacer.distort` uses (the two largest eyes, the largest nose; :func:`defacer.distort.components`).

    A crumb of a label map far from the face (one stray nose voxel in a corner) is no part of any distortion; the
    upright grid spanned it all the same, the whole array at 1 mm (two stray voxels in a 512 x 512 x 86 array of
    1 x 1 x 6 mm voxels: 2.9 -> 20 s and 0.9 GB more).
    """
    found = []
    for wanted, count in ((Label.EYES, 2), (Label.NOSE, 1)):
        if not (eyes if wanted == Label.EYES else nose):
            continue
        mask = labels_ras == wanted
        for box in components(mask, count):
            found.append(np.argwhere(mask[box]) + np.array([s.start for s in box], np.intp))
    return np.concatenate(found) if found else np.zeros((0, 3), np.intp)


def _slack(grid: HeadGrid) -> float:
    """How far (grid voxels) a grid voxel taking an array voxel's label by nearest neighbour may lie from that array
    voxel's centre, plus one: half the array voxel's diagonal."""
    return 0.5 * float(np.linalg.norm(grid.spacing)) / grid.step + 1.0


def _grid_box(shape: tuple[int, ...], lo: npt.ArrayLike, hi: npt.ArrayLike) -> Box:
    """The voxels from ``lo`` to ``hi`` (continuous indices, per axis) of a grid of ``shape``, at least one."""
    n = np.asarray(shape[:3])
    start = np.clip(np.floor(np.asarray(lo, float)), 0, n - 1).astype(int)
    stop = np.clip(np.ceil(np.asarray(hi, float)) + 1, start + 1, n).astype(int)
    return (slice(int(start[0]), int(stop[0])), slice(int(start[1]), int(stop[1])), slice(int(start[2]), int(stop[2])))


def _union(boxes: list[Box]) -> Box:
    return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes))  # type: ignore[return-value]
                 for a in range(3))


def _shifted(box: Box, by: Box) -> Box:
    """``box`` in the coordinates of the crop ``by``."""
    return tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(box, by, strict=True))  # type: ignore[return-value]


def _labels_on(grid: HeadGrid, labels_ras: LabelMap, points: npt.NDArray[Any]) -> tuple[npt.NDArray[np.uint8], Box]:
    """The eye and nose labels on ``grid``, resampled only over the extent of ``points`` (their voxels, array
    indices) within :func:`_slack`: 0 elsewhere.  Returns them and that extent.

    Each label's mask is interpolated linearly and taken where it is over one half (its boundary where the array's
    voxels put it, as the detector carries its labels back from its box), not by nearest neighbour, which takes the
    array voxels' staircase along the turned axes with it: the phantom's eyes and nose turned by 20-45 degrees keep
    their upright extents (voxels, summed over the three axes, both labels, four turns and three voxel sizes) within
    28 voxels, against 37 by nearest; a wider nose label makes a wider box x2, whose corners take the cheeks.
    """
    slack = _slack(grid)
    points = np.asarray(points)
    which = labels_ras[tuple(points.T)]
    labels = np.zeros(grid.shape, dtype=np.uint8)
    parts = []
    for value in (Label.EYES, Label.NOSE):
        mine = points[which == value]
        if not len(mine):
            continue
        at = grid.index_of(mine)
        part = _grid_box(grid.shape, at.min(axis=0) - slack, at.max(axis=0) + slack)
        matrix, offset = grid.crop(part).to_array
        lo = np.maximum(mine.min(axis=0) - 2, 0)
        hi = np.minimum(mine.max(axis=0) + 3, np.asarray(labels_ras.shape[:3]))
        inside = np.asarray(labels_ras[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]) == value
        share = ndimage.affine_transform(inside.astype(np.float32), matrix, offset - lo,
                                         output_shape=tuple(s.stop - s.start for s in part), order=1, cval=0.0,
                                         prefilter=False)
        labels[part][share > 0.5] = value
        parts.append(part)
    return labels, _union(parts)


def distort_face_in_head_frame(
    image: npt.NDArray[np.floating],
    labels_ras: LabelMap,
    head: HeadModel,
    spacing: tuple[float, float, float],
    rotation: npt.NDArray[np.float64],
    head_centre: npt.NDArray[np.floating],
    *,
    eyes: bool,
    nose: bool,
    band_mm: float,
    box_scale: float,
    nose_scale: float,
) -> list[Edit]:
    """The eye cover and the nose removal (:mod:`defacer.distort`) of a turned head, built upright and mapped back.

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z)
        RAS-ordered image, physical values.
    labels_ras : ndarray, uint8, shape (X, Y, Z)
        The detector's labels on it.
    head : HeadModel
        Its head (the air and tissue levels).
    spacing : tuple of 3 float
        The array's voxel size (mm).
    rotation : ndarray, shape (3, 3)
        :func:`head_rotation`.
    head_centre : ndarray, shape (3,)
        The head's centre (array index): the nose box never reaches behind it along the head's A axis.
    eyes, nose : bool
        Which of the two to build.
    band_mm, box_scale, nose_scale : float
        As :func:`defacer.distort.distort_eyes` and :func:`defacer.distort.nose_region`.

    Returns
    -------
    list of Edit
        On the array, in :mod:`defacer.distort`'s order (eye covers, then the nose removal); each records its
        ``head_frame`` (its box on the upright grid, the grid's voxel and the rotation).
    """
    points = feature_points(labels_ras, eyes=eyes, nose=nose)
    if not len(points):
        return []
    grid = head_grid(rotation, spacing, image.shape, points)
    labels, extent = _labels_on(grid, labels_ras, points)
    step = (grid.step,) * 3
    # what each distortion reads or writes on the whole grid: the cover's boxes, the nose's box within its ball;
    # only that (and the labels) is kept, and the image is resampled in the covers' boxes only (the nose reads none)
    covers = eye_cover_boxes(labels == Label.EYES, step, band_mm=band_mm, box_scale=box_scale) if eyes else []
    region = None
    if nose:
        matrix, offset = grid.to_array
        centre_a = int(np.linalg.solve(matrix, np.asarray(head_centre, float) - offset)[1])
        region = nose_region(labels == Label.NOSE, grid.shape, step, nose_scale,  # type: ignore[arg-type]
                             posterior_limit=min(max(centre_a, 0), grid.shape[1]))
    kept = _union([extent, *covers, *([region.box] if region is not None else [])])
    grid, labels = grid.crop(kept), labels[kept]
    upright = np.full(grid.shape, float(head.background), dtype=np.float32)
    for box in covers:
        upright[_shifted(box, kept)] = grid.crop(_shifted(box, kept)).resample(
            np.asarray(image, np.float32), 1, float(head.background))
    built: list[Edit] = []
    if eyes:
        built += distort_eyes(upright, labels == Label.EYES, head, step, band_mm=band_mm, box_scale=box_scale)
    if region is not None:
        start = np.array([s.start for s in kept], float)
        centre = tuple(float(c - o) for c, o in zip(region.centre, start, strict=True))
        region = replace(
            region, box=_shifted(region.box, kept), centre=centre,  # type: ignore[arg-type]
            bottom=None if region.bottom is None else region.bottom - kept[2].start)
        built.append(distort_nose(upright, region, head, keep=built))
    mapped = [grid.edit_to_array(edit, image.shape) for edit in built]
    return [edit for edit in mapped if edit is not None]
