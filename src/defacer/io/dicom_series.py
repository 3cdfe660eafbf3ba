"""DICOM series in and out: group and sort instances into a :class:`~defacer.volume.Volume`,
and write defaced pixels back instance by instance.

Volume convention for DICOM
---------------------------
``raw`` has shape ``(Columns, Rows, NumSlices)``: ``i`` runs along a row (PixelData x),
``j`` down the rows, ``k`` over slices sorted ascending by ImagePositionPatient projected on
the slice normal (row cosine x column cosine of ImageOrientationPatient), never by file name
or InstanceNumber.  ``affine`` maps ``(i, j, k)`` to RAS+ mm:

* column 0 = row cosine x PixelSpacing[1], column 1 = column cosine x PixelSpacing[0];
* column 2 = (position of the last slice - position of the first) / (K - 1);
* translation = position of the first slice; then LPS is turned into RAS (x and y negated).

Column 2 from the first and last positions keeps gantry-tilted CT exact (the slice stack is
sheared: the affine is not orthogonal) and averages uneven spacing (a warning is logged and
the real positions are kept in ``extra["slice_positions_lps"]``).  ``slope``/``inter`` are
RescaleSlope/RescaleIntercept; when they differ between slices the volume holds float32
physical values instead (``extra["per_slice_scaling"]``) and the writer re-quantises each
slice with its own scaling.

Writing never modifies an input: every input instance is read again, its pixels replaced
(same bits and signedness, clipped), optionally de-identified, and written into a new folder
that appears atomically.  Compressed input is written as Explicit VR Little Endian.

This module gathers the public names; the work is split by job:
:mod:`defacer.io.dicom_files` (reading and writing single files safely),
:mod:`defacer.io.dicom_grouping` (instances grouped into stacks, one chosen),
:mod:`defacer.io.dicom_geometry` (a stack read as a volume with its affine),
:mod:`defacer.io.dicom_write` (defaced pixels written back), and, with the PHI code,
:mod:`defacer.phi.files` (header-only de-identification of files).
"""

from __future__ import annotations

from defacer.io.dicom_files import (
    INCOMPLETE_INSTANCE,
    MAX_SEQUENCE_DEPTH,
    NON_IMAGE_EXTENSIONS,
    NON_IMAGE_NAMES,
    UNREADABLE_SLICE,
    dcmread_any,
    pixel_data_problem,
    prepare_for_storage,
    unreadable_reason,
    write_instance,
)
from defacer.io.dicom_geometry import (
    LPS_TO_RAS,
    MISSING_SLICE_FACTOR,
    TILT_TOLERANCE_DEG,
    UNEVEN_TOLERANCE,
    read_dicom_volume,
)
from defacer.io.dicom_grouping import MAX_FRAMES, FrameRef, Scan, SeriesInfo, find_series, scan, select_series
from defacer.io.dicom_write import EXPLICIT_VR_LITTLE_ENDIAN, NATIVE_LITTLE_ENDIAN, write_dicom_volume
from defacer.phi.files import (  # header-only de-identification lives with the PHI code
    anonymize_files,
    write_deid_mapping,
)

__all__ = [
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "INCOMPLETE_INSTANCE",
    "LPS_TO_RAS",
    "MAX_FRAMES",
    "MAX_SEQUENCE_DEPTH",
    "MISSING_SLICE_FACTOR",
    "NATIVE_LITTLE_ENDIAN",
    "NON_IMAGE_EXTENSIONS",
    "NON_IMAGE_NAMES",
    "TILT_TOLERANCE_DEG",
    "UNEVEN_TOLERANCE",
    "UNREADABLE_SLICE",
    "FrameRef",
    "Scan",
    "SeriesInfo",
    "anonymize_files",
    "dcmread_any",
    "find_series",
    "pixel_data_problem",
    "prepare_for_storage",
    "read_dicom_volume",
    "scan",
    "select_series",
    "unreadable_reason",
    "write_deid_mapping",
    "write_dicom_volume",
    "write_instance",
]
