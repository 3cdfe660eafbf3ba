"""Validation of an input volume at the boundary, with messages that say what to do."""

from __future__ import annotations

import numpy as np

from defacer.errors import InputImageError, TooManyVoxelsError
from defacer.options import DEFAULT_MAX_VOXELS  # noqa: F401  # re-exported; with the options: read without numpy
from defacer.volume import Volume

#: Accepted voxel sizes in mm; outside this range the affine is considered absurd.
MIN_VOXEL_MM = 0.05
MAX_VOXEL_MM = 20.0
#: Smallest grid accepted along any axis (a head needs some extent in all three).
MIN_AXIS_VOXELS = 8
#: Working memory defacing needs per voxel, in bytes (float copies, label maps), for messages.
BYTES_PER_VOXEL = 16


def check_voxel_count(shape: tuple[int, ...], source: object, max_voxels: int | None) -> None:
    """Refuse a declared shape with more than ``max_voxels`` voxels, before anything is allocated.

    Parameters
    ----------
    shape : tuple of int
        Shape declared by the file's header (every axis, 4D included).
    source : path or str
        Shown in the message.
    max_voxels : int or None
        The limit; ``None`` means no limit.

    Raises
    ------
    InputImageError
        Naming the declared size, the limit, the memory it stands for and how to raise it.
    """
    count = 1
    for n in shape:
        count *= max(int(n), 0)
    if max_voxels is not None and count > max_voxels:
        raise TooManyVoxelsError(
            f"'{source}' declares {' x '.join(str(int(n)) for n in shape)} = {count:,} voxels, more than the limit of "
            f"{max_voxels:,} voxels (defacing needs about {BYTES_PER_VOXEL} bytes of memory per voxel, "
            f"{count * BYTES_PER_VOXEL / 1e9:.1f} GB here). If the scan is genuine and the machine has the memory, "
            "raise the limit (max_voxels= in defacer.io.load_volume, or --max-voxels where the command offers it).",
            count=count, limit=max_voxels,
        )


#: Largest physical intensity defacer computes with.  It works in float32 (at most 3.4e38), and a mean or median
#: of two values above half of that is already infinite: a float32 image reaching 2e38 was written with NaN and
#: infinite voxels in its eye cover.  1e37 leaves room for that arithmetic (no real scan comes near it).
MAX_INTENSITY = 1e37


def check_scaling(raw: np.ndarray, slope: float, inter: float, source: str, *, strict: bool = True) -> None:
    """Refuse an intensity scaling that gives no usable physical values.

    Parameters
    ----------
    raw : ndarray
        Stored (finite, real) voxel values.
    slope, inter : float
        Physical value = ``raw * slope + inter``.
    source : str
        Shown in messages.
    strict : bool
        Also refuse physical values beyond :data:`MAX_INTENSITY` (defacer works in float32, where they, or its
        arithmetic on them, become infinite).

    Raises
    ------
    InputImageError
        For a NaN, infinite or zero slope, a NaN or infinite intercept, or (``strict``) physical
        values beyond :data:`MAX_INTENSITY`.
    """
    slope, inter = float(slope), float(inter)
    if not (np.isfinite(slope) and np.isfinite(inter)) or slope == 0:
        raise InputImageError(
            f"'{source}' has the intensity scaling slope {slope:g}, intercept {inter:g} (physical value = stored value "
            "x slope + intercept); expected finite numbers and a slope that is not 0. Fix the scaling (NIfTI "
            "scl_slope/scl_inter, DICOM RescaleSlope/RescaleIntercept, or a Volume's slope/inter) first."
        )
    if not strict or raw.size == 0:
        return
    ends = np.array([np.min(raw), np.max(raw)], dtype=np.float64) * slope + inter
    largest = float(np.max(np.abs(ends)))
    if not largest <= MAX_INTENSITY:
        raise InputImageError(
            f"'{source}' has intensities up to {largest:.3g} (stored values {float(np.min(raw)):.3g} to "
            f"{float(np.max(raw)):.3g}, x slope {slope:g} + intercept {inter:g}); defacer computes in 32-bit floats "
            f"and accepts intensities up to {MAX_INTENSITY:.0e}. The values or the scaling are probably wrong (e.g. a "
            "slope in the wrong units); rescale the image first (for example divide it by a power of ten) and keep a note of it."
        )


def validate_volume(volume: Volume, *, source: str, strict: bool = True) -> Volume:
    """Check that ``volume`` is a usable 3D head volume; squeeze trailing singleton axes.

    Parameters
    ----------
    volume : Volume
        As read from ``source``.
    source : str
        Shown in messages.
    strict : bool
        Also refuse NaN/inf voxels and absurd voxel sizes (otherwise only impossible input is refused).

    Returns
    -------
    Volume
        The same volume, with shape ``(I, J, K)``.

    Raises
    ------
    InputImageError
        For 2D, 4D, empty, NaN/inf or geometrically absurd input, or an unusable intensity scaling
        (:func:`check_scaling`).
    """
    raw = volume.raw
    shape = raw.shape
    while raw.ndim > 3 and raw.shape[-1] == 1:
        raw = raw[..., 0]
    if raw.ndim == 2 or (raw.ndim == 3 and 1 in raw.shape):
        raise InputImageError(
            f"'{source}' is a 2D image (shape {shape}); defacer needs a 3D head volume. "
            "For a DICOM series pass the folder holding all slices, not one file."
        )
    if raw.ndim > 3:
        raise InputImageError(
            f"'{source}' is {raw.ndim}D (shape {shape}); defacer needs one 3D volume. Extract the volume to deface "
            "first (for example `fslroi in out 0 1` or nibabel's `image.slicer[..., 0]`), deface it, and apply its "
            "mask to the other volumes."
        )
    if raw.ndim != 3:
        raise InputImageError(f"'{source}' has shape {shape}; expected a 3D volume.")
    if raw.size == 0 or min(raw.shape) < 1:
        raise InputImageError(f"'{source}' holds no voxels (shape {shape}).")
    if sorted(raw.shape)[1] < MIN_AXIS_VOXELS:
        raise InputImageError(
            f"'{source}' has shape {shape}: too small to be a head volume (at least {MIN_AXIS_VOXELS} voxels along "
            "two axes are needed)."
        )
    affine = np.asarray(volume.affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InputImageError(f"'{source}' has a non-finite or malformed affine:\n{affine}\nFix the header's geometry.")
    with np.errstate(over="ignore", invalid="ignore"):  # entries of 1e300: infinite voxel sizes, refused below
        det = float(np.linalg.det(affine[:3, :3]))
        zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if abs(det) < 1e-9:
        raise InputImageError(
            f"'{source}' has a singular affine (determinant {det:.3g}): its voxel axes do not span 3D space. "
            "Fix the header's qform/sform or space directions."
        )
    if strict and (zooms.min() < MIN_VOXEL_MM or zooms.max() > MAX_VOXEL_MM):
        raise InputImageError(
            f"'{source}' has voxel sizes {np.round(zooms, 4).tolist()} mm; expected between {MIN_VOXEL_MM} and "
            f"{MAX_VOXEL_MM} mm. The header's geometry is probably wrong (e.g. units in m or µm); fix it first."
        )
    if np.issubdtype(raw.dtype, np.floating):
        finite = np.isfinite(raw)
        if strict and not finite.all():
            bad = int(raw.size - np.count_nonzero(finite))
            raise InputImageError(
                f"'{source}' has {bad} NaN or infinite voxel(s). defacer cannot estimate skin and air intensities "
                "from them; replace them first (e.g. numpy.nan_to_num) and keep a note of it."
            )
    if np.iscomplexobj(raw):
        raise InputImageError(
            f"'{source}' stores complex voxels ({raw.dtype}); defacer needs real intensities. Deface the magnitude "
            "image (e.g. numpy.abs of the data) and share that instead: the face would be found in the real part "
            "only, and the rest of the complex data would keep it."
        )
    if not np.issubdtype(raw.dtype, np.number):
        raise InputImageError(f"'{source}' stores {raw.dtype} voxels; expected numbers (RGB images are not supported).")
    check_scaling(raw, volume.slope, volume.inter, source, strict=strict)
    if raw is not volume.raw:
        extra = dict(volume.extra)
        extra.setdefault("raw_shape", tuple(volume.raw.shape))
        return Volume(raw, affine, volume.slope, volume.inter, volume.format, volume.header, extra)
    return volume
