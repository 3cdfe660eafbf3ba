"""The head's frame from its two eyes: right along the eyes' axis, anterior, up.

A head turned (yaw) or tilted sideways (roll) in the scanner turns this frame with it, so the
rules that place the nose and ears relative to the eyes (:mod:`defacer.detect.postprocess`,
:mod:`defacer.detect.ear_fallback`, :mod:`defacer.detect.refine_face`) hold in any position.
The head's pitch (chin up or down) cannot be read from two points; the frame keeps the scanner's
anterior direction for it.
"""

from __future__ import annotations

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
