"""benchmarks/distortion_quality.py: a reference auricle lying partly in the protected region.

No edit may change a voxel deeper than the protection depth, so a reference auricle reaching there
(uih_T1w_dicom: its field cuts the head at the ears, and the cut face is no surface) can never be
changed whole; the benchmark reports which part of each auricle is protected and how much of the
rest changed, so that limit is told apart from an edit that falls short.
"""

from __future__ import annotations

import numpy as np
from benchmark_module import load_benchmark
from truth_detector import TruthDetector

from defacer.labels import Label
from defacer.phantom import make_phantom
from defacer.pipeline import DefaceOptions, deface


def test_the_protected_part_of_a_reference_auricle_is_reported_apart() -> None:
    dq = load_benchmark("distortion_quality")
    made = make_phantom(2.0, seed=3)
    shape = made.labels.shape
    x, y, z = np.meshgrid(*[(np.arange(n) - (n - 1) / 2.0) * 2.0 for n in shape], indexing="ij", sparse=True)
    reference = made.labels.copy()
    # the right ear's reference runs on along its canal 30 mm into the head (x = 47-77 mm, the scalp at 74)
    canal = (x >= 47.0) & (x <= 77.0) & ((y + 2.0) ** 2 + (z + 6.0) ** 2 <= 5.0**2)
    reference[np.broadcast_to(canal, shape)] = Label.EARS
    result = deface(made.volume, TruthDetector(made.labels), DefaceOptions(features=("ears",)))
    record = dq.cheap_metrics(made.volume, result, reference)
    centres = [a.nonzero()[0].mean() for a in dq.reference_auricles(reference)]
    right, left = (0, 1) if centres[0] > centres[1] else (1, 0)
    assert 0.05 < record["auricles_protected"][right] < 0.5  # the canal deeper than 10 mm
    assert record["auricles"][right] < 0.9  # so the auricle as a whole falls short ...
    assert record["auricles_of_reachable"][right] >= 0.95  # ... while all that may change did
    assert record["auricles_protected"][left] == 0.0
    assert record["auricles_of_reachable"][left] == record["auricles"][left]
    assert "of reachable" in dq.format_row("labels", {"name": "phantom", **record})
    # a few voxels of the root in the protected band do not lengthen the line (under 1 % of each auricle)
    assert "of reachable" not in dq.format_row("labels", {"name": "phantom", **record, "auricles_protected": [0.009, 0.0]})
    summary = dq.summarise([{"name": "phantom", **record}])
    assert summary["auricles_at_least_90pct"] == 1
    assert summary["auricles_at_least_90pct_of_reachable"] == 2
