"""The vitreous body's centre found in the image: one rule for the reference eye labels and the detector.

The vitreous body is a homogeneous ball about 20 mm across (a globe of 11-12 mm radius less the
lens), set off from what surrounds it (sclera, fat, muscle, bone, lens).  Its centre is taken as
the centre of the ball of radius :data:`BALL_MM` that is most homogeneous for its contrast: the
lowest ratio of the intensity's standard deviation inside the ball to the rms difference between
the ball's mean and the head voxels of a shell :data:`SHELL_MM` outside it, the ball wholly inside
the head and the field.  A ball that big fits inside the vitreous only round its centre (any shift
takes in the wall or the lens), which lies 2-4 mm behind the globe's middle (the lens fills the
front).

``scripts/make_reference_labels.py`` (``globe_in_image``) centres every MR reference eye on it (1 mm
work grid, seeded by the registered landmark); :mod:`defacer.detect.refine_face` uses the same
function, seeded by the network's eye, so reference and detector share this rule (an agreement
between them is partly by construction).
"""

from __future__ import annotations

import functools

import numpy as np
import numpy.typing as npt
from scipy import fft as sp_fft

from defacer._typing import Affine, Mask

#: Radius of the homogeneous ball, in mm.
BALL_MM = 8.0
#: The contrast shell lies this far outside the ball (inner, outer), in mm.
SHELL_MM = (3.0, 6.0)
#: The centre is looked for within this distance of the seed, in mm.
SEARCH_MM = 14.0
#: Voxels within this distance of the best whose score lies within :data:`TIE_SHARE` of it are averaged, in mm.
TIE_MM = 3.0
TIE_SHARE = 0.05


def vitreous_centre(image: npt.NDArray[np.floating], inside: Mask, affine: Affine, seed: npt.ArrayLike,
                    search_mm: float = SEARCH_MM, ball_mm: float = BALL_MM,
                    shell_mm: tuple[float, float] = SHELL_MM, scale: float = 1.0,
                    field: Mask | None = None) -> tuple[npt.NDArray[np.float64], float] | None:
    """The vitreous body's centre near ``seed``: (centre in world mm, its score) or ``None``.

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z)
        Intensities on any grid (voxel sizes and axes from ``affine``; the balls are measured in mm).
    inside : ndarray of bool, shape (X, Y, Z)
        The head (a dark vitreous body counts as inside).
    affine : ndarray, shape (4, 4)
        Voxel -> world mm of ``image``.
    seed : array-like, shape (3,)
        World mm; the centre lies within ``search_mm`` of it.  ``None`` is returned when the seed lies
        outside the grid or the field.
    search_mm, ball_mm, shell_mm
        Search radius, ball radius and the contrast shell's distances outside the ball, in mm.
    scale : float
        The intensities are divided by it first (the reference divides by the head's 99th percentile).
    field : ndarray of bool, shape (X, Y, Z), optional
        Voxels inside the scanned field (default: all).

    Returns
    -------
    (ndarray, shape (3,), float) or None
        The centre (the mean of the voxels within :data:`TIE_MM` of the best whose score lies within
        :data:`TIE_SHARE` of it: ties of the grid) and the best score (lower: more homogeneous).
    """
    affine = np.asarray(affine, float)
    seed = np.asarray(seed, float)
    linear = affine[:3, :3]
    # the crop every candidate's ball and shell lie in (zeros beyond the grid: outside the head and the field)
    window = seed_window(image.shape, affine, seed, search_mm + ball_mm + shell_mm[1], field)
    if window is None:
        return None
    sl, pad, sub_affine = window
    keep = inside[sl] if field is None else inside[sl] & field[sl]
    inner = np.pad(keep.astype(np.float32), pad)
    sub = np.pad(np.asarray(image[sl], np.float32) / scale, pad)
    ball = (linear.tobytes(), 0.0, ball_mm)
    n = float(_ball(*ball).sum())
    sums = _convolved([sub, sub**2, inner], ball)
    mean, sq, full = sums[0] / n, sums[1] / n, sums[2] / n
    std = np.sqrt(np.maximum(sq - mean**2, 0.0))
    # how far the surroundings (sclera, fat, muscle, bone, lens) differ from the ball's mean: rms of
    # (intensity - ball mean) over the shell's head voxels (the air in front of the face is no contrast)
    shell = (linear.tobytes(), ball_mm + shell_mm[0], ball_mm + shell_mm[1])
    sums = _convolved([inner, sub * inner, sub**2 * inner], shell)
    m = np.maximum(sums[0], 1.0)
    shell_mean = sums[1] / m
    shell_sq = sums[2] / m
    contrast = np.sqrt(np.maximum(shell_sq - 2.0 * mean * shell_mean + mean**2, 1e-12))
    near = (_distance2(sub.shape, sub_affine, seed) <= search_mm**2) & (full >= 0.995) & (inner > 0)
    if not near.any():
        return None
    cost = np.where(near, std / contrast, np.inf)
    best = float(cost.min())
    first = np.asarray(np.unravel_index(int(np.argmin(cost)), cost.shape), float)
    ties = np.argwhere(cost <= best * (1.0 + TIE_SHARE) + 1e-9)
    offsets = (ties - first) @ linear.T
    tie = ties[(offsets**2).sum(1) <= TIE_MM**2].mean(0)
    return np.asarray(sub_affine[:3, :3] @ tie + sub_affine[:3, 3], float), best


def seed_window(shape: tuple[int, ...], affine: npt.NDArray[np.float64], seed: npt.NDArray[np.float64],
                reach_mm: float, field: Mask | None = None
                ) -> tuple[tuple[slice, ...], list[tuple[int, int]], npt.NDArray[np.float64]] | None:
    """The part of the grid within ``reach_mm`` (and two voxels) of ``seed``'s voxel along each axis.

    Parameters
    ----------
    shape : tuple of int
        The grid's shape (X, Y, Z).
    affine : ndarray, shape (4, 4)
        Voxel -> world mm of the grid.
    seed : ndarray, shape (3,)
        World mm.
    reach_mm : float
        How far the window reaches from the seed's voxel, in mm, along each axis.
    field : ndarray of bool, shape (X, Y, Z), optional
        Voxels inside the scanned field.

    Returns
    -------
    (tuple of slice, list of (int, int), ndarray, shape (4, 4)) or None
        The window's slices (cut at the grid's ends), the padding per axis (before, after) that makes it
        whole again, and the voxel -> world affine of the padded window; ``None`` when the seed lies
        outside the grid or the field.
    """
    linear = affine[:3, :3]
    spacing = np.sqrt((linear**2).sum(axis=0))
    idx = np.round(np.linalg.solve(linear, seed - affine[:3, 3])).astype(int)
    if not (np.all(idx >= 0) and np.all(idx < np.asarray(shape))):
        return None
    if field is not None and not field[tuple(idx)]:
        return None
    h = np.ceil(reach_mm / spacing).astype(int) + 2
    lo, hi = idx - h, idx + h + 1
    sl = tuple(slice(max(int(a), 0), min(int(b), n)) for a, b, n in zip(lo, hi, shape, strict=True))
    pad = [(int(s.start - a), int(b - s.stop)) for s, a, b in zip(sl, lo, hi, strict=True)]
    padded_affine = affine.copy()
    padded_affine[:3, 3] = affine[:3, 3] + linear @ lo.astype(float)
    return sl, pad, padded_affine


def _convolved(arrays: list[npt.NDArray[np.float32]], kernel: tuple[bytes, float, float]
               ) -> list[npt.NDArray[np.float32]]:
    """The sums of each array (one shape) over the kernel ``_ball(*kernel)`` centred on every voxel.

    A circular convolution of the crop's own size with the kernel centred on the origin (its
    transform cached per grid and size): exact (as ``scipy.signal.fftconvolve(a, kernel, mode="same")``
    up to rounding) wherever the kernel lies inside the crop, which holds every candidate of
    :func:`vitreous_centre`; a quarter of the zero-padded convolution's transform size.
    """
    shape = arrays[0].shape
    fshape = tuple(sp_fft.next_fast_len(n, True) for n in shape)
    spectrum = _spectrum(kernel, fshape)
    axes = (0, 1, 2)
    crop = tuple(slice(0, n) for n in shape)
    return [sp_fft.irfftn(sp_fft.rfftn(a, fshape, axes=axes) * spectrum, fshape, axes=axes)[crop] for a in arrays]


@functools.lru_cache(maxsize=8)
def _spectrum(kernel: tuple[bytes, float, float], fshape: tuple[int, ...]) -> npt.NDArray[np.complex64]:
    """``rfftn`` at ``fshape`` of the kernel ``_ball(*kernel)`` placed with its centre on voxel 0 (wrapped), read-only."""
    ball = _ball(*kernel)
    placed = np.zeros(fshape, np.float32)
    placed[tuple(slice(0, n) for n in ball.shape)] = ball
    placed = np.roll(placed, [-((n - 1) // 2) for n in ball.shape], axis=(0, 1, 2))
    spectrum = sp_fft.rfftn(placed, fshape, axes=(0, 1, 2))
    spectrum.flags.writeable = False
    return spectrum


@functools.lru_cache(maxsize=8)
def _ball(linear_bytes: bytes, inner_mm: float, outer_mm: float) -> npt.NDArray[np.float32]:
    """Kernel of the voxels whose offset lies in (``inner_mm``, ``outer_mm``] mm (0: a full ball), float32, read-only.

    ``linear_bytes``: the grid's voxel -> mm matrix (3 x 3 float64) as bytes (cached per grid).
    """
    linear = np.frombuffer(linear_bytes, np.float64).reshape(3, 3)
    spacing = np.sqrt((linear**2).sum(axis=0))
    r = np.ceil(outer_mm / spacing).astype(int)
    grid = np.mgrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1].astype(float)
    mm = np.tensordot(linear, grid, axes=1)
    d2 = (mm**2).sum(0)
    inside = d2 <= outer_mm**2
    if inner_mm > 0:
        inside &= d2 > inner_mm**2
    kernel = inside.astype(np.float32)
    kernel.flags.writeable = False
    return kernel


def _distance2(shape: tuple[int, ...], affine: npt.NDArray[np.float64], point: npt.NDArray[np.float64]
               ) -> npt.NDArray[np.float64]:
    """Squared distance in mm from ``point`` of every voxel of a grid (shape ``shape``, voxel -> mm ``affine``)."""
    world = []
    for f in range(3):
        terms = [affine[f, a] * np.arange(shape[a], dtype=float).reshape([-1 if b == a else 1 for b in range(3)])
                 for a in range(3)]
        world.append(terms[0] + terms[1] + terms[2] + affine[f, 3])
    return (world[0] - point[0]) ** 2 + (world[1] - point[1]) ** 2 + (world[2] - point[2]) ** 2
