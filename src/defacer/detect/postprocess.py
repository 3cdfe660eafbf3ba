"""Clean the network's coarse label map: at most two eyes, one nose, two ears, each plausible.

Runs on the box grid (``BOX_SPACING`` mm, RAS axis order), where a component is cheap to
measure.  Rules, in mm so they hold at any box spacing:

* a component smaller than ``MIN_VOLUME_MM3`` for its feature, or than a fifth of the largest
  component of the same feature, is noise;
* only the ``MAX_COMPONENTS`` largest remain (2 eyes, 1 nose, 2 ears);
* when two eyes remain their centres must be 35-90 mm apart, else only the larger stays;
* ears must lie behind the eyes (when eyes were found): an "ear" in front of the eye centres
  is dropped, as is a "nose" more than 30 mm left or right of the midpoint of the eyes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from defacer._typing import Affine
from defacer.labels import FEATURE_LABELS, MAX_COMPONENTS

#: Smallest plausible volume per feature, in mm^3 (eye sphere ~ 9000, nose ~ 15000, auricle ~ 3000).
MIN_VOLUME_MM3: dict[str, float] = {"eyes": 1000.0, "nose": 1500.0, "ears": 250.0}


@dataclass(frozen=True)
class Component:
    """One kept detection on the box grid.

    Attributes
    ----------
    feature : str
        ``"eyes"``, ``"nose"`` or ``"ears"``.
    mask : ndarray of bool, box shape
    centre_mm : ndarray, shape (3,)
        Centroid in RAS+ mm.
    volume_mm3 : float
    """

    feature: str
    mask: npt.NDArray[np.bool_]
    centre_mm: npt.NDArray[np.float64]
    volume_mm3: float


def find_components(labels: npt.NDArray[np.integer], affine: Affine) -> list[Component]:
    """Keep the plausible components of a coarse label map.

    Parameters
    ----------
    labels : ndarray, shape (X, Y, Z), integer
        Argmax of the network output on the box grid (RAS axis order).
    affine : ndarray, shape (4, 4)
        Box voxel -> RAS+ mm.

    Returns
    -------
    list of Component
        Eyes first, then nose, then ears; each feature at most ``MAX_COMPONENTS`` times.
    """
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    kept: dict[str, list[Component]] = {}
    for feature, value in FEATURE_LABELS.items():
        lab, n = ndi.label(labels == int(value))
        if n == 0:
            kept[feature] = []
            continue
        sizes = np.asarray(ndi.sum(np.ones_like(lab), lab, range(1, n + 1)), float) * voxel_mm3
        order = np.argsort(sizes)[::-1]
        floor = max(MIN_VOLUME_MM3[feature], 0.2 * sizes[order[0]])
        comps = []
        for i in order[: MAX_COMPONENTS[feature]]:
            if sizes[i] < floor:
                break
            mask = lab == (i + 1)
            centre = affine[:3, :3] @ np.asarray(ndi.center_of_mass(mask)) + affine[:3, 3]
            comps.append(Component(feature, mask, centre, float(sizes[i])))
        kept[feature] = comps
    eyes = kept["eyes"]
    if len(eyes) == 2 and not 35.0 <= float(np.linalg.norm(eyes[0].centre_mm - eyes[1].centre_mm)) <= 90.0:
        kept["eyes"] = eyes = eyes[:1]
    if eyes:
        eye_mid = np.mean([e.centre_mm for e in eyes], axis=0)
        kept["ears"] = [e for e in kept["ears"] if e.centre_mm[1] < eye_mid[1]]
        if len(eyes) == 2:
            kept["nose"] = [c for c in kept["nose"] if abs(c.centre_mm[0] - eye_mid[0]) <= 30.0]
    return kept["eyes"] + kept["nose"] + kept["ears"]


#: Normalised intensity (0.5th..99.5th percentile -> 0..1) below which a voxel counts as air.
AIR_LEVEL = 0.1


def restrict_to_tissue(labels: npt.NDArray[np.uint8], image: npt.NDArray[np.floating],
                       values: tuple[int, ...] = (2, 3), air_level: float = AIR_LEVEL) -> npt.NDArray[np.uint8]:
    """Remove air voxels from the nose and ear labels at the scan's own resolution.

    The network sees 4 mm voxels, so an upsampled auricle or nose also covers the air around it;
    the reference labels (and the distortion) concern tissue only.  Voxels of ``values`` whose
    intensity, scaled like the network input, is below ``air_level`` (and not within one voxel of
    tissue) are set to background.  Eyes are left alone (a dark vitreous body is not air).

    Parameters
    ----------
    labels : ndarray, shape (X, Y, Z), uint8
        Label map on the image grid; a new array is returned.
    image : ndarray, shape (X, Y, Z)
        Physical intensities on the same grid.
    """
    out = labels.copy()
    sample = np.asarray(image[::3, ::3, ::3], np.float32)
    lo, hi = np.percentile(sample, (0.5, 99.5))
    if not hi > lo:
        return out
    threshold = lo + air_level * (hi - lo)
    for value in values:
        where = out == value
        if not where.any():
            continue
        idx = np.argwhere(where)
        lo_i, hi_i = idx.min(axis=0), idx.max(axis=0) + 1
        box = tuple(slice(a, b) for a, b in zip(lo_i, hi_i))
        tissue = ndi.binary_dilation(ndi.uniform_filter(np.asarray(image[box], np.float32), 3) > threshold)
        sub = out[box]
        sub[(sub == value) & ~tissue] = 0
    return out


def keep_largest_pieces(labels: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """At the scan's resolution, keep at most ``MAX_COMPONENTS`` pieces per feature (the largest).

    Interpolation and :func:`restrict_to_tissue` can split a coarse component into a main part and
    crumbs; the crumbs are dropped so the distortion sees one nose, at most two eyes and ears.
    Returns a new array.
    """
    out = labels.copy()
    for feature, value in FEATURE_LABELS.items():
        where = out == int(value)
        if not where.any():
            continue
        idx = np.argwhere(where)
        box = tuple(slice(a, b + 1) for a, b in zip(idx.min(axis=0), idx.max(axis=0)))
        pieces, count = ndi.label(where[box])
        if count <= MAX_COMPONENTS[feature]:
            continue
        sizes = np.bincount(pieces.ravel())[1:]
        keep = 1 + np.argsort(sizes)[::-1][: MAX_COMPONENTS[feature]]
        sub = out[box]
        sub[(pieces > 0) & ~np.isin(pieces, keep)] = 0
    return out
