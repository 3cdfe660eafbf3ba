"""Test helper: a detector that returns a fixed RAS label map (the phantom is made in RAS)."""

from __future__ import annotations

import numpy as np


class TruthDetector:
    """Returns a fixed RAS label map (the phantom is made in RAS, so no reordering is needed)."""

    name = "truth"
    weights_sha256 = None

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels

    def predict(self, image_ras: np.ndarray, ras_affine: np.ndarray) -> np.ndarray:
        return self.labels
