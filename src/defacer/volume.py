"""The in-memory scan: stored voxel values, their scaling and their place in the world.

A :class:`Volume` never touches disk (see :mod:`defacer.io`) and never plots.  The helpers
here move arrays between a file's own axis order and the canonical RAS+ frame by exact
axis permutations and flips, so the way back is lossless.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import nibabel.orientations as nio
import numpy as np
import numpy.typing as npt

from defacer._typing import Affine


@dataclass(frozen=True)
class Volume:
    """A 3D scan as stored in its file.

    Parameters
    ----------
    raw : ndarray, shape (I, J, K)
        Stored voxel values in the file's own axis order and data type (before scaling).
    affine : ndarray, shape (4, 4)
        Maps voxel indices ``(i, j, k, 1)`` to RAS+ world coordinates in mm.
    slope, inter : float
        Physical value = ``raw * slope + inter`` (NIfTI scl_slope/scl_inter, DICOM
        RescaleSlope/RescaleIntercept).  ``1.0`` and ``0.0`` when the file has no scaling.
    format : str
        ``"nifti"``, ``"nrrd"``, ``"mgh"`` or ``"dicom"``: how :func:`defacer.io.save_volume`
        writes it back.
    header : Any
        The format's own header object, carried unchanged to the output.
    extra : dict
        Format-specific details the writer needs (for example the DICOM instances).
    """

    raw: npt.NDArray[Any]
    affine: Affine
    slope: float = 1.0
    inter: float = 0.0
    format: str = "nifti"
    header: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(I, J, K)`` in the file's axis order."""
        i, j, k = self.raw.shape
        return int(i), int(j), int(k)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along the file's axes in mm (column norms of the affine)."""
        return voxel_sizes(self.affine)

    @property
    def axcodes(self) -> str:
        """Nearest orientation code of the voxel axes, e.g. ``"RAS"``, ``"LPS"`` or ``"ASL"``."""
        return "".join(nio.aff2axcodes(self.affine))

    def values(self, dtype: npt.DTypeLike = np.float32) -> npt.NDArray[np.floating]:
        """Physical intensities ``raw * slope + inter`` as a new float array, shape (I, J, K)."""
        return physical(self.raw, self.slope, self.inter, dtype, order="K")

    @classmethod
    def from_nibabel(cls, image: Any, *, max_voxels: int | None = None) -> Volume:
        """The volume of a nibabel ``Nifti1Image``, ``Nifti2Image`` or ``MGHImage`` (the image is not modified).

        Stored values and scaling come from the image's array proxy exactly (an image made in
        memory is stored as :func:`nibabel.save` would store it); the header is copied.  See
        :func:`defacer.io.in_memory.volume_from_nibabel`, which also applies a voxel limit.

        Raises
        ------
        TypeError
            For another kind of object.
        InputImageError
            For an image that is not a usable 3D volume.
        """
        from defacer.io.in_memory import volume_from_nibabel

        return volume_from_nibabel(image, max_voxels=max_voxels)

    def to_nibabel(self) -> Any:
        """This volume as a nibabel image: NIfTI-1/2 (the class it came from) or MGH, same header and stored values.

        Raises
        ------
        TypeError
            For an NRRD or DICOM volume (write those with :func:`defacer.save_volume`).
        """
        from defacer.io.in_memory import volume_to_nibabel

        return volume_to_nibabel(self)

    def with_raw(self, raw: npt.NDArray[Any]) -> Volume:
        """Return a copy of this volume with other stored values (same grid, dtype, header)."""
        if raw.shape != self.raw.shape or raw.dtype != self.raw.dtype:
            message = (
                f"Replacement voxels must keep shape {self.raw.shape} and dtype {self.raw.dtype}, "
                f"got {raw.shape} and {raw.dtype}."
            )
            raise ValueError(message)
        return Volume(raw, self.affine, self.slope, self.inter, self.format, self.header, dict(self.extra))


def voxel_sizes(affine: Affine) -> tuple[float, float, float]:
    """Voxel size along each array axis in mm: the column norms of a voxel-to-world affine, shape (4, 4)."""
    sx, sy, sz = np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))
    return float(sx), float(sy), float(sz)


#: Edge, in voxels along the first and the last axis, of the tiles :func:`physical` converts a 3D array
#: that is not in C order in (each tile's source and copy stay in the cache) ...
CONVERT_TILE = 16
#: ... when it holds at least this many voxels (below, numpy's one copy is as fast).
CONVERT_TILED_VOXELS = 1_000_000


def physical(raw: npt.NDArray[Any], slope: float, inter: float, dtype: npt.DTypeLike,
             order: Literal["K", "C"] = "K") -> npt.NDArray[np.floating]:
    """``raw * slope + inter`` as a new array of ``dtype`` (arithmetic in ``dtype``; ``order`` as :func:`numpy.array`).

    A 3D ``raw`` that is not in C order (a NIfTI's Fortran order, or a view turning it into RAS order)
    asked for in C order, of :data:`CONVERT_TILED_VOXELS` or more, is converted tile by tile (:data:`CONVERT_TILE` voxels along the first and last
    axes, all of the middle one): each value is converted as ``numpy.array`` converts it, and reading one
    layout while writing the other stays within the cache (0.058 -> 0.035 s for a 1 mm head in Fortran
    order).
    """
    if order == "C" and raw.ndim == 3 and not raw.flags.c_contiguous and raw.size >= CONVERT_TILED_VOXELS:
        out = np.empty(raw.shape, dtype=dtype)
        for first in range(0, raw.shape[0], CONVERT_TILE):
            for last in range(0, raw.shape[2], CONVERT_TILE):
                tile = (slice(first, first + CONVERT_TILE), slice(None), slice(last, last + CONVERT_TILE))
                out[tile] = raw[tile]
    else:
        out = np.array(raw, dtype=dtype, order=order)
    if slope != 1.0:
        out *= dtype_cast(slope, dtype)
    if inter != 0.0:
        out += dtype_cast(inter, dtype)
    return out


def dtype_cast(value: float, dtype: npt.DTypeLike) -> Any:
    """Cast a Python scalar to ``dtype`` (keeps float32 arithmetic in float32)."""
    return np.asarray(value, dtype=dtype)[()]


@dataclass(frozen=True)
class Reorientation:
    """An exact mapping between a file's voxel axes and the canonical RAS+ axes.

    Built by :func:`canonical_reorientation`; :meth:`to_ras` and :meth:`from_ras` are exact
    inverses (axis permutations and flips only, never interpolation).
    """

    ornt: npt.NDArray[np.float64]
    shape: tuple[int, int, int]
    ras_affine: Affine

    def to_ras(self, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Reorder an array on the file's grid, shape ``shape``, into RAS+ axis order."""
        return np.ascontiguousarray(nio.apply_orientation(array, self.ornt))

    def from_ras(self, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Reorder an array in RAS+ axis order back onto the file's grid."""
        out = np.ascontiguousarray(self.local_from_ras(array))
        if out.shape[:3] != self.shape:
            message = f"Array of shape {array.shape} does not map back onto the grid {self.shape}."
            raise ValueError(message)
        return out

    def values_to_ras(self, volume: Volume, dtype: npt.DTypeLike = np.float32) -> npt.NDArray[np.floating]:
        """:meth:`Volume.values` of ``volume`` in RAS+ axis order, converted in one copy (no file-order temporary)."""
        return physical(nio.apply_orientation(volume.raw, self.ornt), volume.slope, volume.inter, dtype, order="C")

    def box_from_ras(self, box: tuple[slice, ...]) -> tuple[slice, slice, slice]:
        """The file-grid slices covering a box of the RAS+ array (``slice(start, stop)`` per RAS axis, no step).

        ``array[box]`` in RAS order holds the same voxels as ``file_array[box_from_ras(box)]``, in
        the order :meth:`local_from_ras` gives.
        """
        ras_shape = [0, 0, 0]
        for axis, (target, _) in enumerate(self.ornt):
            ras_shape[int(target)] = self.shape[axis]
        native: list[slice] = []
        for axis, (target, flip) in enumerate(self.ornt):
            start, stop, _ = box[int(target)].indices(ras_shape[int(target)])
            n = self.shape[axis]
            native.append(slice(n - stop, n - start) if flip < 0 else slice(start, stop))
        return native[0], native[1], native[2]

    def local_from_ras(self, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Reorder a box cut from the RAS+ array into file axis order (a view; see :meth:`box_from_ras`)."""
        inverse = nio.ornt_transform(np.array([[0, 1], [1, 1], [2, 1]], dtype=float), self.ornt)
        return nio.apply_orientation(array, inverse)

    def indices_to_ras(self, indices: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
        """File-grid voxel indices, shape (N, 3), as indices of the RAS+ array (same voxels)."""
        out = np.empty_like(indices)
        for axis, (target, flip) in enumerate(self.ornt):
            column = indices[:, axis]
            out[:, int(target)] = self.shape[axis] - 1 - column if flip < 0 else column
        return out

    @property
    def ras_spacing(self) -> tuple[float, float, float]:
        """Voxel size along the R, A and S axes of the reoriented array, in mm."""
        return voxel_sizes(self.ras_affine)


def canonical_reorientation(affine: Affine, shape: tuple[int, int, int]) -> Reorientation:
    """Find the axis permutation and flips that bring a grid closest to RAS+.

    Oblique grids are mapped to their nearest canonical axes; no resampling happens.

    Parameters
    ----------
    affine : ndarray, shape (4, 4)
        Voxel-to-RAS+ affine of the grid.
    shape : tuple of 3 int
        Grid shape ``(I, J, K)``.

    Returns
    -------
    Reorientation
        With the RAS+ affine of the reordered grid.
    """
    ornt = nio.io_orientation(affine)
    transform = nio.inv_ornt_aff(ornt, shape)
    ras_affine = np.asarray(affine @ transform, dtype=np.float64)
    return Reorientation(ornt=ornt, shape=tuple(int(s) for s in shape), ras_affine=ras_affine)  # type: ignore[arg-type]
