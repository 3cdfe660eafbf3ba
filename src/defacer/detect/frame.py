"""The head's frame from its two eyes: right along the eyes' axis, anterior, up.

A head turned (yaw) or tilted sideways (roll) in the scanner turns this frame with it, so the
rules that place the nose and ears relative to the eyes (:mod:`defacer.detect.postprocess`,
:mod:`defacer.detect.ear_fallback`, :mod:`defacer.detect.refine_face`) hold in any position.
The head's pitch (chin up or down) cannot be read from two points; the frame keeps the scanner's
anterior direction for it.  With an ear as a third point it can be estimated (:func:`head_pitch`): seen from
the side, the eyes lie 18 degrees above the ears on average, but that angle spreads by 7.5 degrees from head to
head (a 3-year-old's reads 13 degrees low upright), too much to re-frame a head on its own.  It is used to
confirm the pitch of an oblique grid (:func:`grid_pitch`): a research MR acquired along the AC-PC line has its
head upright in its array and nodded in the world, where the detector looks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

#: Mean (y, z) offset of an ear centroid in the eye frame, in mm (y: anterior, z: up), from
#: ``python scripts/ear_offsets.py`` on the reference labels of all 21 heads (42 ears), 2026-12-03.
#: Leave one head out, the predicted (y, z) is a median 12 mm (90th percentile 22 mm, max 31 mm) off.
#: Re-derived on 2026-12-05 after otsu_T1w's left ear was corrected (f7879d0): (-90.8, -29.5), spread (6.3, 12.5),
#: leave-one-out median 12.2 mm.  Not adopted: the tighter anterior spread moves right ears of held-out heads pitched
#: 20 degrees past ``EAR_PLAUSIBLE_SD`` (contecore2, invesalius-ct0051, ixi033: 4.2-4.5 -> 4.5-4.9 SD), and
#: ixi012_T1w_2mm's left ear there (4.35 -> 4.53 SD) would yield to a 500 mm^3 candidate 26 mm from it (3.98 SD);
#: the unperturbed heads' network ears would reach 3.48 SD (2.98 now).
EAR_OFFSET_MM = (-91.3, -29.4)
#: Standard deviation of those offsets, in mm (y, z).
EAR_SPREAD_MM = (7.3, 12.7)
#: Elevation of the eyes' midpoint above the ears' (their centroids' mean), seen from the side in the eyes' frame,
#: in degrees: ``atan2(-z, -y)`` of the ears' mean (y, z) offset.  Mean of the reference labels of all 21 heads
#: (build script, 2026-12-05 11:45): 18.0, standard deviation 7.5, range 3.8 (fnndsc-3yo) to 29.2 (mricrogl_CT);
#: every head's angle moves with its header turned about R by exactly the turn (+20 -> 23.8-49.3).
EAR_EYE_ELEVATION_DEG = 18.0
#: A grid pitched this much or more about the eyes' axis (an oblique acquisition: its anterior axis turned towards
#: superior or inferior) is taken as the head's frame where the ears agree (:func:`grid_pitch`, :data:`PITCH_AGREE_DEG`).
PITCH_MIN_DEG = 5.0
#: ...within this many degrees of the ears' reading (:func:`head_pitch`): the ears alone spread 7.5 degrees from
#: head to head (a 3-year-old's read -13 upright), so on a grid aligned with the scanner nothing changes; a grid
#: aligned with the head (AC-PC, 20 degrees) is confirmed by the ears, a grid tilted for another reason (a coronal
#: oblique through the hippocampus, 30 degrees, the head upright) is not.
PITCH_AGREE_DEG = 12.0
#: An ear is read for the pitch only where it lies this far (mm, in the eyes' sagittal plane: the (y, z) distance)
#: from the eyes' midpoint: the reference labels' 42 ears lie 83.4-108.7 mm away (mean 96.3, sd 5.2).  An ear
#: placed elsewhere is no human ear (the network's wrong ears on a T2-like contrast lie on the cheek or the jaw,
#: 30-40 mm off) and its height says nothing about the pitch.  The synthetic phantom's ears (:mod:`defacer.phantom`)
#: lie 80 mm from its eyes and 4 mm above them: it is not read as pitched (it would read -21 degrees).
EAR_DISTANCE_MM = (82.0, 112.0)


def eye_frame(eye_a: npt.ArrayLike, eye_b: npt.ArrayLike
              ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], float]:
    """Origin and axes of the frame the eyes give.

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


def ear_offset_score(centre_mm: npt.ArrayLike, origin: npt.NDArray[np.float64], axes: npt.NDArray[np.float64]) -> float:
    """How far an ear centre lies from where ears lie in the eyes' frame, in standard deviations.

    Parameters
    ----------
    centre_mm : array-like, shape (3,)
        The ear candidate's centre, RAS+ mm.
    origin, axes
        :func:`eye_frame` of the two eyes.

    Returns
    -------
    float
        ``hypot((y - EAR_OFFSET_MM[0]) / EAR_SPREAD_MM[0], (z - EAR_OFFSET_MM[1]) / EAR_SPREAD_MM[1])`` for the
        centre's anterior (y) and up (z) offsets from the eyes' midpoint; the left-right offset is free.
    """
    offset = axes @ (np.asarray(centre_mm, float) - origin)
    return float(np.hypot((offset[1] - EAR_OFFSET_MM[0]) / EAR_SPREAD_MM[0],
                          (offset[2] - EAR_OFFSET_MM[1]) / EAR_SPREAD_MM[1]))


def head_pitch(eye_a: npt.ArrayLike, eye_b: npt.ArrayLike, ears: Sequence[npt.ArrayLike]) -> float | None:
    """How far the head is nodded (pitched) from the usual, read from where its ears lie below its eyes.

    Parameters
    ----------
    eye_a, eye_b : array-like, shape (3,)
        The eye centroids in world (RAS+) mm, in any order.
    ears : sequence of array-like, shape (3,)
        One or two ear centroids in world mm (the network's components); only those at a human ear's distance
        from the eyes (:data:`EAR_DISTANCE_MM`) are read.

    Returns
    -------
    float or None
        Degrees, positive for the chin raised (the face turned towards superior about the eyes' axis): the
        elevation of the eyes above the ears' mean (in the eyes' frame, :func:`eye_frame`) less
        :data:`EAR_EYE_ELEVATION_DEG`.  ``None`` without such an ear, or where the ears do not lie behind the
        eyes (no side view to read).
    """
    origin, axes, _ = eye_frame(eye_a, eye_b)
    offsets = np.array([axes @ (np.asarray(ear, float) - origin) for ear in ears]).reshape(-1, 3)
    distance = np.hypot(offsets[:, 1], offsets[:, 2])
    offsets = offsets[(distance >= EAR_DISTANCE_MM[0]) & (distance <= EAR_DISTANCE_MM[1])]
    if not len(offsets):
        return None
    back, down = -float(offsets[:, 1].mean()), -float(offsets[:, 2].mean())
    if back <= 0.0:
        return None
    return float(np.degrees(np.arctan2(down, back))) - EAR_EYE_ELEVATION_DEG


def grid_pitch(eye_a: npt.ArrayLike, eye_b: npt.ArrayLike, ras_affine: npt.ArrayLike) -> float:
    """How far the grid's anterior axis is pitched about the eyes' axis, in degrees (positive: towards superior).

    Parameters
    ----------
    eye_a, eye_b : array-like, shape (3,)
        The eye centroids in world (RAS+) mm.
    ras_affine : array-like, shape (4, 4)
        Voxel -> RAS+ mm of the RAS-ordered array (its second axis the one closest to anterior).

    Returns
    -------
    float
        The angle of the array's second axis from the eyes' frame's anterior in its sagittal plane (0 for a grid
        aligned with the scanner: the eyes' frame keeps the scanner's anterior).
    """
    _, axes, _ = eye_frame(eye_a, eye_b)
    direction = axes @ np.asarray(ras_affine, float)[:3, 1]
    return float(np.degrees(np.arctan2(direction[2], direction[1])))
