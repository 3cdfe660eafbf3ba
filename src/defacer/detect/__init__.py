"""Facial-feature detection: anything that turns a head volume into a label map.

The pipeline only knows the :class:`Detector` protocol.  Two kinds exist:

* :class:`defacer.detect.label_file.LabelFileDetector`: a user-supplied label map on the
  scan's grid (``--labels FILE``), for corrections or hand-drawn labels;
* the trained attention U-Net run by onnxruntime (:mod:`defacer.detect.model`), the default
  when its weights ship with the package.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from defacer._typing import Affine, LabelMap


@runtime_checkable
class Detector(Protocol):
    """Finds the eyes, nose and ears in a head volume.

    Attributes
    ----------
    name : str
        Short description for the provenance record.
    weights_sha256 : str or None
        sha256 of the model weights, ``None`` for detectors without weights.
    """

    @property
    def name(self) -> str:
        """Short description for the provenance record."""
        ...

    @property
    def weights_sha256(self) -> str | None:
        """sha256 of the model weights, ``None`` for detectors without weights."""
        ...

    def predict(self, image_ras: np.ndarray, ras_affine: Affine) -> LabelMap:
        """Label the eyes, nose and ears.

        Parameters
        ----------
        image_ras : ndarray, shape (X, Y, Z), float32
            Physical intensities with axes ordered R, A, S (increasing index = towards
            right, anterior, superior); any voxel size and field of view.
        ras_affine : ndarray, shape (4, 4)
            Voxel-to-RAS+ affine of ``image_ras`` (mm).

        Returns
        -------
        ndarray, shape (X, Y, Z), uint8
            Label map in the :mod:`defacer.labels` convention on the same grid.
        """
        ...
