"""One DICOM image stack read as a :class:`~defacer.volume.Volume`: pixels, slice order and affine.

See :mod:`defacer.io.dicom_series` for the volume convention (axes, affine, tilt, scaling).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from defacer._typing import PathLike
from defacer.checks import DEFAULT_MAX_VOXELS, check_voxel_count
from defacer.errors import DicomSeriesError, shown
from defacer.io.dicom_files import (
    dcmread_any,
    encapsulated_frames_problem,
    one_instance_twice,
    refuse_one_instance_twice,
    same_file,
)
from defacer.io.dicom_grouping import FrameRef, floats, scan, select_series
from defacer.volume import Volume

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

#: LPS (DICOM patient coordinates) to RAS+.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Relative deviation of slice gaps from their mean above which spacing counts as uneven.
UNEVEN_TOLERANCE = 0.01
#: Angle (degrees) between the slice vector and the normal above which the stack is reported as tilted.
TILT_TOLERANCE_DEG = 0.5
#: A gap this many times the median gap suggests missing slices.
MISSING_SLICE_FACTOR = 1.5
#: PhotometricInterpretation values whose single sample per pixel is a grey intensity.
GREY_PHOTOMETRIC = frozenset({"MONOCHROME1", "MONOCHROME2"})


def _decode(path: Path) -> tuple[Dataset, npt.NDArray[Any]]:
    """Read one instance with pixels; frames first: shape (F, Rows, Columns)."""
    from pydicom.errors import InvalidDicomError

    try:
        ds = dcmread_any(path)
        problem = encapsulated_frames_problem(ds)
        pixels = None if problem else ds.pixel_array
    except InvalidDicomError as err:  # damaged beyond its header (an element longer than the file), or too large
        raise DicomSeriesError(f"'{path}' cannot be read: {err} (nothing was written).") from err
    except (EOFError, OSError) as err:
        raise DicomSeriesError(f"'{path}' is truncated or unreadable ({err}). Re-export the series.") from err
    except (ValueError, AttributeError, KeyError) as err:
        raise DicomSeriesError(
            f"The pixel data of '{path}' cannot be decoded: {err}. The file may be truncated or missing pixel data."
        ) from err
    except (NotImplementedError, RuntimeError) as err:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "?")
        raise DicomSeriesError(
            f"'{path}' uses transfer syntax {syntax!s} ({getattr(syntax, 'name', '')}) that this installation cannot "
            "decode. Install the JPEG decoders: pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg "
            f"(details: {err})"
        ) from err
    if pixels is None:
        raise DicomSeriesError(f"'{path}' cannot be decoded: {problem}. Re-export the series; nothing was written.")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise DicomSeriesError(f"'{path}' is a colour image (SamplesPerPixel {ds.SamplesPerPixel}); defacer needs grey MR/CT.")
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric and photometric not in GREY_PHOTOMETRIC:
        # PALETTE COLOR: one sample per pixel, but an index into a colour table, not an intensity (HOSTILE16: such a
        # series was read as intensities, its head and air told apart on indices).
        raise DicomSeriesError(
            f"'{path}' has PhotometricInterpretation {_shown_value(photometric)}: its pixel values are "
            f"{'indices into a colour table' if photometric == 'PALETTE COLOR' else 'no grey intensities'}, not "
            "intensities, and defacer needs grey MR/CT (MONOCHROME1 or MONOCHROME2). Export the series as greyscale "
            "(nothing was written)."
        )
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames == 1 and pixels.ndim == 2:
        pixels = pixels[None]
    return ds, pixels


def _mm(value: float) -> str:
    """A position for a message: 3 decimals, or 6 significant digits beyond a kilometre (a damaged 1e308 printed with
    3 decimals was a 309-digit number)."""
    return f"{value:.3f}" if abs(value) < 1e6 else f"{value:.6g}"


def _check_spacing(projections: npt.NDArray[np.float64], source: str,
                   paths: Sequence[Path] | None = None) -> list[str]:
    """Refuse slices at one position; warn about uneven spacing.  ``paths``: each slice's file, in the same order
    (two at one position that are one file twice are named as such)."""
    warnings: list[str] = []
    gaps = np.diff(projections)
    if gaps.size == 0:
        return warnings
    if np.any(gaps < 1e-3):
        dup = int(np.argmin(gaps))
        if paths is not None and same_file(paths[dup], paths[dup + 1]):
            # a copy or a link of one file beside it (IM0001.dcm and 'IM0001 (1).dcm'): the advice to split the
            # series into volumes was wrong (HOSTILE25)
            raise DicomSeriesError(one_instance_twice(source, shown(paths[dup]), shown(paths[dup + 1]), True))
        raise DicomSeriesError(
            f"'{source}' has two slices at the same position ({_mm(projections[dup])} mm along the slice normal): "
            "the series holds several volumes (echoes, time points, repeats). Split it into one folder per volume."
        )
    mean = (projections[-1] - projections[0]) / gaps.size
    median = float(np.median(gaps))
    if np.max(np.abs(gaps - mean)) > UNEVEN_TOLERANCE * mean:
        text = (f"uneven slice spacing in '{source}': gaps from {gaps.min():.3f} to {gaps.max():.3f} mm; the affine "
                f"uses the mean spacing {mean:.3f} mm from the first to the last slice (positions in between are "
                "approximate, pixels are never resampled)")
        if gaps.max() > MISSING_SLICE_FACTOR * median:
            text += f"; gaps above {MISSING_SLICE_FACTOR} x the median {median:.3f} mm suggest missing slices"
        warnings.append(text)
        logger.warning(text)
    return warnings


def read_dicom_volume(path: PathLike | Sequence[PathLike], series: str | None = None, *,
                      max_voxels: int | None = DEFAULT_MAX_VOXELS) -> Volume:
    """Read one DICOM image series as a :class:`Volume` (format ``"dicom"``).

    Parameters
    ----------
    path : path-like or sequence of path-like
        A folder (searched recursively; non-DICOM files are skipped with a warning), one
        file of a multi-frame instance, or a list of files.
    series : str, optional
        Which stack when there are several: its key/SeriesInstanceUID, SeriesNumber, or the
        1-based index shown in the error message.
    max_voxels : int or None
        Refuse a stack of more voxels than this (Columns x Rows x slices, every frame of a
        multi-frame file counted), from the headers, before any pixel data is read (default
        :data:`defacer.checks.DEFAULT_MAX_VOXELS`, 512^3); ``None`` removes the limit.

    Returns
    -------
    Volume
        ``raw`` shape (Columns, Rows, Slices), stored values (or float32 physical values when
        the scaling differs between slices); ``affine`` voxel -> RAS+ mm; ``header`` the first
        slice's dataset without pixels; ``extra`` with ``frames`` (:class:`FrameRef` per
        slice, in k order), ``slice_positions_lps`` (K, 3), ``per_slice_scaling``,
        ``series_key``, ``source_root``, ``warnings``, ``gantry_tilt_deg``, ``skipped``.

    Raises
    ------
    DicomSeriesError
        No image series, several without ``series``, inconsistent geometry, duplicate
        positions, undecodable or truncated pixel data, slices that differ in pixel format,
        FrameOfReferenceUID, Modality or PhotometricInterpretation.
    InputImageError
        The stack declares more than ``max_voxels`` voxels.
    """
    source = str(path) if isinstance(path, str | os.PathLike) else f"{len(path)} files"
    found = scan(path)
    if found.damaged:
        listing = "\n  ".join(f"{p}: {why}" for p, why in found.damaged[:10])
        raise DicomSeriesError(
            f"{len(found.damaged)} DICOM file(s) in '{source}' cannot be read, so the series would be incomplete:\n"
            f"  {listing}\nRe-export or remove them (nothing was written)."
        )
    info = select_series(found.series, series, source)
    # a file too large to read is refused with its stack; another stack's is left out unread, as its other files
    oversize = [(p, why) for p, why in found.oversize if p in set(info.files)]
    if oversize:
        listing = "\n  ".join(f"{p}: {why}" for p, why in oversize[:10])
        raise DicomSeriesError(
            f"{len(oversize)} DICOM file(s) in '{source}' cannot be read, so the series would be incomplete:\n"
            f"  {listing}\nRe-export or remove them (nothing was written)."
        )
    # From the headers alone, before a pixel is decoded: the memory the stack would take.
    check_voxel_count((info.columns, info.rows, len(info.frames)), source, max_voxels)
    # one SOP Instance UID in two files (a copy, a link, a re-export beside the first): both were written into the
    # defaced series, of which an archive keeps one or refuses the series; from the headers already read
    refuse_one_instance_twice(source, info.files, enumerate(info.instances))
    frames = list(info.frames)
    if not info.orientation:
        raise DicomSeriesError(
            f"Series {info.key} in '{source}' has no ImageOrientationPatient/ImagePositionPatient, so its slices "
            "cannot be placed in space. defacer needs cross-sectional images (MR, CT)."
        )
    row_cos = np.asarray(info.orientation[:3], dtype=np.float64)
    col_cos = np.asarray(info.orientation[3:], dtype=np.float64)
    normal = np.cross(row_cos, col_cos)
    positions = np.asarray([f.position for f in frames], dtype=np.float64)
    order = np.argsort(positions @ normal, kind="stable")
    frames = [frames[i] for i in order]
    positions = positions[order]
    warnings = _check_spacing(positions @ normal, source, [f.path for f in frames])

    by_file: dict[Path, list[tuple[int, FrameRef]]] = defaultdict(list)
    for k, ref in enumerate(frames):
        by_file[ref.path].append((k, ref))
    raw: npt.NDArray[Any] | None = None
    header = None
    spacing_yx = None
    meanings: dict[Path, tuple[str, ...]] = {}
    for file, members in by_file.items():
        ds, pixels = _decode(file)
        meanings[file] = _meaning(ds)
        if header is None:
            header = ds
            spacing_yx = floats(_pixel_spacing(ds), 2, "PixelSpacing", file)
            raw = np.empty((info.columns, info.rows, len(frames)), dtype=pixels.dtype)
        elif pixels.dtype != raw.dtype:  # type: ignore[union-attr]
            raise DicomSeriesError(
                f"'{file}' stores {pixels.dtype} pixels but other slices store {raw.dtype}; "  # type: ignore[union-attr]
                "the series mixes pixel formats (BitsAllocated or PixelRepresentation differ: its stored values would "
                "be read as the others'). Re-export the series, or move the files of the other format to a folder of "
                "their own (nothing was written)."
            )
        if ds is not header:
            _check_same_spacing(ds, file, spacing_yx)  # type: ignore[arg-type]
        if pixels.shape[1:] != (info.rows, info.columns):
            raise DicomSeriesError(f"'{file}' has {pixels.shape[1:]} pixels; the series has {(info.rows, info.columns)}.")
        for k, ref in members:
            raw[:, :, k] = pixels[ref.frame or 0].T  # type: ignore[index]
    assert raw is not None and header is not None and spacing_yx is not None
    _check_same_meaning(meanings)
    inverted = None
    if str(header.get("PhotometricInterpretation", "") or "").strip().upper() == "MONOCHROME1":
        if str(header.get("Modality", "") or "").strip().upper() == "CT":
            # Hounsfield units mean the same whichever way they are shown: a CT's rescaled values are its physics
            # (air about -1000), read as stored (a CT turned instead read its air as +3000, found nothing to change).
            logger.info("'%s' is a MONOCHROME1 CT: its values are Hounsfield units whatever the display, read as "
                        "stored", source)
        else:
            raw, inverted = as_displayed(raw, header, source)

    _check_on_one_line(positions, normal, frames, spacing_yx)
    scalings = [(f.slope, f.inter) for f in frames]
    per_slice = len(set(scalings)) > 1
    slope, inter = scalings[0]
    if per_slice:
        physical = raw.astype(np.float32)
        for k, (s, i) in enumerate(scalings):
            physical[:, :, k] = physical[:, :, k] * np.float32(s) + np.float32(i)
        raw, slope, inter = physical, 1.0, 0.0

    lps = np.eye(4)
    lps[:3, 0] = row_cos * spacing_yx[1]
    lps[:3, 1] = col_cos * spacing_yx[0]
    if len(frames) > 1:
        lps[:3, 2] = (positions[-1] - positions[0]) / (len(frames) - 1)
    else:
        lps[:3, 2] = normal * float(header.get("SliceThickness", 1.0) or 1.0)
    lps[:3, 3] = positions[0]
    affine = LPS_TO_RAS @ lps
    slice_dir = lps[:3, 2] / np.linalg.norm(lps[:3, 2])
    tilt = float(np.degrees(np.arccos(np.clip(abs(slice_dir @ normal), 0.0, 1.0))))
    if tilt > TILT_TOLERANCE_DEG:
        logger.info("'%s': slices are sheared by %.2f degrees (gantry tilt); the affine keeps the shear, "
                    "pixels are not resampled", source, tilt)
    if "PixelData" in header:
        del header["PixelData"]
    root = Path(path) if isinstance(path, str | os.PathLike) else Path(os.path.commonpath([str(p) for p in path]))
    extra = {
        "frames": tuple(frames),
        "slice_positions_lps": positions,
        "per_slice_scaling": tuple(scalings) if per_slice else None,
        "series_key": info.key,
        "source_root": root if root.is_dir() else root.parent,
        "warnings": tuple(warnings),
        "gantry_tilt_deg": tilt,
        "skipped": found.skipped,
        "monochrome1_range": inverted,
    }
    return Volume(raw, affine, float(slope), float(inter), "dicom", header, extra)


def _check_on_one_line(positions: npt.NDArray[np.float64], normal: npt.NDArray[np.float64], frames: Sequence[FrameRef],
                       spacing_yx: tuple[float, ...]) -> None:
    """Refuse a slice that lies beside the line the others lie on (its ImagePositionPatient moved within its plane).

    The affine places slice k at the first slice's position plus k steps towards the last (a gantry tilt is such a
    line, oblique to the slices' normal).  A slice moved within its own plane is stacked as if it were not: its
    pixels lie on the wrong grid, its part of the face where defacing does not reach.  The in-plane part of each
    position is fitted as a straight line of its distance along the normal; a slice more than one pixel (at least
    0.5 mm) off it is refused.

    Parameters
    ----------
    positions : ndarray, shape (K, 3)
        ImagePositionPatient of each slice (LPS mm), in stack order.
    normal : ndarray, shape (3,)
        The slices' normal (unit, LPS).
    frames : sequence of FrameRef
        The slices, in the same order (to name the file).
    spacing_yx : tuple of float
        PixelSpacing (row, column spacing, mm).
    """
    if len(positions) < 3:
        return
    along = positions @ normal
    inplane = positions - along[:, None] * normal[None, :]
    design = np.stack([np.ones_like(along), along - along.mean()], axis=1)
    fit, *_ = np.linalg.lstsq(design, inplane, rcond=None)
    off = np.linalg.norm(inplane - design @ fit, axis=1)
    worst = int(np.argmax(off))
    tolerance = max(max(spacing_yx), 0.5)
    if not np.isfinite(off[worst]) or off[worst] <= tolerance:
        return
    raise DicomSeriesError(
        f"'{frames[worst].path}' lies {off[worst]:.1f} mm beside the line the other slices of its series lie on "
        f"(its ImagePositionPatient moved within its plane; more than one pixel, {tolerance:g} mm, is refused): "
        "stacked with them, its pixels would lie on the wrong grid (its part of the face elsewhere than the others', "
        "where defacing would miss it). Re-export the series, or move that slice out (nothing was written)."
    )


def stored_range(ds: Dataset) -> tuple[int, int]:
    """The lowest and highest stored value the instance's BitsStored and PixelRepresentation allow."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def as_displayed(raw: npt.NDArray[Any], header: Dataset, source: str) -> tuple[npt.NDArray[Any], tuple[int, int]]:
    """Stored values of a MONOCHROME1 stack (the lowest value shown white) turned into grey values that run the way
    defacer reads them (MONOCHROME2: air dark): ``low + high - v`` against the range BitsStored and
    PixelRepresentation allow.  Not used for CT, whose Hounsfield units mean the same however shown.

    The map is its own inverse within that range, so :func:`defacer.io.dicom_write.write_dicom_volume` applies it
    again and an untouched voxel comes back bit-identical (the written file stays MONOCHROME1).  RescaleSlope and
    RescaleIntercept then apply to the turned values (the grey scale shown, not the stored one).

    Parameters
    ----------
    raw : ndarray, shape (Columns, Rows, Slices)
        Stored values, integer.
    header : Dataset
        The first instance (BitsStored, PixelRepresentation).
    source : str
        The series, for messages.

    Returns
    -------
    ndarray, tuple of int
        The turned values (same shape and dtype) and the ``(low, high)`` range used.

    Raises
    ------
    DicomSeriesError
        Float pixels, or a stored value outside the range its bits allow (turning it could not be undone exactly).
    """
    if not np.issubdtype(raw.dtype, np.integer):
        raise DicomSeriesError(
            f"'{source}' is MONOCHROME1 (the lowest value shown white) with {raw.dtype} pixel data: defacer turns "
            "MONOCHROME1 greys around the range of their stored bits, which float data has not. Convert the series to "
            "MONOCHROME2 (e.g. with pydicom or dcmtk) and run again (nothing was written)."
        )
    low, high = stored_range(header)
    found_low, found_high = int(raw.min()), int(raw.max())
    if found_low < low or found_high > high:
        raise DicomSeriesError(
            f"'{source}' is MONOCHROME1 (the lowest value shown white) but holds stored values from {found_low} to "
            f"{found_high}, outside the {low}..{high} its BitsStored ({header.get('BitsStored', '?')}) allows: its "
            "greys cannot be turned the way defacer reads them and back exactly. Convert the series to MONOCHROME2 "
            "(e.g. with pydicom or dcmtk) and run again (nothing was written)."
        )
    turned = (np.int64(low + high) - raw.astype(np.int64)).astype(raw.dtype)
    logger.info("'%s' is MONOCHROME1: its greys are read turned (%d + %d - stored value) so that air is dark; a DICOM "
                "output is written back as MONOCHROME1", source, low, high)
    return turned, (low, high)


#: Attributes every slice of one volume must share, with what a slice differing in it would do once stacked.
MEANING_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("FrameOfReferenceUID", ("its ImagePositionPatient is measured in another patient coordinate system, so where it "
     "lies among the others is unknown (its part of the face where defacing may miss it)")),
    ("Modality", ("its values are another kind of measurement (CT numbers among MR intensities), read as the others' "
     "(the head and the air told apart on the wrong scale)")),
    ("PhotometricInterpretation", ("its grey values may run the other way (MONOCHROME1: a high value is dark), read as "
     "the others' (its air taken for tissue, its face for air)")),
)


def _meaning(ds: Dataset) -> tuple[str, ...]:
    """The values of :data:`MEANING_ATTRIBUTES` in one instance (empty where absent; codes compared in capitals)."""
    values = []
    for keyword, _ in MEANING_ATTRIBUTES:
        value = str(ds.get(keyword, "") or "").strip()
        values.append(value if keyword.endswith("UID") else value.upper())
    return tuple(values)


def _check_same_meaning(meanings: dict[Path, tuple[str, ...]]) -> None:
    """Refuse a stack whose files disagree in FrameOfReferenceUID, Modality or PhotometricInterpretation.

    Scanning groups instances by SeriesInstanceUID, geometry, patient and study only: a slice of another frame of
    reference (its positions in another coordinate system), another modality or another photometric
    interpretation (a mis-merged or hostile series) was stacked with the others, its values or its place read as
    theirs.  The file named is one of the fewest that differ from the most (the first file of the stack on a tie).

    Parameters
    ----------
    meanings : dict of Path to tuple of str
        :func:`_meaning` of each file of the stack, in stack order.

    Raises
    ------
    DicomSeriesError
        Naming the file, the attribute, both values and what to do.
    """
    from collections import Counter

    for index, (keyword, why) in enumerate(MEANING_ATTRIBUTES):
        counts = Counter(values[index] for values in meanings.values())
        if len(counts) < 2:
            continue
        common, _ = counts.most_common(1)[0]
        odd = next(file for file, values in meanings.items() if values[index] != common)
        value = meanings[odd][index]
        others = sum(n for v, n in counts.items() if v != common) - 1

        raise DicomSeriesError(
            f"'{odd}' has {keyword} {_shown_value(value)} but {counts[common]} other file(s) of its series "
            f"{_shown_value(common)}{f' ({others} more file(s) differ too)' if others else ''}: stacked with them, {why}. "
            f"One volume needs one {keyword}: re-export the series, or move the files of the other {keyword} to a "
            "folder of their own (nothing was written)."
        )


def _shown_value(text: str) -> str:
    """A header value for a message: quoted, control characters escaped, cut at 64 characters; ``none`` if empty."""
    if not text:
        return "none"
    return f"'{shown(text[:64])}{'...' if len(text) > 64 else ''}'"


#: Relative difference of two slices' PixelSpacing above which they are not on one grid.
SPACING_TOLERANCE = 1e-3


def _check_same_spacing(ds: Dataset, file: Path, spacing_yx: tuple[float, ...]) -> None:
    """Refuse a slice whose PixelSpacing is not the series' (the first slice's).

    The affine takes the first slice's spacing; a slice of another spacing stacked with it puts its pixels on the
    wrong grid: its face is not where the other slices' is, and distortions placed on the stack miss it there.
    """
    own = floats(_pixel_spacing(ds), 2, "PixelSpacing", file)
    if np.allclose(own, spacing_yx, rtol=SPACING_TOLERANCE, atol=0.0):
        return
    raise DicomSeriesError(
        f"'{file}' has a PixelSpacing of {own[0]:g} x {own[1]:g} mm but the other slices of its series "
        f"{spacing_yx[0]:g} x {spacing_yx[1]:g} mm: stacked with them, its pixels would lie on the wrong grid (its part "
        "of the face elsewhere than the others', where defacing would miss it). Re-export the series, or move the "
        "slices of the other spacing to a folder of their own (nothing was written)."
    )


def _pixel_spacing(ds: Dataset) -> Any:
    if "PixelSpacing" in ds:
        return ds.PixelSpacing
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and "PixelMeasuresSequence" in shared[0]:
        return shared[0].PixelMeasuresSequence[0].PixelSpacing
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and "PixelMeasuresSequence" in per_frame[0]:
        return per_frame[0].PixelMeasuresSequence[0].PixelSpacing
    if "ImagerPixelSpacing" in ds:
        return ds.ImagerPixelSpacing
    raise DicomSeriesError("The series has no PixelSpacing, so voxel sizes are unknown.")

