"""Whole-face removal: the last resort when a face is still found after the feature distortions.

The paper's distortions change only the eyes, nose and ears.  On a few heads a face detector still
finds a face after them, even with a larger nose removal and eye cover (``docs/measurements.md``:
decubitus-HFS with its reference labels).  For those, :func:`face_removal` cuts the whole face in front of the
eyes down to a smooth skin-covered surface: from :data:`FACE_TOP_MM` above the eyes' centre line down to
:data:`FACE_BOTTOM_MM` below it (the chin), :data:`FACE_BEHIND_MM` behind the eyes' centres forward,
:data:`FACE_SIDE_MM` beyond each eye to the side, in the frame the eyes give
(:func:`defacer.detect.frame.eye_frame`: it turns with the head).  As every edit, it is gated by the
protected region (:mod:`defacer.pipeline`): only the outer ``protect_depth_mm`` of the head changes,
so the brain and everything deeper are never touched.  The new face is the surface at a fixed depth
below the head's rolled-off surface (the nose rolled off: :func:`defacer.head.depth_below_surface`),
covered with a layer of the scan's own skin intensity, so the nasal cavity and the orbits do not open
(their dark outlines read as a face to a face detector).

It sets voxels to this scan's air value like the nose removal, on a larger region, so it is recorded
as a nose edit with ``whole_face: true`` in the provenance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from defacer._typing import Mask
from defacer.detect.frame import eye_frame
from defacer.distort import Edit, overlap
from defacer.head import HeadModel

#: The removal reaches this far above the eyes' centre line (over the brows), in mm.
FACE_TOP_MM = 25.0
#: ... this far below it (past the chin), in mm.
FACE_BOTTOM_MM = 130.0
#: ... from this far behind the eyes' centres forward, in mm.
FACE_BEHIND_MM = 10.0
#: ... this far in front of the eyes' centres (past the nose tip), in mm.
FACE_FRONT_MM = 90.0
#: ... and this far to the side beyond each eye's centre, in mm.
FACE_SIDE_MM = 45.0
#: Thickness of the skin laid under the cut surface, in mm.
SKIN_MM = 3.0


def eye_centroids(eyes: Mask, ras_affine: npt.NDArray[np.floating]) -> list[npt.NDArray[np.float64]]:
    """World (RAS+ mm) centroids of the two largest eye components, largest first (fewer when fewer are found).

    Parameters
    ----------
    eyes : ndarray, bool, shape (X, Y, Z)
        Eye label mask, RAS voxel order.
    ras_affine : ndarray, shape (4, 4)
        Voxel -> world of that grid.
    """
    labelled, count = ndimage.label(eyes)
    if count == 0:
        return []
    sizes = np.bincount(labelled.ravel())[1:]
    largest = np.argsort(sizes)[::-1][:2] + 1
    centres = ndimage.center_of_mass(eyes, labelled, list(largest))
    affine = np.asarray(ras_affine, float)
    return [affine[:3, :3] @ np.asarray(c, float) + affine[:3, 3] for c in centres]


def face_box(shape: tuple[int, int, int], ras_affine: npt.NDArray[np.floating], origin: npt.NDArray[np.float64],
             axes: npt.NDArray[np.float64], half_width_mm: float) -> tuple[slice, slice, slice] | None:
    """The voxel box (RAS grid) holding the face region's corners, clipped to the image; ``None`` if outside it."""
    corners = np.array([[x, y, z] for x in (-half_width_mm, half_width_mm) for y in (-FACE_BEHIND_MM, FACE_FRONT_MM)
                        for z in (-FACE_BOTTOM_MM, FACE_TOP_MM)])
    world = origin + corners @ axes
    inverse = np.linalg.inv(np.asarray(ras_affine, float))
    voxels = world @ inverse[:3, :3].T + inverse[:3, 3]
    low = np.maximum(np.floor(voxels.min(axis=0)).astype(int), 0)
    high = np.minimum(np.ceil(voxels.max(axis=0)).astype(int) + 1, shape)
    if np.any(high <= low):
        return None
    return (slice(int(low[0]), int(high[0])), slice(int(low[1]), int(high[1])), slice(int(low[2]), int(high[2])))


def smooth_depth(depth: npt.NDArray[np.float32], head: HeadModel, box: tuple[slice, slice, slice]
                 ) -> npt.NDArray[np.float32]:
    """The coarse depth below the surface (:func:`defacer.head.depth_below_surface`) at every voxel of ``box``,
    interpolated linearly (the nearest coarse sample would leave steps of a coarse voxel in the new surface)."""
    # coarse sample k lies on full-grid voxel k * stride (the coarse grid is image[::stride])
    coords = [np.arange(s.start, s.stop, dtype=np.float32) / stride for s, stride in zip(box, head.strides, strict=True)]
    grid = np.meshgrid(*coords, indexing="ij")
    return ndimage.map_coordinates(np.asarray(depth, np.float32), grid, order=1, mode="nearest").astype(np.float32)


def _written_by(edits: Sequence[Edit], box: tuple[slice, slice, slice]) -> Mask:
    """The voxels of ``box`` that any of ``edits`` writes (bool, box shape)."""
    shape = tuple(s.stop - s.start for s in box)
    written = np.zeros(shape, dtype=bool)
    for edit in edits:
        shared = overlap(box, edit.box)
        if shared is not None:
            written[shared[0]] |= edit.mask[shared[1]]
    return written


def face_removal(image: npt.NDArray[np.floating], eyes: Mask, head: HeadModel, ras_affine: npt.NDArray[np.floating],
                 depth: npt.NDArray[np.float32], *, cut_mm: float, skin_mm: float = SKIN_MM,
                 over: Sequence[Edit] = ()) -> tuple[Edit | None, dict[str, Any]]:
    """The whole face in front of the eyes cut down to a smooth skin-covered surface (see the module docstring).

    Within the face region, every voxel less than ``cut_mm`` below the head's rolled-off surface becomes air and
    the ``skin_mm`` below that becomes skin: the new face is the smooth surface at that depth, closed over the
    nasal cavity and the orbits (air there would show their outlines, which a face detector can read as a face).

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z)
        RAS image (physical values).
    eyes : ndarray, bool, shape (X, Y, Z)
        Detected eye label mask, RAS: the region is placed from the two largest eye components.
    head : HeadModel
        Gives the air value (``head.background``) and the tissue threshold.
    ras_affine : ndarray, shape (4, 4)
        Voxel -> world (RAS+ mm) of the RAS grid.
    depth : ndarray, float32, coarse grid
        :func:`defacer.head.depth_below_surface`.
    cut_mm : float
        Depth of the new surface, in mm; with ``skin_mm`` it must stay above the protected region (the pipeline
        passes ``protect_depth_mm`` less the gate's slack less ``skin_mm``).
    skin_mm : float
        Thickness of the skin layer under the new surface, in mm.
    over : sequence of Edit
        The edits applied before this one (eye cover, nose, ears): whatever they write in the region is written
        over too (an eye cover built out in front of the face would otherwise stay).

    Returns
    -------
    edit : Edit or None
        A ``"nose"`` edit (it sets voxels to air like the nose removal, on a larger region) with
        ``params["whole_face"]`` true; ``None`` when fewer than two eyes were found (the face cannot be placed)
        or the region lies outside the image.
    record : dict
        What was done or why not (for the provenance): ``done``, and ``reason`` or the region.
    """
    centres = eye_centroids(eyes, ras_affine)
    if len(centres) < 2:
        return None, {"done": False, "reason": f"{len(centres)} eye(s) found; the face is placed from both eyes"}
    origin, axes, eyes_mm = eye_frame(centres[0], centres[1])
    half_width = eyes_mm / 2.0 + FACE_SIDE_MM
    box = face_box(image.shape[:3], ras_affine, origin, axes, half_width)
    if box is None:
        return None, {"done": False, "reason": "the face region lies outside the image"}
    affine = np.asarray(ras_affine, float)
    # the voxel indices of the box along each axis, as open (broadcasting) grids: no full-size index arrays
    index = np.ix_(*[np.arange(s.start, s.stop, dtype=np.float32) for s in box])
    # frame coordinates (x right along the eyes, y anterior, z up) of every voxel of the box
    to_frame = (axes @ affine[:3, :3]).astype(np.float32)
    offset = (axes @ (affine[:3, 3] - origin)).astype(np.float32)
    x, y, z = (to_frame[i, 0] * index[0] + to_frame[i, 1] * index[1] + to_frame[i, 2] * index[2] + offset[i]
               for i in range(3))
    region = np.asarray((np.abs(x) <= half_width) & (y >= -FACE_BEHIND_MM) & (y <= FACE_FRONT_MM)
                        & (z >= -FACE_BOTTOM_MM) & (z <= FACE_TOP_MM))
    del x, y, z, index
    local = np.asarray(image[box], dtype=np.float32)
    below = smooth_depth(depth, head, box)
    cut = cut_mm
    skin_layer = region & (below >= cut) & (below <= cut + skin_mm)
    superficial = region & (local > head.threshold) & (below < 3.0)
    skin = float(np.median(local[superficial])) if superficial.any() else float(head.threshold)
    values = np.where(below < cut, np.float32(head.background), np.float32(skin)).astype(np.float32)
    # Only the head, its rim and anything brighter than half-way from air to tissue: the air in front of the face
    # keeps its own values (it has nothing to hide).
    near_head = head.upsample(ndimage.binary_dilation(head.sealed_coarse), box)
    bright = local > head.background + 0.5 * (head.threshold - head.background)
    mask = (region & (near_head | bright | _written_by(over, box)) & (below < cut)) | skin_layer
    record = {"top_mm": FACE_TOP_MM, "bottom_mm": FACE_BOTTOM_MM, "behind_mm": FACE_BEHIND_MM,
              "front_mm": FACE_FRONT_MM, "half_width_mm": round(half_width, 1), "cut_mm": round(cut, 2),
              "skin_mm": skin_mm, "eyes_midpoint_mm": [round(float(v), 1) for v in origin]}
    params = {"whole_face": True, "background_value": head.background, "skin_value": skin,
              "box": [[int(s.start), int(s.stop)] for s in box], **record}
    return Edit("nose", box, mask, values, params), {"done": True, **record}
