"""Type aliases used across defacer."""

from __future__ import annotations

import os
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

PathLike: TypeAlias = str | os.PathLike[str]
#: (4, 4) float64 matrix mapping voxel indices (i, j, k, 1) to RAS+ world coordinates in mm.
Affine: TypeAlias = npt.NDArray[np.float64]
#: 3D boolean array on a volume's grid.
Mask: TypeAlias = npt.NDArray[np.bool_]
#: 3D uint8 array of :class:`defacer.labels.Label` values on a volume's grid.
LabelMap: TypeAlias = npt.NDArray[np.uint8]
#: 3D float array of physical intensities (after scl_slope/inter or RescaleSlope/Intercept).
FloatArray: TypeAlias = npt.NDArray[np.floating]
