"""Facial-feature detection: anything that turns a head volume into a label map.

The pipeline only knows the :class:`Detector` protocol.  Two kinds exist:

* :class:`defacer.detect.label_file.LabelFileDetector`: a user-supplied label map on the
  scan's grid (``--labels FILE``), for corrections or hand-drawn labels;
* the trained attention U-Net run by onnxruntime (:mod:`defacer.detect.model`), the default
  when its weights ship with the package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from defacer._typing import Affine, LabelMap

if TYPE_CHECKING:
    from defacer.head import HeadModel


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


@runtime_checkable
class HeadModelDetector(Detector, Protocol):
    """A detector that can reuse the caller's head model instead of analysing the head again.

    The pipeline analyses every head (:func:`defacer.head.analyse_head`) for the distortions; a
    detector that needs the same analysis (the ONNX detector's ear fallback) takes it from there.
    """

    def predict_with_head(self, image_ras: np.ndarray, ras_affine: Affine, head: HeadModel | None) -> LabelMap:
        """:meth:`Detector.predict`, with ``head`` the analysis of ``image_ras`` (``None``: made when needed).

        ``head`` must be :func:`defacer.head.analyse_head` of this very image with its RAS spacing.
        """
        ...
