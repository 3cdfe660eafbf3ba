"""2D slices through each distorted feature, before and after, with the feature outlined.

Slices are cut from the RAS+-reoriented arrays (exact permutation, no interpolation), shown in
radiological-neutral "as seen from the front / the right" orientation, and stretched to square
millimetres so anisotropic scans are not squashed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from defacer.labels import FEATURE_COLOURS, FEATURE_LABELS
from defacer.volume import Volume, canonical_reorientation

#: Outline colours (RGB) per feature.
COLOURS: dict[str, tuple[int, int, int]] = {**FEATURE_COLOURS, "changed": (255, 0, 255)}


@dataclass(frozen=True)
class FeatureSlices:
    """Before/after slice pictures through one feature.

    Attributes
    ----------
    feature : str
        ``"eyes"``, ``"nose"``, ``"ears"``, or ``"changed"`` (no labels given: the changed voxels).
    plane : str
        ``"axial"``, ``"coronal"`` or ``"sagittal"``.
    before, after : ndarray, uint8, shape (H, W, 3)
        RGB pictures with the outline drawn.
    position_mm : float
        World coordinate of the slice along its normal (RAS+ mm).
    """

    feature: str
    plane: str
    before: npt.NDArray[np.uint8]
    after: npt.NDArray[np.uint8]
    position_mm: float


def _to_uint8(image: npt.NDArray[np.floating], lo: float, hi: float) -> npt.NDArray[np.uint8]:
    scaled = (np.asarray(image, dtype=np.float64) - lo) / max(hi - lo, 1e-6)
    return (np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def _outline(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    return mask & ~ndimage.binary_erosion(mask)


def _orient_plane(arr: npt.NDArray, plane: str) -> npt.NDArray:
    """Turn a 2D RAS slice into display order (rows = superior to inferior or anterior to posterior)."""
    if plane == "axial":  # (R, A) -> rows A (anterior at top), cols R flipped (subject's right on the left)
        return arr.T[::-1, ::-1]
    if plane == "coronal":  # (R, S) -> rows S down, cols R flipped
        return arr.T[::-1, ::-1]
    return arr.T[::-1, :]  # sagittal (A, S) -> rows S down, cols A (face to the right)


def _resize(image: npt.NDArray[np.uint8], aspect: tuple[float, float], height: int) -> npt.NDArray[np.uint8]:
    """Resample (nearest) to square mm and to ``height`` rows; aspect = (row mm, col mm)."""
    rows, cols = image.shape[:2]
    h_mm, w_mm = rows * aspect[0], cols * aspect[1]
    width = max(round(height * w_mm / max(h_mm, 1e-6)), 1)
    ri = np.clip((np.arange(height) + 0.5) * rows / height, 0, rows - 1).astype(int)
    ci = np.clip((np.arange(width) + 0.5) * cols / width, 0, cols - 1).astype(int)
    return image[ri][:, ci]


def feature_slices(
    original: Volume,
    defaced: Volume,
    regions: dict[str, npt.NDArray[np.bool_]],
    *,
    height: int = 192,
) -> list[FeatureSlices]:
    """Cut slices through the centre of each region, before and after, with its outline.

    Parameters
    ----------
    original, defaced : Volume
        Same grid.
    regions : dict of str to ndarray of bool
        Feature name -> mask on the file grid (e.g. ``labels == 2``); empty masks are skipped.
    height : int
        Picture height in pixels.

    Returns
    -------
    list of FeatureSlices
        An axial and a sagittal slice per feature (the eyes and ears: through one of the pair).
    """
    reo = canonical_reorientation(original.affine, original.shape)
    # Stored values, reordered exactly; physical scaling is applied per slice (cheap).
    before = reo.to_ras(original.raw)
    after = reo.to_ras(defaced.raw)
    lo, hi = np.percentile(before[::3, ::3, ::3].astype(np.float32) * original.slope + original.inter, [0.5, 99.5])
    spacing = reo.ras_spacing
    out: list[FeatureSlices] = []
    for name, mask_file in regions.items():
        mask = reo.to_ras(mask_file.astype(bool))
        if not mask.any():
            continue
        # Through the largest component (one eye / one ear), at its centre of mass.
        labelled, count = ndimage.label(mask)
        if count > 1:
            sizes = np.bincount(labelled.ravel())
            sizes[0] = 0
            mask = labelled == int(np.argmax(sizes))
        centre = np.round(ndimage.center_of_mass(mask)).astype(int)
        for plane, axis in (("axial", 2), ("sagittal", 0)):
            index: list[slice | int] = [slice(None)] * 3
            index[axis] = int(centre[axis])
            sel = tuple(index)
            aspect_axes = [a for a in range(3) if a != axis]
            # After _orient_plane the rows are the second kept axis and the columns the first.
            aspect = (spacing[aspect_axes[1]], spacing[aspect_axes[0]])
            edge = _orient_plane(_outline(mask[sel]), plane)
            pics = []
            for stored, vol in ((before, original), (after, defaced)):
                physical = stored[sel].astype(np.float32) * vol.slope + vol.inter
                grey = _orient_plane(_to_uint8(physical, lo, hi), plane)
                rgb = np.repeat(grey[:, :, None], 3, axis=2)
                rgb[edge] = COLOURS.get(name, (255, 0, 255))
                pics.append(_resize(rgb, aspect, height))
            world = reo.ras_affine @ np.array([*centre, 1.0])
            out.append(FeatureSlices(name, plane, pics[0], pics[1], float(world[axis])))
    return out


def label_regions(labels: npt.NDArray[np.integer] | None, changed: npt.NDArray[np.bool_]
                  ) -> dict[str, npt.NDArray[np.bool_]]:
    """Regions to show: each labelled feature, or the changed voxels when no labels are known."""
    if labels is not None:
        return {name: labels == int(value) for name, value in FEATURE_LABELS.items() if np.any(labels == int(value))}
    return {"changed": changed} if changed.any() else {}
