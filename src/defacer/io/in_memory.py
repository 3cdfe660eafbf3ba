"""Nibabel images in memory, to and from :class:`~defacer.volume.Volume`, with the stored values exact.

A nibabel image read from disk keeps its stored (unscaled) values behind an array proxy;
:func:`volume_from_nibabel` takes those, with the proxy's scaling, so a voxel the defacer
does not change keeps its stored value.  :func:`volume_to_nibabel` goes back through the same
bytes a NIfTI file would hold (header, then stored values at ``vox_offset``), so the image it
returns is what :func:`nibabel.load` would give for the file :func:`defacer.save_volume`
writes: same class, shape, affine, header fields and on-disk data type.
"""

from __future__ import annotations

import io
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
from nibabel.arraywriters import get_slope_inter, make_array_writer
from nibabel.volumeutils import array_to_file

from defacer.checks import DEFAULT_MAX_VOXELS, check_voxel_count, validate_volume
from defacer.volume import Volume

#: The nibabel image classes defacer can take in memory, and the format each one means.
NIBABEL_CLASSES: tuple[tuple[type, str], ...] = (
    (nib.Nifti2Image, "nifti"),
    (nib.Nifti1Image, "nifti"),
    (nib.MGHImage, "mgh"),
)


def is_nibabel_image(value: object) -> bool:
    """Whether ``value`` is a nibabel image of a class defacer takes (NIfTI-1/2 single file, MGH)."""
    return any(isinstance(value, klass) for klass, _ in NIBABEL_CLASSES)


def _format_of_image(image: Any) -> str:
    for klass, fmt in NIBABEL_CLASSES:
        if isinstance(image, klass):
            return fmt
    raise TypeError(
        f"Expected a nibabel Nifti1Image, Nifti2Image or MGHImage (or a defacer.Volume); found "
        f"{type(image).__module__}.{type(image).__name__}. Convert it first, e.g. "
        "nibabel.Nifti1Image(img.get_fdata(), img.affine), or save it to a file and use defacer.load_volume."
    )


def volume_from_nibabel(image: Any, *, max_voxels: int | None = DEFAULT_MAX_VOXELS,
                        source: str = "the nibabel image") -> Volume:
    """The :class:`Volume` of a nibabel NIfTI-1/2 or MGH image, without modifying the image.

    Parameters
    ----------
    image : nibabel.Nifti1Image, nibabel.Nifti2Image or nibabel.MGHImage
        Read from a file (stored values and scaling taken from its array proxy, exactly) or made
        in memory (its array is the physical values; they are stored the way :func:`nibabel.save`
        would store them in the header's data type).
    max_voxels : int or None
        Refuse an image with more voxels than this (see :func:`defacer.checks.check_voxel_count`).
    source : str
        Names the image in error messages.

    Returns
    -------
    Volume
        Format ``"nifti"`` or ``"mgh"``, with a copy of the image's header (its affine written
        into it), validated as a 3D head volume (trailing axes of length 1 dropped).

    Raises
    ------
    TypeError
        For another kind of object.
    InputImageError
        For an image that is not a usable 3D volume (2D, 4D, too large, NaN voxels, absurd geometry).
    """
    fmt = _format_of_image(image)
    check_voxel_count(tuple(image.shape), source, max_voxels)
    klass = type(image)
    # A fresh image on the same data object: its header carries the image's affine, and the
    # user's image (and its header) are left as they were.  No voxel is read here.
    header = klass(image.dataobj, image.affine, image.header).header
    dataobj = image.dataobj
    if nib.is_proxy(dataobj):
        raw = np.asarray(dataobj.get_unscaled())
        slope = float(getattr(dataobj, "slope", 1.0))
        inter = float(getattr(dataobj, "inter", 0.0))
    else:
        raw, slope, inter = _stored_values(np.asanyarray(dataobj), header, fmt)
    if not np.isfinite(slope) or slope == 0:
        slope = 1.0
    if not np.isfinite(inter):
        inter = 0.0
    if fmt == "nifti" and (slope, inter) != (1.0, 0.0):
        header.set_slope_inter(slope, inter)
    volume = Volume(raw=raw, affine=np.asarray(image.affine, dtype=np.float64), slope=slope, inter=inter,
                    format=fmt, header=header, extra={"image_class": klass.__name__, "raw_shape": tuple(raw.shape)})
    return validate_volume(volume, source=source, strict=True)


def _stored_values(data: npt.NDArray[Any], header: Any, fmt: str) -> tuple[npt.NDArray[Any], float, float]:
    """Stored values and scaling of an in-memory array, as :func:`nibabel.save` would store it."""
    disk = header.get_data_dtype()
    if data.dtype == disk:
        return np.array(data), 1.0, 0.0
    if fmt == "mgh":  # MGH has no scaling: nibabel casts
        return np.asarray(data).astype(disk), 1.0, 0.0
    writer = make_array_writer(data, disk, header.has_data_slope, header.has_data_intercept)
    slope, inter = get_slope_inter(writer)
    buffer = io.BytesIO()
    writer.to_fileobj(buffer, order="F")
    raw = np.frombuffer(buffer.getvalue(), dtype=disk).reshape(data.shape, order="F").copy()
    return raw, float(slope), float(inter)


def fresh_nifti_header(volume: Volume) -> Any:
    """A new NIfTI-1 header for a volume made without one (``Volume(raw, affine)``).

    The affine goes into the sform (code 2, "aligned"), as :class:`nibabel.Nifti1Image` does,
    units are mm, the data type is that of ``volume.raw`` and the scaling ``volume.slope`` and
    ``volume.inter``.
    """
    header = nib.Nifti1Image(volume.raw, volume.affine).header.copy()
    header.set_xyzt_units("mm")
    if (volume.slope, volume.inter) != (1.0, 0.0):
        header.set_slope_inter(volume.slope, volume.inter)
    return header


def volume_to_nibabel(volume: Volume) -> Any:
    """A nibabel image holding ``volume``: NIfTI-1/2 for ``"nifti"``, MGH for ``"mgh"``.

    A NIfTI image is built from the bytes of the NIfTI file defacer would write (the header as
    stored, then the stored values), so its array proxy holds the exact stored values and its
    scaling; its class is that of the image the volume came from (NIfTI-1 for a volume made
    without a header).  An MGH image is likewise read back from the bytes of its file.

    Raises
    ------
    TypeError
        For an NRRD or DICOM volume, which have no nibabel image class (save them with
        :func:`defacer.save_volume`).
    """
    raw = volume.raw.reshape(volume.extra.get("raw_shape", volume.raw.shape))
    if volume.format == "mgh":
        header = volume.header.copy() if volume.header is not None else None
        return nib.MGHImage.from_bytes(nib.MGHImage(raw, volume.affine, header).to_bytes())
    if volume.format != "nifti":
        raise TypeError(
            f"A {volume.format.upper()} volume has no nibabel image class; write it with "
            "defacer.save_volume(volume, path) in its own format."
        )
    header = volume.header.copy() if volume.header is not None else fresh_nifti_header(volume)
    klass = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    if header.get_data_shape() != raw.shape:
        header.set_data_shape(raw.shape)
    buffer = io.BytesIO()
    header.write_to(buffer)  # sets vox_offset when it is 0 (a header taken from an image in memory)
    array_to_file(raw, buffer, header.get_data_dtype(), offset=int(header.get_data_offset()),
                  intercept=0.0, divslope=1.0, order="F")
    return klass.from_bytes(buffer.getvalue())
