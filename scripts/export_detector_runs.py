#!/usr/bin/env python
"""Export the runs of ``scripts/train_detector_folds.sh`` to ONNX, each with a card listing its training heads.

Usage: python scripts/export_detector_runs.py RUNS_DIR OUT_DIR

Writes ``OUT_DIR/<run>/detector.onnx`` and ``.json`` for ``main`` and ``fold1`` .. ``fold5``; the
card's ``trained_on`` (read from the run's log) lets ``benchmarks/evaluate_detector.py`` score
each head only with a fold that never saw it.  ``main`` is the model to ship
(``src/defacer/models/detector.onnx``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from defacer.train.export import export_onnx

RUNS = ("main", "fold1", "fold2", "fold3", "fold4", "fold5")

#: Factors on the class probabilities (background, eyes, nose, ears) written into every card: the
#: network under-segments the thin auricle (see docs/model-card.md for how 3 was chosen).
CLASS_WEIGHTS = [1.0, 1.0, 1.0, 3.0]


def main(runs_dir: Path, out_dir: Path) -> None:
    """Export every run found in ``runs_dir``."""
    for name in RUNS:
        checkpoint = runs_dir / name / "best.pt"
        if not checkpoint.is_file():
            print(f"{name}: no {checkpoint}, skipped")
            continue
        lines = (runs_dir / f"{name}.log").read_text().splitlines()
        first = json.loads(next(line for line in lines if line.startswith('{"train"')))
        card = export_onnx(checkpoint, out_dir / name / "detector.onnx",
                           {"trained_on": first["train"], "validated_on": first["validate"],
                            "class_weights": CLASS_WEIGHTS})
        print(f"{name}: best epoch {card['best_epoch']}, validation Dice {card['val_dice']:.3f}, sha256 {card['sha256'][:12]}")


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0)
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
