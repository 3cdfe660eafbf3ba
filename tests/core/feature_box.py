"""Test helper: the region a defacing may touch, from the detected labels."""

from __future__ import annotations

import numpy as np


def allowed_region(detected: np.ndarray, spacing: tuple[float, float, float], margin_mm: float = 20.0,
                   scale: float = 3.0) -> np.ndarray:
    """Bounding box of all detected features, scaled ``scale`` times about its centre and padded by ``margin_mm``.

    ``scale`` is 3 because the widest distortion is the eye cover (each eye's box x3, over the orbit and brow).
    """
    lo, hi = [], []
    for k in range(3):
        present = np.flatnonzero(detected.any(axis=tuple(a for a in range(3) if a != k)))
        lo.append(present.min())
        hi.append(present.max())
    centre = (np.array(lo) + np.array(hi)) / 2
    half = (np.array(hi) - np.array(lo)) / 2 * scale + margin_mm / np.asarray(spacing)
    allowed = np.zeros(detected.shape, dtype=bool)
    allowed[tuple(slice(max(0, int(c - h)), int(c + h) + 1) for c, h in zip(centre, half, strict=True))] = True
    return allowed
