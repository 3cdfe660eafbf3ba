"""defacer.convex_hull fills the same pixels as scikit-image's convex_hull_image, which it stands for.

The auricle rule fills each ear's side view with it (:func:`defacer.auricle.filled_hull`); scikit-image's
function imports skimage.morphology and scipy.spatial, which ``defacer deface`` no longer does.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.morphology import convex_hull_image as skimage_hull

import defacer.auricle
from defacer.convex_hull import convex_hull_image
from defacer.phantom import make_phantom
from defacer.pipeline import deface


def _masks(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """Random 2D masks: sparse dots, smooth blobs, a few pixels, crossing lines, single rows and columns."""
    masks = []
    for k in range(count):
        shape = tuple(int(n) for n in rng.integers(1, 48, 2))
        kind = k % 5
        if kind == 0:
            mask = rng.random(shape) < rng.uniform(0.002, 0.2)
        elif kind == 1:
            mask = ndi.gaussian_filter(rng.random(shape), 2.0) > rng.uniform(0.45, 0.55)
        elif kind == 2:
            mask = np.zeros(shape, dtype=bool)
            mask[tuple(rng.integers(0, shape, (int(rng.integers(1, 5)), 2)).T)] = True
        elif kind == 3:
            mask = np.zeros(shape, dtype=bool)
            mask[int(rng.integers(0, shape[0])), :] = True
            mask[:, int(rng.integers(0, shape[1]))] = True
        else:
            mask = np.zeros(shape, dtype=bool)
            mask[int(rng.integers(0, shape[0])), int(rng.integers(0, shape[1])):] = True
        if mask.any():
            masks.append(mask)
    return masks


def test_the_hull_fills_the_pixels_skimage_fills_on_random_masks() -> None:
    masks = _masks(np.random.default_rng(11), 2500)
    assert len(masks) > 2000
    for mask in masks:
        expected = skimage_hull(mask)
        found = convex_hull_image(mask)
        assert found.dtype == bool and found.shape == mask.shape
        assert np.array_equal(found, expected), mask.astype(int)
    assert convex_hull_image(np.ones((1, 1), dtype=bool)).all()


def test_the_hull_fills_the_pixels_skimage_fills_on_the_side_views_the_auricle_rule_fills(monkeypatch) -> None:
    """The masks the ear distortion hands to the hull while the phantom is defaced (both auricles)."""
    seen: list[np.ndarray] = []
    real = defacer.auricle.filled_hull

    def recording(outline: np.ndarray) -> np.ndarray:
        seen.append(np.array(outline, dtype=bool))
        return real(outline)

    monkeypatch.setattr(defacer.auricle, "filled_hull", recording)
    phantom = make_phantom(3.0, seed=1)

    class PhantomLabels:
        name = "the phantom's labels"
        weights_sha256 = None

        def predict(self, image_ras: np.ndarray, ras_affine: np.ndarray) -> np.ndarray:
            return phantom.labels

    deface(phantom.volume, PhantomLabels())  # the ear distortion delimits each auricle and fills its side views
    assert len([m for m in seen if m.sum() >= 3]) >= 2
    for outline in seen:
        if outline.sum() >= 3:
            assert np.array_equal(convex_hull_image(outline), skimage_hull(outline))


def test_an_empty_mask_gives_an_empty_hull_and_other_dimensions_are_refused() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-image warns for an empty image
        assert np.array_equal(convex_hull_image(np.zeros((4, 5), dtype=bool)), skimage_hull(np.zeros((4, 5))))
    with pytest.raises(ValueError, match="2D"):
        convex_hull_image(np.ones((2, 2, 2), dtype=bool))
