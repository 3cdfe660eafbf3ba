"""The eyeball's centre found in a CT: one rule for the CT reference eye labels and the detector.

In a CT the globe is a sphere about 24 mm across of water density (vitreous ~0-30 HU inside a
denser sclera, ~40-60 HU) set in the orbit's fat (about -100 HU; -40 to -100 HU at the resolution of
a head CT), with the extra-ocular muscles (~50-60 HU) beside and the optic nerve behind it, the
eyelids and the air in front, the bony orbit round it and the denser lens at its front.  Its
centre is taken as the centre of the sphere that best separates water density inside from
anything else round it: the candidate centre (within ``search_mm`` of a seed) that maximises

    (share of water voxels in the ball of radius :data:`BALL_MM`)
    - (share of water voxels in the shell :data:`SHELL_MM` round it),

which is near 1 - (the optic nerve's and the lids' share of the shell) on the globe and falls as
soon as the ball takes in the sclera, fat, muscle or bone or the shell takes in the vitreous.  The centre is the mean of the candidates
within :data:`TIE_MM` of the best whose score lies within :data:`TIE_SCORE` of it (ties of the grid);
a best score below :data:`MIN_SCORE` is no globe (``None``).  This is the middle of the vitreous sphere
inside the sclera (a sphere fit; the lens at its front is left out, so it lies a little behind the
globe's middle: 1.3 mm in the synthetic orbit of ``tests/detect/test_ct_globe.py``), not the MR rule's vitreous centre (:mod:`defacer.detect.vitreous`, the most
homogeneous ball, 2-4 mm behind the middle): in CT the vitreous body differs too little from the
muscles and the lids, and too much from the bone, for the MR rule's homogeneity score.

"Water density" is read off the image's own levels, never fixed Hounsfield units, so that a CT
rescaled out of HU (``mricrogl_CT``: 0-1) gives the same centre: :func:`ct_levels` measures the air
(the median of the voxels below the scan's air/tissue level), the soft tissue (the mode of the
voxels above it: mostly brain; :func:`scan_levels`) and the water near the globe (the mode of the
values near the seed within 5 % of the air-to-tissue span round the soft tissue: vitreous, muscle,
lids; :func:`ct_levels`) and places the band :data:`WATER_BAND` of the air-to-water
span round the water level: -0.025 to +0.02, about -10 to +35 HU on a CT in HU whose soft tissue
lies at 15 HU (vitreous and lids inside; fat, sclera, muscle, lens and bone outside).

``scripts/make_reference_labels.py`` (``eye_centre``) centres every CT reference eye on it (1 mm work
grid, seeded by the registered landmark) and :mod:`defacer.detect.refine_face` uses the same
function on CT eyes, seeded by the network's eye, so reference and detector share this rule (an
agreement between them is partly by construction).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from defacer._typing import Affine, Mask
from defacer.detect import vitreous

#: The ball that must be water, and the shell round it that must not be, radii in mm (a globe: ~12 mm,
#: its vitreous ~11 mm).
BALL_MM = 9.0
SHELL_MM = (13.0, 16.0)
#: The centre is looked for within this distance of the seed, in mm.
SEARCH_MM = 14.0
#: The water level is the mode of the tissue within this distance of the seed, in mm.
LEVEL_REACH_MM = 15.0
#: The water level is looked for within this share of the air-to-tissue span round the scan's soft tissue.
LOCAL_REACH = 0.05
#: Water density: from and to these shares of the air-to-water span round the water level.
WATER_BAND = (-0.025, 0.02)
#: Candidates within this distance of the best whose score lies within TIE_SCORE of it are averaged, in mm.
TIE_MM = 3.0
TIE_SCORE = 0.02
#: A best score below this is no globe.
MIN_SCORE = 0.3


@dataclass(frozen=True)
class CtLevels:
    """A CT's own intensity levels (its physical units: HU, or whatever it was rescaled to).

    Attributes
    ----------
    air : float
        The air's level (median of the voxels below the air/tissue level).
    water : float
        The soft tissue's level near the globe (the tissue's mode).
    low, high : float
        The water-density band: voxels between them count as water.
    """

    air: float
    water: float
    low: float
    high: float


def scan_levels(sample: npt.NDArray[np.floating], threshold: float) -> tuple[float, float] | None:
    """A CT's air and soft-tissue levels from a sample of its voxels in the field: (air, tissue) or ``None``.

    Parameters
    ----------
    sample : ndarray, any shape
        Voxels of the scan inside its field (e.g. every third along each axis).
    threshold : float
        The air/tissue level: values above it are tissue.

    Returns
    -------
    (float, float) or None
        The median of the values below ``threshold`` (air) and the mode of those above it (soft
        tissue: mostly brain); ``None`` without air, with fewer than 100 tissue values or when the
        tissue level does not lie above the air level.
    """
    values = np.asarray(sample, np.float64).ravel()
    below = values[values < threshold]
    tissue = _mode(values[values > threshold])
    if not below.size or tissue is None:
        return None
    air = float(np.median(below))
    return (air, tissue) if tissue > air else None


def ct_levels(values: npt.NDArray[np.floating], air: float, tissue: float) -> CtLevels | None:
    """The water-density band near the globe: the local mode of the soft tissue in ``values``.

    Parameters
    ----------
    values : ndarray, any shape
        Intensities near the globe (within :data:`LEVEL_REACH_MM` of the seed).
    air, tissue : float
        The scan's air and soft-tissue levels (:func:`scan_levels`).

    Returns
    -------
    CtLevels or None
        The water level is the mode of the values within :data:`LOCAL_REACH` of the air-to-tissue
        span round ``tissue`` (the globe, the muscles and the lids; not the orbit's fat, which may
        outnumber them near the seed); ``None`` with fewer than 100 such values.
    """
    span = tissue - air
    values = np.asarray(values, np.float64).ravel()
    near = values[np.abs(values - tissue) <= LOCAL_REACH * span]
    water = _mode(near, (tissue - LOCAL_REACH * span, tissue + LOCAL_REACH * span), bins=64)
    if water is None:
        return None
    return CtLevels(air=float(air), water=water, low=water + WATER_BAND[0] * span, high=water + WATER_BAND[1] * span)


def _mode(values: npt.NDArray[np.float64], limits: tuple[float, float] | None = None, bins: int = 256) -> float | None:
    """The mode of ``values`` (``bins`` bins over ``limits``, default their 2nd..98th percentiles, smoothed over 5
    bins); ``None`` with fewer than 100 values or an empty range."""
    if values.size < 100:
        return None
    lo, hi = np.percentile(values, (2.0, 98.0)) if limits is None else limits
    if not hi > lo:
        return None
    counts, edges = np.histogram(values, bins=bins, range=(float(lo), float(hi)))
    counts = np.convolve(counts, np.ones(5) / 5.0, mode="same")
    mode = int(np.argmax(counts))
    return float(0.5 * (edges[mode] + edges[mode + 1]))


def ct_globe_centre(image: npt.NDArray[np.floating], affine: Affine, seed: npt.ArrayLike, air: float,
                    tissue: float, search_mm: float = SEARCH_MM, field: Mask | None = None
                    ) -> tuple[npt.NDArray[np.float64], float, CtLevels] | None:
    """The globe's centre near ``seed`` in a CT: (centre in world mm, its score, the levels used) or ``None``.

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z)
        CT intensities (HU or rescaled) on any grid (voxel sizes and axes from ``affine``).
    affine : ndarray, shape (4, 4)
        Voxel -> world mm of ``image``.
    seed : array-like, shape (3,)
        World mm; the centre lies within ``search_mm`` of it.  ``None`` is returned when the seed lies
        outside the grid or the field.
    air, tissue : float
        The scan's air and soft-tissue levels (:func:`scan_levels`).
    search_mm : float
        Search radius, in mm.
    field : ndarray of bool, shape (X, Y, Z), optional
        Voxels inside the scanned field (default: all); the ball must lie wholly inside it, and the
        shell's share counts its voxels only.

    Returns
    -------
    (ndarray, shape (3,), float, CtLevels) or None
        The centre, the best score (share of water in the ball less that in the shell: higher is a
        clearer globe) and the levels; ``None`` when no candidate scores :data:`MIN_SCORE`.
    """
    affine = np.asarray(affine, float)
    seed = np.asarray(seed, float)
    linear = affine[:3, :3]
    window = vitreous.seed_window(image.shape, affine, seed, max(search_mm + SHELL_MM[1], LEVEL_REACH_MM), field)
    if window is None:
        return None
    sl, pad, sub_affine = window
    values = np.asarray(image[sl], np.float32)
    in_field = np.ones(values.shape, bool) if field is None else np.asarray(field[sl], bool)
    crop_affine = affine.copy()
    crop_affine[:3, 3] = affine[:3, 3] + linear @ np.array([s.start for s in sl], float)
    distance2 = vitreous._distance2(values.shape, crop_affine, seed)
    levels = ct_levels(values[in_field & (distance2 <= LEVEL_REACH_MM**2)], air, tissue)
    if levels is None:
        return None
    water = ((values > levels.low) & (values < levels.high) & in_field).astype(np.float32)
    water = np.pad(water, pad)
    counted = np.pad(in_field.astype(np.float32), pad)
    ball = (linear.tobytes(), 0.0, BALL_MM)
    shell = (linear.tobytes(), SHELL_MM[0], SHELL_MM[1])
    n_ball = float(vitreous._ball(*ball).sum())
    in_ball, full = (s / n_ball for s in vitreous._convolved([water, counted], ball))
    in_shell, shell_n = vitreous._convolved([water, counted], shell)
    score = in_ball - in_shell / np.maximum(shell_n, 1.0)
    near = (vitreous._distance2(water.shape, sub_affine, seed) <= search_mm**2) & (full >= 0.995)
    if not near.any():
        return None
    score = np.where(near, score, -np.inf)
    best = float(score.max())
    if best < MIN_SCORE:
        return None
    first = np.asarray(np.unravel_index(int(np.argmax(score)), score.shape), float)
    ties = np.argwhere(score >= best - TIE_SCORE)
    offsets = (ties - first) @ linear.T
    tie = ties[(offsets**2).sum(1) <= TIE_MM**2].mean(0)
    return np.asarray(sub_affine[:3, :3] @ tie + sub_affine[:3, 3], float), best, levels
