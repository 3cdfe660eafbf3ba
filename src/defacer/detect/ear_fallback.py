"""Find an ear the network missed, from the image, where the eyes say it should be.

The network finds the eyes and nose on nearly every head but misses many ears on heads it has not
seen.  For a side with no ear component (and only when both eyes were found) this module:

1. predicts the ear's position from the eyes (:func:`eye_frame`; the mean offset
   :data:`EAR_OFFSET_MM` measured on the reference labels by ``scripts/ear_offsets.py``), moved
   outward along the eye axis to the head's lateral surface;
2. labels as ear the tissue near that point that a morphological opening of the head removes
   (the auricle standing out from the head), on the outer side, in the largest piece touching the
   head, and only when it holds at least :data:`MIN_EAR_MM3`; otherwise the ear stays not found.
   A head whose field of view cuts the ears, or an ear pressed flat against the head, gives no ear.

Everything runs on a crop around the predicted ear at about :data:`GRID_MM`, so it adds a few
tenths of a second at most, and only when an ear is missing.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from defacer._typing import Affine, LabelMap, Mask
from defacer.head import HeadModel, analyse_head, depth_below_surface
from defacer.labels import Label

Box = tuple[slice, slice, slice]

#: Mean (y, z) offset of an ear centroid in the eye frame, in mm (y: anterior, z: up), from
#: ``python scripts/ear_offsets.py`` on the reference labels of all 21 heads (42 ears), 2026-12-03.
#: Leave one head out, the predicted (y, z) is a median 12 mm (90th percentile 22 mm, max 31 mm) off.
EAR_OFFSET_MM = (-91.3, -29.4)
#: Standard deviation of those offsets, in mm (y, z).
EAR_SPREAD_MM = (7.3, 12.7)
#: Radius around the predicted ear (on the head's lateral surface) searched for an auricle, in mm
#: (about twice the spread of the offsets, the largest leave-one-out error).
SEARCH_RADIUS_MM = 30.0
#: Radius of the ball whose opening of the head delimits the auricle, in mm (on the GRID_MM grid).
OPENING_MM = 10.0
#: Grid step on which the auricle is delimited, in mm.
GRID_MM = 2.0
#: Tissue more than this medial of the head's lateral surface is never ear, in mm.
MEDIAL_MM = 10.0
#: Tissue within this distance of an accepted auricle joins it (its root and partial-volume rim), in mm.
ROOT_MM = 2.0
#: Smallest auricle accepted, in mm^3 (the reference auricles hold 4-16 cm^3).
MIN_EAR_MM3 = 1000.0
#: How far beyond the search radius an auricle reaching into it is still followed, in mm.
EXTENT_MM = 20.0
#: How far out from the eyes' midline the head's lateral surface is looked for, in mm.
MAX_HALF_WIDTH_MM = 150.0


def eye_frame(eye_a: npt.ArrayLike, eye_b: npt.ArrayLike
              ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], float]:
    """Origin and axes of the frame the ear offsets are measured in.

    The frame follows the eyes (a head turned or tilted in the scanner turns it with them) and
    the scanner's anterior direction (for the head's pitch): on the reference labels this gives
    about half the spread of a frame through the nose centroid, which moves with the nose's
    size, cut and shape.

    Parameters
    ----------
    eye_a, eye_b : array-like, shape (3,)
        The eye centroids in world (RAS+) mm, in any order.

    Returns
    -------
    origin : ndarray, shape (3,)
        The eyes' midpoint.
    axes : ndarray, shape (3, 3)
        Rows x, y, z: x from the eye with the smaller world x to the other (towards +R); y the
        world's anterior direction made orthogonal to x; z = x cross y (up).
    eyes_mm : float
        Distance between the eyes.
    """
    a, b = np.asarray(eye_a, float), np.asarray(eye_b, float)
    if a[0] > b[0]:
        a, b = b, a
    origin = (a + b) / 2.0
    eyes_mm = float(np.linalg.norm(b - a))
    x = (b - a) / max(eyes_mm, 1e-6)
    y = np.array([0.0, 1.0, 0.0]) - x[1] * x
    if np.linalg.norm(y) < 1e-6:  # eyes one behind the other: no usable frame, keep the world's
        x, y = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    y /= np.linalg.norm(y)
    z = np.cross(x, y)
    return origin, np.stack([x, y, z]), eyes_mm


def _centroids(mask: npt.NDArray[np.bool_], affine: Affine) -> list[tuple[npt.NDArray[np.float64], int]]:
    """World centroid and voxel count of each connected component, largest first."""
    lab, n = ndi.label(mask)
    if n == 0:
        return []
    sizes = np.bincount(lab.ravel())[1:]
    order = np.argsort(sizes)[::-1]
    centres = ndi.center_of_mass(mask, lab, [int(i) + 1 for i in order])
    return [(np.asarray(affine)[:3, :3] @ np.asarray(c) + np.asarray(affine)[:3, 3], int(sizes[i]))
            for c, i in zip(centres, order, strict=True)]


def reference_ear_offsets(labels: LabelMap, affine: Affine) -> list[tuple[int, float, float, float, float]]:
    """Each ear's offset in the eye frame of a reference label map.

    Returns
    -------
    list of (side, lateral_mm, y_mm, z_mm, eyes_mm)
        One per side with an ear (the largest ear component on that side of the eyes' midpoint):
        side -1 or +1 along the frame's x, its |x| offset, (y, z) and the eyes' distance.
        Empty when the map lacks two eyes.
    """
    eyes = _centroids(labels == Label.EYES, affine)
    if len(eyes) < 2:
        return []
    origin, axes, eyes_mm = eye_frame(eyes[0][0], eyes[1][0])
    out = []
    for side in (-1, 1):
        on_side = [(c, n) for c, n in _centroids(labels == Label.EARS, affine)
                   if side * float(axes[0] @ (c - origin)) > 0]
        if on_side:
            offset = axes @ (on_side[0][0] - origin)
            out.append((side, abs(float(offset[0])), float(offset[1]), float(offset[2]), eyes_mm))
    return out


def _block_any(mask: Mask, step: tuple[int, ...]) -> Mask:
    """Max-pooling of a boolean array over blocks of ``step`` voxels (the last block may be partial)."""
    padded = np.pad(mask, [(0, (-n) % st) for n, st in zip(mask.shape, step, strict=True)])
    shape: list[int] = []
    for n, st in zip(padded.shape, step, strict=True):
        shape += [n // st, st]
    return np.asarray(padded.reshape(shape).any(axis=(1, 3, 5)))


def _block_repeat(coarse: Mask, step: tuple[int, ...], shape: tuple[int, ...]) -> Mask:
    """Nearest-neighbour upsampling of a block grid back to ``shape`` (inverse of :func:`_block_any`)."""
    out = coarse
    for axis, st in enumerate(step):
        if st > 1:
            out = np.repeat(out, st, axis=axis)
    return np.asarray(out[: shape[0], : shape[1], : shape[2]])


def lateral_surface(origin: npt.NDArray[np.float64], axes: npt.NDArray[np.float64], side: int, head: HeadModel,
                    depth: npt.NDArray[np.float32], affine: Affine, shape: tuple[int, ...],
                    offset_mm: tuple[float, float] = EAR_OFFSET_MM) -> npt.NDArray[np.float64] | None:
    """World point where the line through the predicted ear, along the eye axis, leaves the head.

    The line runs at the ear's mean (y, z) offset, outward from the eyes' midline towards
    ``side`` (+1: along the frame's x, -1: against it); the head is the image's sealed head with
    its protrusions rolled off (depth > 0), so the point lies on the scalp beside the ear, not on
    the auricle.  A line starting outside the field of view starts at its nearest point in view
    instead (8 mm inside it); where the field ends inside the head, the last point in view is returned; ``None``
    when the line never meets the head.
    """
    start = origin + offset_mm[0] * axes[1] + offset_mm[1] * axes[2]
    inv = np.linalg.inv(np.asarray(affine, float))
    affine = np.asarray(affine, float)
    # a field of view that ends above or in front of the predicted ear: the nearest line in view
    # (the search radius then reaches the part of the auricle that was scanned)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    margin = np.minimum(np.ceil(8.0 / spacing), (np.asarray(shape[:3]) - 1) // 2)  # off the cut face
    start_ijk = np.clip(inv[:3, :3] @ start + inv[:3, 3], margin, np.asarray(shape[:3]) - 1 - margin)
    start = affine[:3, :3] @ start_ijk + affine[:3, 3]
    steps = np.arange(0.0, MAX_HALF_WIDTH_MM, 1.0)
    points = start[None, :] + side * steps[:, None] * axes[0][None, :]
    ijk = np.rint(points @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    inside_grid = np.all((ijk >= 0) & (ijk < np.asarray(shape[:3])), axis=1)
    if not inside_grid.any():
        return None
    ijk, points = ijk[inside_grid], points[inside_grid]
    coarse = head.nearest_coarse(tuple(ijk.T))
    in_head = depth[coarse] > 0
    if not in_head.any():
        return None
    return points[int(np.flatnonzero(in_head).max())]


def auricle_near(image: npt.NDArray[np.floating], affine: Affine, point: npt.NDArray[np.float64],
                 outward: npt.NDArray[np.float64], head: HeadModel, depth: npt.NDArray[np.float32],
                 *, radius_mm: float = SEARCH_RADIUS_MM, opening_mm: float = OPENING_MM,
                 min_mm3: float = MIN_EAR_MM3) -> tuple[Box, Mask] | None:
    """The auricle standing out from the head near ``point``, delimited from the image, or ``None``.

    The head is the tissue above the head's threshold plus its interior (more than 4 mm below
    the surface of the head with its protrusions rolled off), on a grid of about :data:`GRID_MM`;
    the candidates are the tissue a morphological opening of it (ball of ``opening_mm``) removes,
    at most :data:`MEDIAL_MM` medial of ``point`` (``outward``: unit vector away from the
    midline), in pieces that touch the head and reach within ``radius_mm`` of ``point`` (each
    followed up to :data:`EXTENT_MM` further).  The largest such piece is the auricle, kept when
    it holds at least ``min_mm3`` of tissue at the scan's resolution, then grown by its root (the
    tissue within :data:`ROOT_MM`).  The
    grid is extended by repeating its border (a head cut by the field of view is not an edge to
    open), so a cut-off ear is not invented from the cut face.

    Returns
    -------
    (box, mask) or None
        The region of the RAS image and the auricle's voxels in it.
    """
    affine = np.asarray(affine, float)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    inv = np.linalg.inv(affine)
    centre = inv[:3, :3] @ point + inv[:3, 3]
    reach = np.ceil((radius_mm + EXTENT_MM + 2 * GRID_MM) / spacing).astype(int)
    box: Box = tuple(slice(max(0, int(c) - r), min(n, int(c) + r + 1))  # type: ignore[assignment]
                     for c, r, n in zip(centre, reach, image.shape, strict=True))
    if any(s.stop - s.start < 2 for s in box):
        return None
    step = tuple(max(1, int(round(GRID_MM / sp))) for sp in spacing)  # noqa: RUF046 - numpy < 2 rounds to float
    cs = spacing * np.asarray(step)
    tissue = np.asarray(image[box]) > head.threshold
    solid = tissue | (head.upsample(depth, box) > 4.0)
    tissue_c, solid_c = _block_any(tissue, step), _block_any(solid, step)
    pad = int(np.ceil(opening_mm / cs.min())) + 1
    padded = np.pad(solid_c, pad, mode="edge")
    eroded = ndi.distance_transform_edt(padded, sampling=cs) > opening_mm
    opened = ndi.distance_transform_edt(~eroded, sampling=cs) <= opening_mm + 0.5 * cs.max()
    opened = opened[pad:-pad, pad:-pad, pad:-pad] & solid_c
    removed = solid_c & ~opened & tissue_c
    # world offset of every coarse cell centre from the point
    grids = np.meshgrid(*[(np.arange(n) * st + b.start + (st - 1) / 2.0) for n, st, b in
                          zip(removed.shape, step, box, strict=True)], indexing="ij")
    world = np.stack(grids, axis=-1) @ affine[:3, :3].T + affine[:3, 3] - point
    distance2 = (world**2).sum(axis=-1)
    lateral = world @ outward >= -MEDIAL_MM
    candidates = removed & lateral & (distance2 <= (radius_mm + EXTENT_MM) ** 2)
    pieces, count = ndi.label(candidates, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return None
    touching = np.intersect1d(pieces[ndi.binary_dilation(opened) & candidates],
                              pieces[candidates & (distance2 <= radius_mm**2)])
    touching = touching[touching > 0]
    if touching.size == 0:
        return None
    sizes = np.bincount(pieces.ravel(), minlength=count + 1)
    best = int(touching[np.argmax(sizes[touching])])
    mask = tissue & _block_repeat(pieces == best, step, tissue.shape)
    mask = _largest_part(mask)  # at the scan's resolution the coarse piece's tissue may fall apart
    if float(mask.sum()) * float(np.prod(spacing)) < min_mm3:
        return None
    # its root: the tissue within ROOT_MM of it (as the reference labels' rule; ear Dice +0.04 on 7 heads)
    grow = max(1, int(round(ROOT_MM / float(spacing.min()))))  # noqa: RUF046 - numpy < 2 rounds to float
    idx = np.argwhere(mask)
    sub = tuple(slice(max(0, int(lo) - grow), int(hi) + grow + 1)
                for lo, hi in zip(idx.min(axis=0), idx.max(axis=0), strict=True))
    mask[sub] |= ndi.binary_dilation(mask[sub], iterations=grow) & tissue[sub]
    return box, _largest_part(mask)


def _largest_part(mask: Mask) -> Mask:
    """The largest face-connected part of a mask (the metrics and the distortion count components so)."""
    parts, count = ndi.label(mask)
    if count <= 1:
        return mask
    return np.asarray(parts == 1 + int(np.argmax(np.bincount(parts.ravel())[1:])))


def _ear_sides(labels: LabelMap, affine: Affine, origin: npt.NDArray[np.float64],
               axes: npt.NDArray[np.float64]) -> set[int]:
    """Sides (+1 along the eye axis, -1 against it) on which the label map has an ear component."""
    where = labels == Label.EARS
    if not where.any():
        return set()
    idx = np.argwhere(where)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    crop = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    shifted = np.asarray(affine, float).copy()
    shifted[:3, 3] += shifted[:3, :3] @ lo
    return {1 if float(axes[0] @ (c - origin)) > 0 else -1 for c, _ in _centroids(where[crop], shifted)}


def add_missing_ears(image: npt.NDArray[np.floating], affine: Affine, labels: LabelMap,
                     eye_centres: list[npt.NDArray[np.float64]], head: HeadModel | None = None,
                     offset_mm: tuple[float, float] = EAR_OFFSET_MM) -> tuple[LabelMap, dict[str, str]]:
    """Label from the image the auricle of each side where ``labels`` has no ear.

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z)
        Physical intensities in RAS axis order.
    affine : ndarray, shape (4, 4)
        Voxel -> RAS+ mm of ``image``.
    labels : ndarray, uint8, image shape
        The network's label map; a new array is returned.
    eye_centres : list of ndarray, shape (3,)
        The two eyes' centres in RAS+ mm (with fewer than two, nothing is added).
    head : HeadModel, optional
        :func:`defacer.head.analyse_head` of the image, computed when not given (and only when
        an ear is missing).
    offset_mm : tuple of 2 float
        The ear's mean (y, z) offset in the eye frame (default :data:`EAR_OFFSET_MM`).

    Returns
    -------
    labels : ndarray, uint8
        With label 3 added (never over an eye or the nose) where an auricle was found.
    sources : dict
        ``{"right": s, "left": s}`` in RAS+ terms (right: towards +x), each ``"network"``,
        ``"image"`` (found here) or ``"none"``; empty when the eyes give no frame.
    """
    if len(eye_centres) != 2:
        return labels, {}
    origin, axes, _ = eye_frame(eye_centres[0], eye_centres[1])
    present = _ear_sides(labels, affine, origin, axes)
    names = {1: "right", -1: "left"}
    sources = {names[side]: ("network" if side in present else "none") for side in (1, -1)}
    missing = [side for side in (1, -1) if side not in present]
    if not missing:
        return labels, sources
    affine = np.asarray(affine, float)
    spacing = tuple(float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    if head is None:
        head = analyse_head(image, spacing)  # type: ignore[arg-type]
    depth = depth_below_surface(head, spacing)  # type: ignore[arg-type]
    out = labels.copy()
    for side in missing:
        surface = lateral_surface(origin, axes, side, head, depth, affine, image.shape, offset_mm)
        if surface is None:
            continue
        found = auricle_near(image, affine, surface, side * axes[0], head, depth)
        if found is None:
            continue
        box, mask = found
        region = out[box]
        region[mask & (region == 0)] = Label.EARS
        sources[names[side]] = "image"
    return out, sources
