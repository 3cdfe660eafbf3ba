"""The filled convex hull of a 2D mask, pixel for pixel as ``skimage.morphology.convex_hull_image`` gives it.

scikit-image's function (with its defaults: each pixel stands for the four midpoints of its edges, and
the hull's border counts as inside) finds the hull with SciPy's Qhull and fills it with a point-in-polygon
test; importing it imports ``skimage.morphology``, ``skimage.measure`` and ``scipy.spatial`` (with SciPy's
``linalg`` and ``sparse``): 0.05-0.15 s of a ``defacer deface`` that uses it on one small side view per ear.

Here, on the same points in integer units of half a pixel, the hull is Andrew's monotone chain and a
pixel is filled when it lies on the inner side of, or on, every edge: both with exact integer
arithmetic.  Qhull's hull of these points (coordinates in halves, far from its precision limits) is the
same polygon, and scikit-image's test puts the same pixels inside it (a pixel centre never is a vertex:
each vertex has one half-pixel coordinate; one on an edge counts as inside there too).  The test suite
compares the two on random and real masks.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def convex_hull_image(image: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """Pixels inside or on the convex hull of the edge midpoints of the ``True`` pixels of a 2D mask.

    Parameters
    ----------
    image : array_like, bool, shape (M, N)
        The mask (any axis order; the hull does not depend on it).

    Returns
    -------
    ndarray, bool, shape (M, N)
        ``skimage.morphology.convex_hull_image(image)``; all ``False`` for an empty mask (scikit-image
        warns there).

    Raises
    ------
    ValueError
        For a mask that is not 2D.
    """
    mask = np.asarray(image, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"Expected a 2D mask, found {mask.ndim} dimensions.")
    hull = np.zeros(mask.shape, dtype=bool)
    if not mask.any():
        return hull
    vertices = _hull(_candidates(mask))
    rows, cols = np.nonzero(mask)
    box = (slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1))
    # pixel centres, in halves, of the mask's bounding box (the hull lies within it, half a pixel around)
    r, c = np.meshgrid(2 * np.arange(box[0].start, box[0].stop, dtype=np.int64),
                       2 * np.arange(box[1].start, box[1].stop, dtype=np.int64), indexing="ij")
    inside = np.ones(r.shape, dtype=bool)
    for (r0, c0), (r1, c1) in zip(vertices, np.roll(vertices, -1, axis=0), strict=True):
        inside &= (r1 - r0) * (c - c0) - (c1 - c0) * (r - r0) >= 0  # left of, or on, the edge (counter-clockwise)
    hull[box] = inside
    return hull


def _candidates(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    """The edge midpoints, in halves of a pixel, that can be vertices of the hull of every pixel's four,
    shape (K, 2), sorted by row then column, unique.

    Only each row's first pixel's left and last pixel's right midpoint, and each column's first pixel's
    upper and last pixel's lower one: any other midpoint lies between two midpoints of its row or column.
    """
    points = []
    for axis in (0, 1):  # rows (ends along the columns), then columns (ends along the rows)
        lines = np.flatnonzero(mask.any(axis=1 - axis))
        along = mask[lines] if axis == 0 else mask[:, lines].T
        first = np.argmax(along, axis=1)
        last = along.shape[1] - 1 - np.argmax(along[:, ::-1], axis=1)
        for ends, side in ((first, -1), (last, 1)):
            ends_h, lines_h = 2 * ends.astype(np.int64) + side, 2 * lines.astype(np.int64)
            points.append(np.stack([lines_h, ends_h] if axis == 0 else [ends_h, lines_h], axis=1))
    midpoints = np.concatenate(points)
    width = 2 * mask.shape[1] + 2  # one number per point, in the same (row, column) order: one 1D sort
    keys = np.unique((midpoints[:, 0] + 1) * width + (midpoints[:, 1] + 1))
    return np.stack([keys // width - 1, keys % width - 1], axis=1)


def _hull(points: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Vertices of the convex hull of ``points`` (K, 2, sorted, unique, not all on one line), counter-clockwise,
    without collinear points (Andrew's monotone chain, exact in integers)."""

    def chain(ordered: list[list[int]]) -> list[list[int]]:
        kept: list[list[int]] = []
        for p in ordered:
            # drop the last kept point while it does not make a counter-clockwise turn towards p
            while len(kept) >= 2 and ((kept[-1][0] - kept[-2][0]) * (p[1] - kept[-2][1])
                                      - (kept[-1][1] - kept[-2][1]) * (p[0] - kept[-2][0])) <= 0:
                kept.pop()
            kept.append(p)
        return kept

    ordered = points.tolist()
    lower, upper = chain(ordered), chain(ordered[::-1])
    return np.array(lower[:-1] + upper[:-1], dtype=np.int64)
