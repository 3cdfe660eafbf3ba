"""Voxels within a distance of a mask, exactly as scipy's Euclidean distance transform decides it.

:func:`within_distance` answers ``ndi.distance_transform_edt(~marked, sampling=spacing) <= radius``
voxel for voxel, without the transform: the auricle rule (:mod:`defacer.auricle`) opens the head
with a ball through two such thresholds per auricle, and scipy's feature transform, with its int32
feature and float64 distance arrays (~25 MB for a 69^3 grid), was most of the ear stages' time.

The answer is found in three separable passes on small integers, which is exact when two of the
three axes share one voxel size, as far as the decisions go (every 1 mm, 2 mm, in-plane-isotropic or
2D-slice grid, also with a header's sizes off by a millionth):

1. along one equal-spacing axis ``a``: the distance in voxels to the nearest marked voxel, squared
   and capped;
2. along the other ``b``: the in-plane squared distance ``m = k_a^2 + k_b^2`` (in voxels^2), as the
   minimum over the shifts within reach (the lower envelope of the parabolas, for the small reach
   of a ball);
3. along the third ``c``: a voxel is within when, for some shift ``k_c``, the plane at ``k_c`` holds
   a marked voxel with ``m <= m_max(k_c)``.

The table ``m_max`` is computed once per (spacing, radius) by scipy's own arithmetic on every offset
(int32 offsets as float64, times the spacing, squared, summed over the axes in order, square root,
compared with the radius), so each offset is within exactly when scipy's distance to it is.  The
plan is refused, and scipy used instead, where that table would be ambiguous: offsets with one ``m``
and ``k_c`` but different decisions, a decision that is not monotone in ``m``, or two offsets within
1e-9 (relative) of each other on either side of the radius (scipy's feature transform might then
pick either); also when no voxel is marked (scipy's transform of an array without a zero is not a
distance), or when no two voxel sizes are close enough for one table.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from defacer._typing import Mask

#: Two offsets whose scipy distances lie closer than this (relative to the radius) on either side of
#: the radius make the plan ambiguous (scipy is used instead).
TIE_TOLERANCE = 1e-9
#: Largest table of offsets a plan is made from (a ball of radius ~60 voxels); beyond, scipy decides.
MAX_TABLE = 500_000


@dataclass(frozen=True)
class _Plan:
    """How :func:`within_distance` decides for one (spacing, radius).

    Attributes
    ----------
    a, b : int
        The two axes of equal voxel size (pass 1 along ``a``, pass 2 along ``b``).
    c : int
        The third axis (pass 3).
    reach : int
        Largest ``|k_b|`` that can be within; ``reach**2`` >= every ``m_max``.
    cap : int
        Distances along ``a`` are capped at ``cap`` voxels (``cap**2`` > every ``m_max``).
    m_max : tuple of int
        Per ``|k_c|`` = 0, 1, ...: the largest in-plane ``k_a**2 + k_b**2`` within the radius
        (-1: none).
    dtype : numpy integer type
        Holds every squared distance the passes form (``cap**2 + reach**2``).
    """

    a: int
    b: int
    c: int
    reach: int
    cap: int
    m_max: tuple[int, ...]
    dtype: type[np.unsignedinteger]


def scipy_distance(offsets: npt.NDArray[np.integer], spacing: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The distance scipy's ``distance_transform_edt`` gives a voxel whose nearest zero lies ``offsets`` away.

    The same operations in the same order as scipy 1.10-1.17 (``ft - indices`` as int32, then
    float64, each axis times its spacing in place, squared in place, summed over axis 0, square root).

    Parameters
    ----------
    offsets : ndarray, int, shape (3, ...)
        Offsets in voxels along each axis.
    spacing : ndarray, float64, shape (3,)
        Voxel size in mm.

    Returns
    -------
    ndarray, float64, shape ``offsets.shape[1:]``
    """
    dt = np.asarray(offsets).astype(np.int32).astype(np.float64)
    for axis in range(len(spacing)):
        dt[axis, ...] *= spacing[axis]
    np.multiply(dt, dt, dt)
    return np.asarray(np.sqrt(np.add.reduce(dt, axis=0)))


@functools.lru_cache(maxsize=64)
def _plan(spacing: tuple[float, float, float], radius: float) -> _Plan | None:
    """The passes' plan for ``spacing`` (mm) and ``radius`` (mm); ``None`` where none would be exact."""
    sp = np.asarray(spacing, np.float64)
    if not math.isfinite(radius) or radius < 0 or not np.all(np.isfinite(sp) & (sp > 0)):
        return None
    # the two closest voxel sizes make the plane (a header's 0.9999974 x 1.0000000 mm is one size
    # as far as the table shows: it is checked offset by offset)
    for a, b, c in sorted(((1, 2, 0), (0, 2, 1), (0, 1, 2)), key=lambda t: abs(sp[t[0]] - sp[t[1]])):
        plan = _plan_for_axes(sp, radius, a, b, c)
        if plan is not None:
            return plan
    return None


def _plan_for_axes(sp: npt.NDArray[np.float64], radius: float, a: int, b: int, c: int) -> _Plan | None:
    """The plan with the plane (a, b) and the third axis c, or ``None`` where its table is ambiguous."""
    extent = [int(radius / s) + 2 for s in sp]  # every offset beyond lies farther than radius + a voxel
    # the plane's table holds every (k_a, k_b) with k_a^2 + k_b^2 up to the largest m within (the
    # passes meet them all, whichever of the two axes a voxel size belongs to)
    extent[a] = extent[b] = int(math.sqrt(2.0) * radius / min(sp[a], sp[b])) + 2
    if math.prod(n + 1 for n in extent) > MAX_TABLE:
        return None  # a ball of hundreds of voxels: scipy's transform is the cheaper way there
    grid = np.stack(np.meshgrid(*[np.arange(n + 1) for n in extent], indexing="ij"))
    distance = scipy_distance(grid, sp)
    inside = distance <= radius
    if inside.all() or not inside.any():
        return None
    if float(distance[~inside].min()) - float(distance[inside].max()) <= TIE_TOLERANCE * max(radius, 1.0):
        return None
    plane = grid[a] ** 2 + grid[b] ** 2
    m_max = []
    for kc in range(extent[c] + 1):
        m, ok = plane[grid[c] == kc], inside[grid[c] == kc]
        top = int(m[ok].max()) if ok.any() else -1
        if not ok[m <= top].all() or ok[m > top].any():
            return None  # one m, two decisions, or not monotone in m
        m_max.append(top)
    while m_max[-1] < 0:
        m_max.pop()
    if m_max[0] < 0:
        return None
    largest = max(m_max)
    reach = math.isqrt(largest)
    reach += int(reach * reach < largest)
    cap = reach + 1
    if cap * cap + reach * reach > np.iinfo(np.uint16).max:
        return None
    dtype = np.uint8 if cap * cap + reach * reach <= np.iinfo(np.uint8).max else np.uint16
    return _Plan(a, b, c, reach, cap, tuple(m_max), dtype)


def _shifted(size: int, shift: int, axis: int) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """(destination, source) index pairs along ``axis`` of a 3D array for ``out[x] <- in[x + shift]``."""
    dst, src = [slice(None)] * 3, [slice(None)] * 3
    dst[axis] = slice(max(0, -shift), size - max(0, shift))
    src[axis] = slice(max(0, shift), size - max(0, -shift))
    return tuple(dst), tuple(src)


def within_distance(marked: Mask, radius: float, spacing: npt.ArrayLike) -> Mask:
    """Voxels whose distance to the nearest marked voxel is at most ``radius``, exactly as scipy decides it.

    Equal, voxel for voxel, to ``ndi.distance_transform_edt(~marked, sampling=spacing) <= radius``
    (voxels outside the array are not marked); computed by the module's separable passes where
    they are exact, by that very expression elsewhere.

    Parameters
    ----------
    marked : ndarray, bool, shape (X, Y, Z)
    radius : float
        In mm.
    spacing : array-like, shape (3,)
        Voxel size in mm.

    Returns
    -------
    ndarray, bool, shape (X, Y, Z)
    """
    sp = tuple(float(s) for s in np.asarray(spacing, float))
    plan = _plan(sp, float(radius)) if marked.ndim == 3 and marked.any() else None  # type: ignore[arg-type]
    if plan is None:
        return np.asarray(ndi.distance_transform_edt(~marked, sampling=sp) <= radius)
    shape = marked.shape
    # pass 1: squared distance (voxels) along a to the nearest marked voxel, capped at cap**2
    along_a = np.full(shape, plan.cap * plan.cap, dtype=plan.dtype)
    along_a[marked] = 0
    reached = marked
    for k in range(1, min(plan.cap, shape[plan.a])):
        grown = reached.copy()
        for step in (1, -1):
            dst, src = _shifted(shape[plan.a], step, plan.a)
            grown[dst] |= reached[src]
        along_a[grown & ~reached] = k * k
        reached = grown
    # pass 2: in-plane squared distance, the minimum over the shifts along b within reach
    plane = along_a.copy()
    for k in range(1, min(plan.reach, shape[plan.b] - 1) + 1):
        for step in (k, -k):
            dst, src = _shifted(shape[plan.b], step, plan.b)
            np.minimum(plane[dst], along_a[src] + plan.dtype(k * k), out=plane[dst])
    # pass 3: some plane along c within the radius
    out = plane <= plan.m_max[0]
    for k in range(1, min(len(plan.m_max) - 1, shape[plan.c] - 1) + 1):
        if plan.m_max[k] < 0:
            continue
        for step in (k, -k):
            dst, src = _shifted(shape[plan.c], step, plan.c)
            out[dst] |= plane[src] <= plan.m_max[k]
    return out
