"""Agreement between a predicted and a reference label map, per feature."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from defacer._typing import Affine, LabelMap
from defacer.labels import FEATURE_LABELS, MAX_COMPONENTS


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


def feature_matches(predicted: LabelMap, reference: LabelMap, affine: Affine,
                    tolerance_mm: float = 6.0) -> dict[str, dict[str, object]]:
    """Found / missed / extra components per feature, judged at each reference centroid.

    The reference components are the ``MAX_COMPONENTS`` largest of each label (crumbs of a
    reference map are not features).  A reference component (one eye, the nose, one ear) is **found** when a predicted voxel of the
    same label lies within ``tolerance_mm`` of its centroid; a predicted component is **extra**
    when it comes within ``tolerance_mm`` of no reference centroid.  The centroid error of a
    found component is the distance from the reference centroid to the centroid of the nearest
    predicted component of that label.

    Parameters
    ----------
    predicted, reference : ndarray, shape (X, Y, Z), integer
        Label maps on the same grid.
    affine : ndarray, shape (4, 4)
        Voxel -> world mm (distances use the voxel sizes it gives).
    tolerance_mm : float

    Returns
    -------
    dict
        Per feature: ``in_view`` (reference components), ``found``, ``missed``, ``extra`` (ints)
        and ``centroid_mm`` (list of floats, one per found component).
    """
    if predicted.shape != reference.shape:
        raise ValueError(f"Label maps differ in shape: {predicted.shape} vs {reference.shape}.")
    spacing = np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))
    out: dict[str, dict[str, object]] = {}
    for name, value in FEATURE_LABELS.items():
        ref_mask = reference == value
        pred_mask = predicted == value
        ref_lab, n_ref = _largest_components(ref_mask, MAX_COMPONENTS[name])
        pred_lab, n_pred = ndimage.label(pred_mask)
        ref_centres = [affine[:3, :3] @ np.asarray(c) + affine[:3, 3]
                       for c in ndimage.center_of_mass(ref_mask, ref_lab, range(1, n_ref + 1))] if n_ref else []
        pred_centres = [affine[:3, :3] @ np.asarray(c) + affine[:3, 3]
                        for c in ndimage.center_of_mass(pred_mask, pred_lab, range(1, n_pred + 1))] if n_pred else []
        near_pred: set[int] = set()
        found, errors = 0, []
        inv = np.linalg.inv(affine)
        for centre in ref_centres:
            ijk = inv[:3, :3] @ centre + inv[:3, 3]
            radius = np.ceil(tolerance_mm / spacing).astype(int) + 1
            lo = np.maximum(np.floor(ijk).astype(int) - radius, 0)
            hi = np.minimum(np.ceil(ijk).astype(int) + radius + 1, predicted.shape)
            window = pred_lab[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1)
            dist = np.sqrt((((grid - ijk) * spacing) ** 2).sum(-1)) if window.size else np.zeros(0)
            hits = np.unique(window[(window > 0) & (dist <= tolerance_mm)]) if window.size else np.zeros(0, int)
            if hits.size:
                found += 1
                near_pred.update(int(h) for h in hits)
                errors.append(min(float(np.linalg.norm(pred_centres[int(h) - 1] - centre)) for h in hits))
        out[name] = {"in_view": n_ref, "found": found, "missed": n_ref - found,
                     "extra": n_pred - len(near_pred), "centroid_mm": errors}
    return out


def _largest_components(mask: np.ndarray, count: int) -> tuple[np.ndarray, int]:
    """Label image of the ``count`` largest components of ``mask`` (numbered 1..n, largest first)."""
    lab, n = ndimage.label(mask)
    if n <= count:
        return lab, n
    sizes = np.bincount(lab.ravel())[1:]
    keep = np.argsort(sizes)[::-1][:count] + 1
    relabel = np.zeros(n + 1, lab.dtype)
    relabel[keep] = np.arange(1, len(keep) + 1)
    return relabel[lab], len(keep)
