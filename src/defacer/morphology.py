"""Binary erosion, dilation and opening by the face-connected cross: scipy's voxels, by shifted views.

:func:`erode`, :func:`dilate` and :func:`open_cross` give, voxel for voxel, what
``scipy.ndimage.binary_erosion`` / ``binary_dilation`` / ``binary_opening`` give with their defaults:
the cross structure (``generate_binary_structure(ndim, 1)``: each voxel and its face neighbours),
one iteration, ``border_value=0`` (outside the array counts as background) and no mask.  scipy runs
a generic structuring-element loop over every voxel (25-34 ms on the 104 x 128 x 128 grid of a 1 mm
head averaged to 2 mm, in :func:`defacer.detect.preprocess.place_box`); the cross is the union of
one-voxel shifts along each axis, so the same answer is a few ANDs (erosion) or ORs (dilation) of
shifted views of the array (about 1.5 ms for the opening there).  Boolean logic only: no rounding.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from defacer._typing import Mask


def _views(ndim: int, axis: int, n: int) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Index tuples of all voxels but the last along ``axis`` (of length ``n``), and all but the first."""
    before = [slice(None)] * ndim
    after = [slice(None)] * ndim
    before[axis] = slice(0, n - 1)
    after[axis] = slice(1, n)
    return tuple(before), tuple(after)


def erode(mask: npt.ArrayLike) -> Mask:
    """``scipy.ndimage.binary_erosion(mask)``: voxels set with every face neighbour set (outside: unset).

    Parameters
    ----------
    mask : array-like, any shape
        Read as bool.

    Returns
    -------
    ndarray, bool, same shape (a new C-ordered array)
    """
    source = np.asarray(mask, dtype=bool)
    out = source.copy(order="C")
    for axis, n in enumerate(source.shape):
        before, after = _views(source.ndim, axis, n)
        out[after] &= source[before]
        out[before] &= source[after]
        edge = [slice(None)] * source.ndim
        for plane in (0, n - 1):  # their neighbour outside the array is background
            if n:
                edge[axis] = slice(plane, plane + 1)
                out[tuple(edge)] = False
    return out


def dilate(mask: npt.ArrayLike) -> Mask:
    """``scipy.ndimage.binary_dilation(mask)``: voxels set or with a face neighbour set.

    Parameters
    ----------
    mask : array-like, any shape
        Read as bool.

    Returns
    -------
    ndarray, bool, same shape (a new C-ordered array)
    """
    source = np.asarray(mask, dtype=bool)
    out = source.copy(order="C")
    for axis, n in enumerate(source.shape):
        before, after = _views(source.ndim, axis, n)
        out[after] |= source[before]
        out[before] |= source[after]
    return out


def open_cross(mask: npt.ArrayLike) -> Mask:
    """``scipy.ndimage.binary_opening(mask)``: :func:`dilate` of :func:`erode` (isolated specks and
    one-voxel-thin parts removed).

    Parameters
    ----------
    mask : array-like, any shape
        Read as bool.

    Returns
    -------
    ndarray, bool, same shape
    """
    return dilate(erode(mask))
