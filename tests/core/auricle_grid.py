"""The 2 mm phantom grid the auricle tests place points and shells on (shared by test_auricle*.py)."""

from __future__ import annotations

import numpy as np

from defacer.phantom import HEAD_AXES

#: Voxel size of the phantoms these tests make (``make_phantom(2.0)``), mm.
SPACING = (2.0, 2.0, 2.0)


def world(shape: tuple[int, ...]) -> list[np.ndarray]:
    """RAS mm of each voxel of a 2 mm phantom grid (open grids)."""
    coords = [(np.arange(n) - (n - 1) / 2.0) * 2.0 for n in shape]
    return list(np.meshgrid(*coords, indexing="ij", sparse=True))


def voxel(point_mm: tuple[float, float, float], shape: tuple[int, ...]) -> np.ndarray:
    """The voxel index (float) of a RAS point in mm on that grid."""
    return np.array([p / 2.0 + (n - 1) / 2.0 for p, n in zip(point_mm, shape, strict=True)])


def inside_head(x: np.ndarray, y: np.ndarray, z: np.ndarray, by_mm: float) -> np.ndarray:
    """Inside the head ellipsoid shrunk by ``by_mm`` (grown where negative): deeper than that below the scalp."""
    return sum((c / (ax - by_mm)) ** 2 for c, ax in zip((x, y, z), HEAD_AXES, strict=True)) < 1
