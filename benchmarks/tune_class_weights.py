#!/usr/bin/env python
"""Choose a detector's class weights (factors on the class probabilities) on the heads it trained on.

The weights multiply the network's probabilities before every decision (``class_weights`` in the
model card).  A network trained on feature-centred patches over-segments on a whole box (it learnt
a larger foreground prior), and the thin auricle is under-segmented by whole-box training; the
weights correct both without retraining.  They are chosen on **in-sample** heads only (the
model's own ``trained_on`` list), on the network's box grid, so the held-out evaluation
(``benchmarks/evaluate_detector.py``) stays untouched by the choice.

Example::

    python benchmarks/tune_class_weights.py --cache build/train/cpu2/boxes96.npz \\
        --weights build/train/cpu2/foldA/detector.onnx build/train/cpu2/foldB/detector.onnx

Prints the mean in-sample hard Dice per class for each candidate and the best candidate (mean over
eyes, nose and ears).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from defacer.detect.model import OnnxDetector
from defacer.train.data import load_samples

BACKGROUND = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
FEATURE = (0.5, 1.0, 1.5, 2.0, 3.0)


def _dice(pred: np.ndarray, ref: np.ndarray, value: int) -> float | None:
    p, r = pred == value, ref == value
    total = int(p.sum()) + int(r.sum())
    return None if total == 0 else 2.0 * int((p & r).sum()) / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True, help="box cache written by defacer train --cache")
    parser.add_argument("--weights", type=Path, nargs="+", required=True, help="ONNX models with .json cards")
    args = parser.parse_args()
    samples = {s.name: s for s in load_samples(args.cache)}
    probs: list[tuple[np.ndarray, np.ndarray]] = []
    for weights in args.weights:
        detector = OnnxDetector(weights)
        trained_on = set(json.loads(weights.with_suffix(".json").read_text()).get("trained_on", []))
        for name in sorted(trained_on & samples.keys()):
            s = samples[name]
            probs.append((detector.probabilities(s.image.astype(np.float32), mirror=True), s.labels))
    print(f"{len(probs)} in-sample (model, head) pairs")
    results = []
    for bg, eyes, nose, ears in itertools.product(BACKGROUND, (1.0,), FEATURE, FEATURE):
        w = np.asarray([bg, eyes, nose, ears], np.float32)[:, None, None, None]
        per_class: dict[int, list[float]] = {1: [], 2: [], 3: []}
        for p, ref in probs:
            pred = (p * w).argmax(0)
            for c in (1, 2, 3):
                d = _dice(pred, ref, c)
                if d is not None:
                    per_class[c].append(d)
        means = [float(np.mean(per_class[c])) for c in (1, 2, 3)]
        results.append(((bg, eyes, nose, ears), means, float(np.mean(means))))
    results.sort(key=lambda r: r[2], reverse=True)
    for weights_, means, mean in results[:10]:
        print(f"weights {weights_}: eyes {means[0]:.3f} nose {means[1]:.3f} ears {means[2]:.3f} mean {mean:.3f}")
    current = next(r for r in results if r[0] == (1.0, 1.0, 1.0, 3.0))
    print(f"card default (1, 1, 1, 3): eyes {current[1][0]:.3f} nose {current[1][1]:.3f} ears {current[1][2]:.3f} "
          f"mean {current[2]:.3f}")
    print(json.dumps({"best": list(results[0][0])}))


if __name__ == "__main__":
    main()
