"""Agreement between a predicted and a reference label map, per feature."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from defacer._typing import Affine, LabelMap
from defacer.labels import FEATURE_LABELS


def dice_per_feature(predicted: LabelMap, reference: LabelMap) -> dict[str, float | None]:
    """Dice coefficient of each feature.

    Parameters
    ----------
    predicted, reference : ndarray, shape (X, Y, Z), integer
        Label maps on the same grid (:mod:`defacer.labels` convention).

    Returns
    -------
    dict
        ``{"eyes": d, "nose": d, "ears": d}``; ``None`` where the feature is absent from both.
    """
    if predicted.shape != reference.shape:
        raise ValueError(f"Label maps differ in shape: {predicted.shape} vs {reference.shape}.")
    scores: dict[str, float | None] = {}
    for name, value in FEATURE_LABELS.items():
        p = predicted == value
        r = reference == value
        total = int(p.sum()) + int(r.sum())
        scores[name] = None if total == 0 else 2.0 * int(np.logical_and(p, r).sum()) / total
    return scores


def centroids_mm(labels: LabelMap, affine: Affine, value: int, max_components: int) -> list[np.ndarray]:
    """World (RAS mm) centroids of the largest ``max_components`` components of one label, largest first."""
    mask = labels == value
    if not mask.any():
        return []
    components, _ = ndimage.label(mask)
    sizes = np.bincount(components.ravel())[1:]
    order = np.argsort(sizes)[::-1][:max_components]
    centres = ndimage.center_of_mass(mask, components, [int(i) + 1 for i in order])
    return [affine[:3, :3] @ np.asarray(c) + affine[:3, 3] for c in centres]


def centroid_errors_mm(predicted: LabelMap, reference: LabelMap, affine: Affine) -> dict[str, float | None]:
    """Mean distance in mm between matched predicted and reference component centroids, per feature.

    Components are matched greedily by nearest centroid; a reference component with no
    predicted partner (or vice versa) makes the feature's error ``inf``.  ``None`` where the
    feature is absent from both maps.
    """
    from defacer.labels import MAX_COMPONENTS

    errors: dict[str, float | None] = {}
    for name, value in FEATURE_LABELS.items():
        ref = centroids_mm(reference, affine, int(value), MAX_COMPONENTS[name])
        pred = centroids_mm(predicted, affine, int(value), MAX_COMPONENTS[name])
        if not ref and not pred:
            errors[name] = None
            continue
        if len(ref) != len(pred):
            errors[name] = float("inf")
            continue
        remaining = list(pred)
        distances = []
        for centre in ref:
            d = [float(np.linalg.norm(centre - other)) for other in remaining]
            best = int(np.argmin(d))
            distances.append(d[best])
            remaining.pop(best)
        errors[name] = float(np.mean(distances))
    return errors
