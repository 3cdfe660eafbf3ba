"""Is there an image of anything here?  Neighbouring voxels of any scan of a head go together; noise's do not.

The detector, shown a volume of random values, may still mark eyes, nose and ears in it (a 32 x 32 x 8 series of
uniform noise at 1 x 1 x 2 mm was "defaced", exit 0, on 2 of 6 seeds).  Before it looks, :func:`no_structure`
measures how much each voxel's value follows its neighbour's along each array axis (Pearson's correlation of
the pairs at lag 1, inside the field: pairs touching a frame of one value round it are left out, or noise in a
round field framed by zeros reads 0.5).  Measured (HOSTILE14, 2026-12-05) on every real head in the shared data
(19 people, MR and CT, NIfTI, NRRD and DICOM, thick slices and 0.5 mm voxels included) and the three whole-head
templates: the largest of the three is 0.851 (ixi039, its exact-zero air left out) to 0.997; the synthetic phantom
with 30 % noise 0.31-0.36 (3 mm to 1 mm voxels); uniform noise, framed or not, under 0.03.  Below :data:`NOISE_CORRELATION` on every axis
there is nothing a face could be made of.  Values that are spatially smooth but meaningless (smoothed noise) are
not caught by this rule.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

#: Largest neighbour correlation (along the best axis) read as no structure at all: noise.
NOISE_CORRELATION = 0.2
#: Most voxel pairs sampled per axis (strided along the other two axes); a 460 x 512 x 160 scan takes about 0.1 s.
MAX_PAIRS = 1 << 18


def neighbour_correlation(image: npt.NDArray[np.floating] | npt.NDArray[np.integer]) -> tuple[float, ...]:
    """Correlation of each voxel with its next neighbour, along each axis.

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z)
        Intensities (any units, any axis order); finite values expected.

    Returns
    -------
    tuple of float
        One Pearson correlation per axis, in [-1, 1]; NaN along an axis of fewer than 2 voxels or where the values
        do not vary.  At most :data:`MAX_PAIRS` pairs per axis are used (every voxel along the axis, strided
        across the others); pairs touching the padding round the field (:func:`_padding`) are left out.
    """
    values = np.asarray(image)
    padding = _padding(values)
    result = []
    for axis in range(values.ndim):
        length = values.shape[axis]
        across = max(1, int(np.prod([n for a, n in enumerate(values.shape) if a != axis])))
        if length < 2:
            result.append(math.nan)
            continue
        stride = max(1, math.ceil(math.sqrt(across * (length - 1) / MAX_PAIRS)))
        index: list[slice] = [slice(None, None, stride)] * values.ndim
        index[axis] = slice(None)
        sample = np.moveaxis(values[tuple(index)], axis, 0).astype(np.float64)
        first, second = sample[:-1].ravel(), sample[1:].ravel()
        if padding is not None:  # pairs inside the field only: a frame of one value is no structure of the scan
            inside = (first != padding) & (second != padding)
            first, second = first[inside], second[inside]
        if first.size < 2:
            result.append(math.nan)
            continue
        first = first - first.mean()
        second = second - second.mean()
        norm = math.sqrt(float(np.dot(first, first)) * float(np.dot(second, second)))
        result.append(float(np.dot(first, second)) / norm if norm > 0 and math.isfinite(norm) else math.nan)
    return tuple(result)


#: Smallest share of the voxels the corners' value must fill to be read as padding round the field.
PADDING_SHARE = 0.02
#: About how many voxels (every n-th along each axis) the padding's share is read from.
PADDING_SAMPLE = 1 << 16


def _padding(values: npt.NDArray[np.generic]) -> float | None:
    """The value of the eight corners when they agree and it fills at least :data:`PADDING_SHARE` of the voxels:
    a frame round the field (zero padding, a CT's value outside its round field, an MR's exact-zero air), else
    ``None``.  Noise inside a round field framed by zeros read 0.5 along every axis with the frame counted."""
    if values.ndim != 3 or min(values.shape) < 1:
        return None
    corners = {float(values[i, j, k]) for i in (0, -1) for j in (0, -1) for k in (0, -1)}
    if len(corners) != 1:
        return None
    value = corners.pop()
    if not math.isfinite(value):
        return None
    # the share from an even sample of about PADDING_SAMPLE voxels: a whole-volume comparison made a fresh
    # full-size bool array, whose first touch cost ~0.1 s of a 1 mm head's command (page faults on this VM)
    step = max(1, round((values.size / PADDING_SAMPLE) ** (1 / 3)))
    sample = values[::step, ::step, ::step]
    if float(np.count_nonzero(sample == value)) < PADDING_SHARE * sample.size:
        return None
    return value


def no_structure(image: npt.NDArray[np.floating] | npt.NDArray[np.integer]) -> str | None:
    """Why ``image`` holds no image of a head (noise), or ``None`` where it may.

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z)
        Intensities.

    Returns
    -------
    str or None
        A sentence naming the correlations (for warnings and error messages) where every axis's is below
        :data:`NOISE_CORRELATION`; ``None`` otherwise, and where no axis gives one (a constant volume: other rules
        refuse it).
    """
    correlations = neighbour_correlation(image)
    finite = [c for c in correlations if math.isfinite(c)]
    if not finite or max(finite) >= NOISE_CORRELATION:
        return None
    shown = ", ".join("n/a" if not math.isfinite(c) else f"{c:.2f}" for c in correlations)
    return (f"the scan looks like noise: neighbouring voxels hardly go together (correlation {shown} along its "
            f"three axes; below {NOISE_CORRELATION:g} on every axis is read as noise, every real head tested gives "
            "0.85 or more), so the detector did not look for a face in it")
