"""Ear distortion: each whole auricle, delimited from the image near the detected ear, becomes air noise.

The detector *locates* each ear; the image *delimits* the auricle: the tissue that a
morphological opening of the head removes near the detected ear, on its lateral side (see
:func:`auricle_mask`).  The voxels become noise drawn from this scan's own air (the paper's method).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from defacer._typing import Mask
from defacer.distort import Box, Edit, _box_list, components
from defacer.head import HeadModel, depth_below_surface

#: How far from the detected ear's centroid the auricle is looked for, in mm.
EAR_RADIUS_MM = 40.0
#: Radius of the ball whose opening of the head delimits the auricle, in mm (thinner parts stand out).  The
#: opening runs on a grid of EAR_GRID_MM where any tissue in a cell fills it, which thickens thin parts by up
#: to a cell: 8 mm there is about 6 mm at full resolution (6 mm left a third of one auricle on a 1 mm head).
EAR_OPENING_MM = 8.0
#: Grid step on which the auricle is delimited, in mm.
EAR_GRID_MM = 2.0
#: The auricle is looked for only lateral of the detected centroid minus this margin, in mm.
EAR_LATERAL_MM = 15.0
#: Smallest part of an auricle kept, in mm^3 (also at least 15% of the largest part).
EAR_MIN_PART_MM3 = 60.0


def _block_any(mask: Mask, step: tuple[int, int, int]) -> Mask:
    """Max-pooling of a boolean array over blocks of ``step`` voxels (the last block may be partial)."""
    pad = [(0, (-n) % st) for n, st in zip(mask.shape, step, strict=True)]
    padded = np.pad(mask, pad)
    shape = []
    for n, st in zip(padded.shape, step, strict=True):
        shape += [n // st, st]
    return np.asarray(padded.reshape(shape).any(axis=(1, 3, 5)))


def _block_repeat(coarse: Mask, step: tuple[int, int, int], shape: tuple[int, ...]) -> Mask:
    """Nearest-neighbour upsampling of a block grid back to ``shape`` (inverse of :func:`_block_any`)."""
    out = coarse
    for axis, st in enumerate(step):
        if st > 1:
            out = np.repeat(out, st, axis=axis)
    return np.asarray(out[: shape[0], : shape[1], : shape[2]])


def auricle_mask(image: npt.NDArray[np.floating], ears: Mask, component: Box, head: HeadModel,
                 spacing: tuple[float, float, float], depth: npt.NDArray[np.float32], head_centre_r: float,
                 *, radius_mm: float = EAR_RADIUS_MM, opening_mm: float = EAR_OPENING_MM,
                 grow_mm: float = 2.0) -> tuple[Box, Mask, dict[str, Any]]:
    """The whole auricle near one detected ear, delimited from the image.

    The detection gives the ear's centroid; the auricle is the tissue that a morphological opening
    of the head (ball of ``opening_mm``) removes within ``radius_mm`` of it, on its lateral side,
    in parts that touch the head or the detection (a head holder or a streak floating in the air is
    not an ear).  The head here is the tissue above threshold plus the inside of the head with its
    protrusions rolled off (:func:`defacer.head.depth_below_surface` deeper than 4 mm), so the
    opening sees a solid head whose smooth scalp it keeps.  The detection itself is added where it
    lies outside the head's core, and the result grows by ``grow_mm`` into the air and the outer
    ``grow_mm`` of the head (the auricle's root and partial-volume rim), never deeper.

    Returns
    -------
    box : tuple of 3 slice
    mask : ndarray, bool, box shape
    params : dict
    """
    idx = np.nonzero(ears[component])
    centroid = [s.start + float(i.mean()) for s, i in zip(component, idx, strict=True)]
    reach = [int(np.ceil(radius_mm / sp)) + 2 for sp in spacing]
    box = tuple(slice(max(0, int(c) - r), min(n, int(c) + r + 1))
                for c, r, n in zip(centroid, reach, image.shape, strict=True))
    s_r, s_a, s_s = (max(1, int(round(EAR_GRID_MM / sp))) for sp in spacing)  # noqa: RUF046 - numpy < 2 rounds to float
    step = (s_r, s_a, s_s)
    coarse_spacing = tuple(sp * st for sp, st in zip(spacing, step, strict=True))
    local = np.asarray(image[box])
    tissue = local > head.threshold
    interior = head.upsample(depth, box) > 4.0  # type: ignore[arg-type]
    solid = tissue | interior
    solid_c = _block_any(solid, step)
    eroded = ndimage.distance_transform_edt(solid_c, sampling=coarse_spacing) > opening_mm
    opened = ndimage.distance_transform_edt(~eroded, sampling=coarse_spacing) <= opening_mm + 0.5 * max(coarse_spacing)
    opened &= solid_c
    removed = solid_c & ~opened & _block_any(tissue, step)
    # Coarse-grid coordinates (mm) relative to the centroid, for the radius and the lateral side.
    grids = np.ogrid[tuple(slice(0, n) for n in removed.shape)]
    offsets = [(g * st + b.start + (st - 1) / 2.0 - c) * sp
               for g, st, b, c, sp in zip(grids, step, box, centroid, spacing, strict=True)]
    near = (offsets[0] ** 2 + offsets[1] ** 2 + offsets[2] ** 2) <= radius_mm**2
    side = 1.0 if centroid[0] >= head_centre_r else -1.0
    lateral = side * offsets[0] >= -EAR_LATERAL_MM
    candidates = removed & near & lateral
    detected_c = _block_any(ears[box], step)
    labels, count = ndimage.label(candidates, structure=np.ones((3, 3, 3), dtype=bool))
    kept = np.zeros_like(candidates)
    parts = 0
    if count:
        anchors = ndimage.binary_dilation(opened, iterations=1) | ndimage.binary_dilation(detected_c, iterations=1)
        touching = np.unique(labels[anchors & candidates])
        touching = touching[touching > 0]
        if touching.size:
            sizes = np.bincount(labels.ravel(), minlength=count + 1)
            voxel_mm3 = float(np.prod(coarse_spacing))
            floor = max(EAR_MIN_PART_MM3 / voxel_mm3, 0.15 * float(sizes[touching].max()))
            keep = touching[sizes[touching] >= floor]
            kept = np.isin(labels, keep)
            parts = int(keep.size)
    grow = max(1, int(round(grow_mm / min(coarse_spacing))))  # noqa: RUF046
    core = ndimage.binary_erosion(opened, iterations=grow, border_value=1)
    # The detection itself counts where it stands out of the head with its protrusions rolled off.
    standing_out = detected_c & ~_block_any(interior, step)
    grown = (ndimage.binary_dilation(kept | standing_out, iterations=grow) & ~core) | standing_out
    mask = _block_repeat(grown, step, local.shape)  # type: ignore[arg-type]
    params = {"centroid_voxel": [round(c, 2) for c in centroid], "radius_mm": radius_mm, "opening_mm": opening_mm,
              "grid_mm": [round(c, 3) for c in coarse_spacing], "auricle_parts": parts,
              "auricle_voxels_from_image": int(_block_repeat(kept, step, local.shape).sum())}  # type: ignore[arg-type]
    return box, mask, params  # type: ignore[return-value]


def distort_ears(
    image: npt.NDArray[np.floating],
    ears: Mask,
    head: HeadModel,
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
    *,
    radius_mm: float = EAR_RADIUS_MM,
    opening_mm: float = EAR_OPENING_MM,
    depth: npt.NDArray[np.float32] | None = None,
) -> list[Edit]:
    """Replace each whole auricle (:func:`auricle_mask`) by noise drawn from this scan's own air voxels.

    The detector locates each ear (its two largest components); the image delimits the auricle,
    so a detection that covers only the concha still removes the helix and the lobule.  ``depth``
    is :func:`defacer.head.depth_below_surface` (computed, or taken from the head's cache, when
    not given).
    """
    found = components(ears, 2)
    if not found:
        return []
    if depth is None:
        depth = depth_below_surface(head, spacing)
    head_centre_r = float(np.argwhere(head.sealed_coarse.any(axis=(1, 2))).mean() * head.strides[0])
    edits = []
    for index, component in enumerate(found):
        box, mask, params = auricle_mask(image, ears, component, head, spacing, depth, head_centre_r,
                                         radius_mm=radius_mm, opening_mm=opening_mm)
        values = np.zeros(mask.shape, dtype=np.float32)
        values[mask] = rng.choice(head.air_sample, size=int(mask.sum()), replace=True)
        edits.append(Edit("ears", box, mask, values, {"component": index, "box": _box_list(box),
                                                      "air_median": head.background, "voxels": int(mask.sum()),
                                                      **params}))
    return edits
