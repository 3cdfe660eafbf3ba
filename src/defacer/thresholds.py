"""Otsu's and the triangle threshold of floating-point samples, value for value as scikit-image's.

:mod:`defacer.head` and :mod:`defacer.auricle` threshold float samples with ``skimage.filters``'
``threshold_otsu`` and ``threshold_triangle`` (256 bins); importing that module imports scikit-image's
package, ``skimage.util``, ``skimage.exposure`` and ``lazy_loader`` (~5 ms of every ``defacer deface``).
For floating-point input these functions are a numpy histogram and a few array operations; here they are
the same operations in the same order (scikit-image 0.19-0.26: counts as float32 for Otsu, as integers for
the triangle; bin centres ``(left + right) / 2``), so the thresholds are the same floats.  Integer input
(its own histogram of one bin per value in scikit-image) goes to scikit-image itself.  The test suite
compares the two on random and real samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def _histogram(values: npt.NDArray[np.floating], nbins: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[Any]]:
    """``skimage.exposure.histogram(values.ravel(), nbins, source_range='image')`` of floating-point values:
    counts of ``nbins`` equal bins from the least to the greatest value, and the bins' centres.

    Raises
    ------
    ValueError
        Where a value is not finite (numpy's words).
    """
    counts, edges = np.histogram(values.reshape(-1), bins=nbins, range=None)
    return counts, (edges[:-1] + edges[1:]) / 2.0


def threshold_otsu(values: npt.ArrayLike, nbins: int = 256) -> Any:
    """Otsu's threshold: the bin centre that best splits the values' histogram into two classes.

    Parameters
    ----------
    values : array_like, float
        The sample, any shape.
    nbins : int
        Bins of the histogram.

    Returns
    -------
    numpy scalar
        ``skimage.filters.threshold_otsu(values, nbins)``; the value itself where all are equal.

    Raises
    ------
    ValueError
        Where a value is not finite.
    """
    image = np.asarray(values)
    if not np.issubdtype(image.dtype, np.floating):
        from skimage.filters import threshold_otsu as skimage_otsu

        return skimage_otsu(image, nbins=nbins)
    first = image.reshape(-1)[0]
    if np.all(image == first):
        return first
    counts_int, centres = _histogram(image, nbins)
    counts = counts_int.astype("float32", copy=False)
    below = np.cumsum(counts)  # the lower class's weight and mean, per split
    above = np.cumsum(counts[::-1])[::-1]
    mean_below = np.cumsum(counts * centres) / below
    mean_above = (np.cumsum((counts * centres)[::-1]) / above[::-1])[::-1]
    between = below[:-1] * above[1:] * (mean_below[:-1] - mean_above[1:]) ** 2
    return centres[np.argmax(between)]


def threshold_triangle(values: npt.ArrayLike, nbins: int = 256) -> Any:
    """The triangle threshold: the bin farthest below the line from the histogram's peak to the end of its
    longer tail.

    Parameters
    ----------
    values : array_like, float
        The sample, any shape.
    nbins : int
        Bins of the histogram.

    Returns
    -------
    numpy scalar
        ``skimage.filters.threshold_triangle(values, nbins)``; the first value where all are equal.

    Raises
    ------
    ValueError
        Where a value is not finite.
    """
    image = np.asarray(values)
    if not np.issubdtype(image.dtype, np.floating):
        from skimage.filters import threshold_triangle as skimage_triangle

        return skimage_triangle(image, nbins=nbins)
    hist, centres = _histogram(image, nbins)
    nbins = len(hist)
    peak = np.argmax(hist)
    peak_height = hist[peak]
    low, high = np.flatnonzero(hist)[[0, -1]]
    if low == high:  # one value
        return image.ravel()[0]
    flip = peak - low < high - peak  # the longer tail on the high side: measured from the other end
    if flip:
        hist = hist[::-1]
        low = nbins - high - 1
        peak = nbins - peak - 1
    width = peak - low
    x = np.arange(width)
    y = hist[x + low]
    norm = np.sqrt(peak_height**2 + width**2)
    height_n = peak_height / norm
    width_n = width / norm
    level = np.argmax(height_n * x - width_n * y) + low
    if flip:
        level = nbins - level - 1
    return centres[level]
