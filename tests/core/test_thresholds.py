"""defacer.thresholds gives scikit-image's Otsu and triangle thresholds, float for float, on float samples.

defacer.head and defacer.auricle threshold with them instead of ``skimage.filters`` (whose import, with
scikit-image's package, ``skimage.util`` and ``skimage.exposure``, cost ~5 ms of every ``defacer deface``).
"""

from __future__ import annotations

import numpy as np
import pytest
from skimage.filters import threshold_otsu as skimage_otsu
from skimage.filters import threshold_triangle as skimage_triangle

from defacer.head import analyse_head
from defacer.phantom import make_phantom
from defacer.thresholds import threshold_otsu, threshold_triangle


def _samples(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """Float samples: one or two values, normal and Rician-like mixtures, heavy tails, a CT's spikes at -1024,
    float32 and float64, sizes from 1 to 100,000, huge and tiny scales."""
    samples = []
    for k in range(count):
        size = int(rng.integers(1, 100_000)) if k % 7 else int(rng.integers(1, 6))
        kind = k % 5
        if kind == 0:
            values = rng.normal(0, 1, size)
        elif kind == 1:  # air and tissue
            air = np.abs(rng.normal(0, 20, size)) + np.abs(rng.normal(0, 20, size))
            values = np.where(rng.random(size) < rng.uniform(0.2, 0.8), air, rng.normal(400, 80, size))
        elif kind == 2:
            values = rng.standard_cauchy(size)
        elif kind == 3:  # a CT: exact -1024 air, soft tissue, bone
            values = rng.choice([-1024.0, 40.0, 1200.0], size) + rng.normal(0, 15, size) * (rng.random(size) < 0.7)
        else:
            values = rng.choice(rng.normal(0, 1, int(rng.integers(1, 4))), size)
        scale = float(10.0 ** rng.integers(-6, 12))
        values = values * scale
        samples.append(values.astype(np.float32 if k % 3 == 0 else np.float64))
    return samples


@pytest.mark.parametrize(("ours", "theirs"), [(threshold_otsu, skimage_otsu), (threshold_triangle, skimage_triangle)])
def test_the_thresholds_are_skimages_on_random_samples(ours, theirs) -> None:
    refused = 0
    for values in _samples(np.random.default_rng(5), 400):
        try:
            expected = theirs(values, nbins=256)
        except ValueError as err:  # e.g. float32 values too close for 256 bins: refused alike
            with pytest.raises(ValueError, match=str(err)[:30]):
                ours(values, nbins=256)
            refused += 1
            continue
        found = ours(values, nbins=256)
        assert type(found) is type(expected) and found == expected, (values.dtype, values.size, found, expected)
    assert refused < 40


@pytest.mark.parametrize(("ours", "theirs"), [(threshold_otsu, skimage_otsu), (threshold_triangle, skimage_triangle)])
def test_the_thresholds_are_skimages_on_the_phantoms_samples_and_refuse_what_skimage_refuses(ours, theirs) -> None:
    phantom = make_phantom(2.0)
    image = phantom.volume.values(np.float32)
    head = analyse_head(image, (2.0, 2.0, 2.0))
    coarse = np.asarray(image[::2, ::2, ::2], np.float64)
    for values in (coarse.ravel(), np.clip(coarse.ravel(), *np.percentile(coarse, [0.5, 99.5])),
                   coarse[coarse > head.threshold], image.ravel()):
        for nbins in (256, 17):
            assert ours(values, nbins=nbins) == theirs(values, nbins=nbins)
    for bad in (np.array([1.0, np.nan, 3.0]), np.array([0.0, np.inf])):
        with pytest.raises(ValueError):
            theirs(bad, nbins=256)
        with pytest.raises(ValueError):
            ours(bad, nbins=256)
    integers = np.arange(50, dtype=np.int16) ** 2 % 37
    assert ours(integers, nbins=256) == theirs(integers, nbins=256)  # handed to scikit-image
