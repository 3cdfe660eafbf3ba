"""The three distortions, as pure functions of a RAS image, a feature mask and the head model.

Each function returns :class:`Edit` objects (a box, the voxels to write inside it and their new
values) plus what it estimated or sampled, so a run can be recorded and replayed.  None of them
writes into the image: :func:`defacer.pipeline.deface` applies the edits, never inside the
protected region.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from defacer._typing import Mask
from defacer.head import HeadModel

Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Edit:
    """New values for some voxels inside a box of the RAS image.

    Attributes
    ----------
    feature : str
        ``"eyes"``, ``"nose"`` or ``"ears"``.
    box : tuple of 3 slice
        Region of the RAS image.
    mask : ndarray, bool, box shape
        Voxels to write.
    values : ndarray, float32, box shape
        New physical values (only read where ``mask``).
    params : dict
        What was estimated or sampled (JSON-serialisable).
    """

    feature: str
    box: Box
    mask: Mask
    values: npt.NDArray[np.float32]
    params: dict[str, Any] = field(default_factory=dict)


def components(mask: Mask, max_count: int, min_fraction: float = 0.05) -> list[Box]:
    """Bounding boxes of the largest connected components of ``mask``, largest first.

    Components smaller than ``min_fraction`` of the largest are ignored (detector crumbs).
    """
    if not mask.any():
        return []
    # Label only inside the mask's bounding box: much faster than labelling the whole volume.
    crop = tuple(
        slice(int(np.argmax(axis_any)), len(axis_any) - int(np.argmax(axis_any[::-1])))
        for axis_any in (mask.any(axis=(1, 2)), mask.any(axis=(0, 2)), mask.any(axis=(0, 1)))
    )
    labels, count = ndimage.label(mask[crop])
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1]
    keep = [int(i) for i in order[:max_count] if sizes[i] >= min_fraction * sizes[order[0]]]
    boxes = ndimage.find_objects(labels)
    return [
        tuple(slice(b.start + c.start, b.stop + c.start) for b, c in zip(boxes[i], crop, strict=True))  # type: ignore[misc]
        for i in keep
    ]


def grow_box(box: Box, shape: tuple[int, ...], scale: float = 1.0, pad: tuple[int, int, int] = (0, 0, 0)) -> Box:
    """Scale a box about its centre and pad it by ``pad`` voxels per axis, clipped to ``shape``."""
    out = []
    for s, n, p in zip(box, shape, pad, strict=True):
        centre = (s.start + s.stop) / 2.0
        half = (s.stop - s.start) * scale / 2.0 + p
        out.append(slice(max(0, int(np.floor(centre - half))), min(n, int(np.ceil(centre + half)))))
    return tuple(out)  # type: ignore[return-value]


def _mm_to_voxels(mm: float, spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    return tuple(int(np.ceil(mm / s)) for s in spacing)  # type: ignore[return-value]


def _ball(radius_mm: float, spacing: tuple[float, float, float]) -> Mask:
    r = _mm_to_voxels(radius_mm, spacing)
    grids = np.ogrid[tuple(slice(-k, k + 1) for k in r)]
    dist2 = sum((g * s) ** 2 for g, s in zip(grids, spacing, strict=True))
    return np.asarray(dist2 <= radius_mm**2)


def distort_eyes(
    image: npt.NDArray[np.floating],
    eyes: Mask,
    head: HeadModel,
    spacing: tuple[float, float, float],
    *,
    band_mm: float = 2.0,
    box_scale: float = 1.5,
    fill_radius_mm: float = 4.0,
) -> list[Edit]:
    """Cover each eye with skin: the skin surface ± ``band_mm`` over the eye set to a skin-like value.

    Within each eye's bounding box (scaled by ``box_scale``), the head surface is first
    smoothed by a morphological closing of radius ``fill_radius_mm`` (filling the eye socket
    and the lid folds), then every voxel within ``band_mm`` of that surface, inside or
    outside, and every voxel of the filled concavities gets the median intensity of this
    scan's own superficial tissue in the box.

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z)
        RAS image, physical values.
    eyes : ndarray, bool, shape (X, Y, Z)
        Eye label mask (both eyes).
    head : HeadModel
    spacing : tuple of 3 float
        Voxel size along R, A, S in mm.

    Returns
    -------
    list of Edit
        One per eye found (at most two).
    """
    edits = []
    margin = _mm_to_voxels(band_mm + fill_radius_mm + 2.0, spacing)
    for index, component in enumerate(components(eyes, 2)):
        box = grow_box(component, image.shape, box_scale, margin)
        local = np.asarray(image[box], dtype=np.float32)
        tissue = local > head.threshold
        deep = head.upsample(head.sealed_coarse, box)
        head_local = tissue | ndimage.binary_erosion(deep, iterations=2)
        closed = _close(head_local, fill_radius_mm, spacing)
        inside = ndimage.distance_transform_edt(closed, sampling=spacing)
        outside = ndimage.distance_transform_edt(~closed, sampling=spacing)
        band = (closed & (inside <= band_mm)) | (~closed & (outside <= band_mm)) | (closed & ~head_local)
        skin_voxels = local[tissue & (ndimage.distance_transform_edt(head_local, sampling=spacing) <= 3.0)]
        skin = float(np.median(skin_voxels)) if skin_voxels.size else float(np.percentile(local[tissue], 50) if tissue.any() else head.threshold)
        values = np.full(local.shape, skin, dtype=np.float32)
        edits.append(
            Edit("eyes", box, band, values, {"component": index, "skin_value": skin, "box": _box_list(box),
                                             "band_mm": band_mm, "fill_radius_mm": fill_radius_mm})
        )
    return edits


def _close(mask: Mask, radius_mm: float, spacing: tuple[float, float, float]) -> Mask:
    """Morphological closing with a ball of ``radius_mm`` via two distance maps (fast for large radii)."""
    pad = max(_mm_to_voxels(radius_mm, spacing)) + 1
    padded = np.pad(mask, pad)
    dilated = ndimage.distance_transform_edt(~padded, sampling=spacing) <= radius_mm
    closed = ndimage.distance_transform_edt(dilated, sampling=spacing) > radius_mm
    return closed[pad:-pad, pad:-pad, pad:-pad] | mask


def nose_box(nose: Mask, shape: tuple[int, int, int], scale: float = 2.0) -> Box | None:
    """The nose's bounding box enlarged ``scale`` times per axis, never extending behind the nose.

    The posterior side (lower end of the A axis) is clipped to the nose label's own
    posterior bound, so the box grows sideways, up, down and forwards but not into the head.
    """
    found = components(nose, 1)
    if not found:
        return None
    bbox = found[0]
    grown = grow_box(bbox, shape, scale)
    return (grown[0], slice(max(grown[1].start, bbox[1].start), grown[1].stop), grown[2])


def distort_nose(image: npt.NDArray[np.floating], box: Box, head: HeadModel) -> Edit:
    """Set the nose box to this scan's air value (``head.background``)."""
    shape = tuple(s.stop - s.start for s in box)
    mask = np.ones(shape, dtype=bool)
    values = np.full(shape, head.background, dtype=np.float32)
    return Edit("nose", box, mask, values, {"background_value": head.background, "box": _box_list(box)})


def distort_ears(
    image: npt.NDArray[np.floating],
    ears: Mask,
    head: HeadModel,
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
    *,
    dilate_mm: float = 1.0,
) -> list[Edit]:
    """Replace each auricle (dilated by ``dilate_mm``) by noise drawn from this scan's own air voxels."""
    edits = []
    margin = _mm_to_voxels(dilate_mm + 1.0, spacing)
    ball = _ball(dilate_mm, spacing)
    for index, component in enumerate(components(ears, 2)):
        box = grow_box(component, image.shape, 1.0, margin)
        mask = ndimage.binary_dilation(ears[box], structure=ball)
        values = np.zeros(mask.shape, dtype=np.float32)
        values[mask] = rng.choice(head.air_sample, size=int(mask.sum()), replace=True)
        edits.append(Edit("ears", box, mask, values, {"component": index, "box": _box_list(box),
                                                      "air_median": head.background, "dilate_mm": dilate_mm,
                                                      "voxels": int(mask.sum())}))
    return edits


def _box_list(box: Box) -> list[list[int]]:
    return [[int(s.start), int(s.stop)] for s in box]
