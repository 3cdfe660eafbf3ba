"""A detector that returns a label map supplied by the user (``--labels FILE``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from defacer._typing import Affine, LabelMap, PathLike
from defacer.errors import LabelMapError
from defacer.files import file_sha256
from defacer.labels import feature_label_values
from defacer.volume import Volume, canonical_reorientation


class LabelMapDetector:
    """Serve a label map on the same voxel grid as the scan (given as a :class:`Volume`).

    Parameters
    ----------
    volume : Volume
        The label map (0 background, 1 eyes, 2 nose, 3 ears) with the scan's affine.
    name : str
        Short description for the provenance record.
    source : str
        Names the label map in error messages.
    sha256 : str, optional
        sha256 of the label map's file or bytes, for the provenance record.

    Raises
    ------
    LabelMapError
        For values that are not integers 0-3.
    """

    def __init__(self, volume: Volume, *, name: str = "label map", source: str = "given",
                 sha256: str | None = None) -> None:
        self.volume = volume
        self.source = source
        self.labels = feature_label_values(volume.values(np.float64), source)
        self.name = name
        self.weights_sha256: str | None = None
        self.sha256 = sha256

    def predict(self, image_ras: np.ndarray, ras_affine: Affine) -> LabelMap:
        """Return the labels reoriented to RAS+, after checking the grids agree.

        Raises
        ------
        LabelMapError
            If the label map's shape or affine differ from the scan's.
        """
        reorientation = canonical_reorientation(self.volume.affine, self.volume.shape)
        labels_ras = reorientation.to_ras(self.labels)
        if labels_ras.shape != image_ras.shape:
            raise LabelMapError(
                f"The label map {self.source} has shape {self.volume.shape} and the scan another grid "
                f"(RAS shape {image_ras.shape} vs {labels_ras.shape}); the label map must be on the scan's own grid."
            )
        if not np.allclose(reorientation.ras_affine, ras_affine, atol=1e-3):
            raise LabelMapError(
                f"The label map {self.source} is on a different voxel grid from the scan (affines differ by up to "
                f"{np.abs(reorientation.ras_affine - ras_affine).max():.3g} mm). Resample it onto the scan first."
            )
        return labels_ras


class LabelFileDetector(LabelMapDetector):
    """Serve a label map read from a file on the same voxel grid as the scan.

    Parameters
    ----------
    path : path-like
        NIfTI, NRRD or MGZ label map (0 background, 1 eyes, 2 nose, 3 ears).
    data_files : {"beside", "none", "anywhere"}
        Which detached NRRD data files may be read (see :func:`defacer.io.load_volume`).
    """

    def __init__(self, path: PathLike, *, data_files: str = "beside") -> None:
        from defacer.io import load_volume

        self.path = Path(path)
        try:
            volume = load_volume(self.path, strict=False, data_files=data_files)
        except Exception as err:
            raise LabelMapError(f"Could not read the label map '{path}': {err}") from err
        sha = file_sha256(self.path) if self.path.is_file() else None
        super().__init__(volume, name=f"label file {self.path.name}", source=f"'{path}'", sha256=sha)
