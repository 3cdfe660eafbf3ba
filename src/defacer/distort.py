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
    labels, _count = ndimage.label(mask[crop])
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
    band_mm: float = 6.0,
    box_scale: float = 3.0,
    smooth_mm: float = 8.0,
) -> list[Edit]:
    """Cover each eye with skin: a band of ± ``band_mm`` around a smoothed skin surface set to a skin value.

    Within each eye's bounding box scaled by ``box_scale`` (3 by default: the eye label is the
    globe, about a third of the width and height of the orbit opening with the brow above it and
    the lids and upper cheek below it, so the scaled box spans the whole orbital region), the face
    surface is read as a height map along the anterior (A) axis, smoothed with a Gaussian of
    ``smooth_mm`` (which erases the lids, the lid folds, the brow ridge and the eye socket) and
    blended back into the original surface towards the box edges.  The band is thick (± 6 mm by
    default) so that the relief of the socket, which a thin band leaves readable as a dark
    eye-shaped hollow under render shading, is filled.  Every voxel within ``band_mm`` of the smoothed surface, and
    every voxel between it and the original surface, gets the median intensity of this scan's
    own superficial tissue in the box; tissue that stood out beyond the band (a protruding lid
    or brow) is set to the scan's air value.  The eye itself, behind the band, is untouched.

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z)
        RAS image, physical values.
    eyes : ndarray, bool, shape (X, Y, Z)
        Eye label mask (both eyes).
    head : HeadModel
    spacing : tuple of 3 float
        Voxel size along R, A, S in mm.
    band_mm : float
        Half-thickness of the skin band in mm (6 by default; 2 left eye sockets readable to face
        detectors on real heads).
    box_scale : float
        Scale of each eye's bounding box (3 by default; 1.5 left the brow and orbital rim).
    smooth_mm : float
        Standard deviation of the surface smoothing in mm.

    Returns
    -------
    list of Edit
        One per eye found (at most two).
    """
    edits = []
    margin = _mm_to_voxels(band_mm + 4.0, spacing)
    for index, component in enumerate(components(eyes, 2)):
        box = grow_box(component, image.shape, box_scale, margin)
        # Reach forward to the edge of the image along A, so the whole face surface is in the box.
        box = (box[0], slice(box[1].start, image.shape[1]), box[2])
        local = np.asarray(image[box], dtype=np.float32)
        tissue = ndimage.binary_opening(local > head.threshold)  # drop isolated noise voxels in the air
        height, present = _surface_height(tissue)
        if not present.any():
            continue
        smoothed = _smooth_height(height, present, (smooth_mm / spacing[0], smooth_mm / spacing[2]))
        taper = _edge_taper(height.shape)
        target = np.where(present, taper * smoothed + (1 - taper) * height, np.nan)
        y = np.arange(local.shape[1], dtype=np.float32)[None, :, None] * spacing[1]
        surface = target[:, None, :] * spacing[1]
        original = height[:, None, :] * spacing[1]
        valid = ~np.isnan(surface)
        in_band = valid & (np.abs(y - surface) <= band_mm)
        filled = valid & (y <= surface) & (y > original)
        removed = valid & (y > surface + band_mm) & tissue
        skin_voxels = local[tissue & valid & (y >= original - 3.0) & (y <= original)]
        skin = float(np.median(skin_voxels)) if skin_voxels.size else float(np.median(local[tissue]))
        mask = in_band | filled | removed
        values = np.where(removed, np.float32(head.background), np.float32(skin)).astype(np.float32)
        edits.append(
            Edit("eyes", box, mask, values, {"component": index, "skin_value": skin, "box": _box_list(box),
                                             "band_mm": band_mm, "smooth_mm": smooth_mm,
                                             "max_surface_shift_mm": float(np.nanmax(np.abs(target - height)))
                                             * spacing[1]})
        )
    return edits


def _surface_height(tissue: Mask) -> tuple[npt.NDArray[np.float32], Mask]:
    """Index along axis 1 (A) of the most anterior tissue voxel of each (R, S) column, and where one exists."""
    present = tissue.any(axis=1)
    n = tissue.shape[1]
    last = n - 1 - np.argmax(tissue[:, ::-1, :], axis=1)
    return np.where(present, last, 0).astype(np.float32), present


def _smooth_height(height: npt.NDArray[np.float32], present: Mask, sigma: tuple[float, float]) -> npt.NDArray[np.float32]:
    """Gaussian smoothing of a height map over the columns where it is defined (normalised convolution)."""
    weight = ndimage.gaussian_filter(present.astype(np.float32), sigma, mode="nearest")
    total = ndimage.gaussian_filter(np.where(present, height, 0).astype(np.float32), sigma, mode="nearest")
    return np.where(weight > 1e-3, total / np.maximum(weight, 1e-3), height).astype(np.float32)


def _edge_taper(shape: tuple[int, ...], fraction: float = 0.2) -> npt.NDArray[np.float32]:
    """Weights of 1 in the middle of a 2D box falling smoothly to 0 at its edges (cosine over ``fraction``)."""
    ramps = []
    for n in shape:
        t = np.minimum(np.arange(n) + 0.5, n - 0.5 - np.arange(n)) / max(fraction * n, 1.0)
        ramps.append(np.where(t >= 1, 1.0, 0.5 - 0.5 * np.cos(np.pi * np.clip(t, 0, 1))))
    return np.outer(ramps[0], ramps[1]).astype(np.float32)


def nose_box(nose: Mask, shape: tuple[int, int, int], scale: float = 2.0, posterior_limit: int = 0) -> Box | None:
    """The nose's bounding box enlarged ``scale`` times per axis about its centre.

    The box is clipped to the image and to the head's anterior side: its posterior end (low
    end of the A axis) never goes behind ``posterior_limit`` (the head's centre along A).  The
    protected region (see :mod:`defacer.pipeline`) still bounds what may change inside it.
    """
    found = components(nose, 1)
    if not found:
        return None
    grown = grow_box(found[0], shape, scale)
    return (grown[0], slice(max(grown[1].start, posterior_limit), grown[1].stop), grown[2])


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
