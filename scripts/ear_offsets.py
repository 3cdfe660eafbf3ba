#!/usr/bin/env python
"""Where the ears sit relative to the eyes, measured on the committed reference labels.

For every label map in ``reference_labels/`` (on its scan's own grid and affine, so world mm come
straight from the label file), builds the eye frame of :func:`defacer.detect.frame.eye_frame`
(origin: the eyes' midpoint; x: from one eye to the other; y: the scanner's anterior direction made
orthogonal to x; z = x cross y, up) and prints each ear centroid's offset in it: lateral |x|, and (y, z) in mm and
divided by the distance between the eyes.  The last lines are the means and spreads that
:mod:`defacer.detect.frame` holds (``EAR_OFFSET_MM``, ``EAR_SPREAD_MM``), also
leave-one-head-out (each head's offsets predicted from the other heads' mean) for an honest error.

Only the label maps are read (no image), so this runs in seconds::

    python scripts/ear_offsets.py [--labels reference_labels]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

from defacer.detect.ear_fallback import reference_ear_offsets

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    """Print the ear offsets of every reference label map and their summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, default=REPO / "reference_labels")
    args = parser.parse_args()
    rows = []
    print(f"{'scan':32s} side  |x|mm   y mm   z mm  eyes mm  y/eyes z/eyes")
    for path in sorted(args.labels.glob("*.labels.nii.gz")):
        image = nib.load(str(path))
        labels = np.asarray(image.dataobj, np.uint8)
        name = path.name.removesuffix(".labels.nii.gz")
        for side, lateral, y, z, eyes in reference_ear_offsets(labels, image.affine):
            rows.append((name, side, y, z, eyes))
            print(f"{name:32s} {side:+d}  {lateral:6.1f} {y:6.1f} {z:6.1f} {eyes:7.1f}  {y / eyes:6.3f} {z / eyes:6.3f}")
    names = sorted({r[0] for r in rows})
    yz = np.array([[r[2], r[3]] for r in rows])
    scaled = np.array([[r[2] / r[4], r[3] / r[4]] for r in rows])
    mean_eyes = float(np.mean([r[4] for r in rows]))
    print(f"\n{len(rows)} ears on {len(names)} heads; mean distance between the eyes {mean_eyes:.1f} mm")
    print(f"mm:     mean (y, z) = ({yz[:, 0].mean():.1f}, {yz[:, 1].mean():.1f}), "
          f"sd = ({yz[:, 0].std(ddof=1):.1f}, {yz[:, 1].std(ddof=1):.1f})")
    print(f"scaled: mean (y, z) = ({scaled[:, 0].mean():.3f}, {scaled[:, 1].mean():.3f}) x eyes, "
          f"sd in mm at the mean eye distance = ({scaled[:, 0].std(ddof=1) * mean_eyes:.1f}, "
          f"{scaled[:, 1].std(ddof=1) * mean_eyes:.1f})")
    # leave one head out: each head's ears predicted from the other heads' mean
    for label, values, factor in (("mm", yz, None), ("scaled", scaled, True)):
        errors = []
        for name in names:
            held = np.array([r[0] == name for r in rows])
            mean = values[~held].mean(axis=0)
            for i in np.flatnonzero(held):
                predicted = mean * rows[i][4] if factor else mean
                actual = values[i] * rows[i][4] if factor else values[i]
                errors.append(float(np.linalg.norm(predicted - actual)))
        err = np.array(errors)
        print(f"leave-one-head-out error of the (y, z) prediction, {label}: median {np.median(err):.1f} mm, "
              f"90th percentile {np.percentile(err, 90):.1f} mm, max {err.max():.1f} mm")


if __name__ == "__main__":
    main()
