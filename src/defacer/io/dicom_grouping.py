"""DICOM instances grouped into stacks of slices, and the choice of one stack.

:func:`scan` reads only headers (pixel data deferred) and groups instances by
SeriesInstanceUID, orientation and matrix size; :func:`select_series` picks one image stack
by key, UID, SeriesNumber or listing index.  Each slice is a :class:`FrameRef` (a file, or a
frame of a multi-frame file) with its position and scaling.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from defacer._typing import PathLike
from defacer.errors import DicomSeriesError, SeveralSeriesError, shown
from defacer.io.dicom_files import (
    INCOMPLETE_INSTANCE,
    header_of_a_large_file,
    input_files,
    read_header,
    too_large,
    unreadable_reason,
)

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameRef:
    """One 2D slice of a series: a single-frame file, or one frame of a multi-frame file."""

    path: Path
    frame: int | None
    position: tuple[float, ...]
    slope: float
    inter: float


@dataclass(frozen=True)
class SeriesInfo:
    """One stack of slices found in a folder (a series, or one geometry of a series).

    Attributes
    ----------
    key : str
        SeriesInstanceUID, with ``#2``, ``#3``... appended for further stacks of one series.
        Pass it (or ``series_number``, or the 1-based position in :func:`find_series`'s list)
        as ``series=`` / ``--series``.
    instances : tuple of str
        Each file's SOPInstanceUID, in the order of ``files`` (``""`` where it has none).
    """

    key: str
    series_uid: str
    series_number: str
    modality: str
    description: str
    rows: int
    columns: int
    orientation: tuple[float, ...]
    files: tuple[Path, ...]
    frames: tuple[FrameRef, ...]
    has_pixels: bool
    instances: tuple[str, ...] = ()

    def label(self, index: int) -> str:
        """One line for listings: ``[index] number description (modality, n files, rows x cols) key``."""
        what = f"{shown(self.modality or '?')}, {len(self.files)} file(s), {len(self.frames)} slice(s)"
        if self.has_pixels:
            what += f", {self.columns}x{self.rows}"
        else:
            what += ", no pixel data"
        return f"[{index}] series {self.series_number or '?'} '{shown(self.description)}' ({what}) {shown(self.key)}"


@dataclass(frozen=True)
class Scan:
    """Result of scanning a folder: the stacks found and the files that were skipped.

    Attributes
    ----------
    oversize : tuple of (Path, str)
        Files over :data:`defacer.io.dicom_files.MAX_FILE_BYTES` whose series their header alone told: each is in
        its stack (:attr:`series`), with the refusal :func:`defacer.io.dicom_geometry.read_dicom_volume` gives when
        that stack is the one read; the other stacks are read without them.
    """

    series: tuple[SeriesInfo, ...]
    skipped: tuple[tuple[Path, str], ...]
    oversize: tuple[tuple[Path, str], ...] = ()

    @property
    def damaged(self) -> tuple[tuple[Path, str], ...]:
        """Skipped files that are DICOM but unreadable (truncated, corrupt, broken geometry)."""
        return tuple(item for item in self.skipped if item[1].startswith("damaged"))



def floats(value: Any, count: int, what: str, path: Path) -> tuple[float, ...]:
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise DicomSeriesError(f"'{path}' has an unreadable {what} ({value!r}); expected {count} numbers.") from err
    if len(numbers) != count:
        raise DicomSeriesError(f"'{path}' has {what} with {len(numbers)} values; expected {count}.")
    if not all(np.isfinite(numbers)):  # a NaN orientation made every slice a stack of its own ("a 2D image" x N)
        raise DicomSeriesError(f"'{path}' has {what} {', '.join(f'{n:g}' for n in numbers)}; expected {count} finite "
                               "numbers. The header is damaged: re-export the series.")
    return numbers


def rescale(slope: Any, inter: Any, path: Path) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept of one image as numbers, refused in words when they give no intensities.

    Parameters
    ----------
    slope, inter : Any
        The attributes' values (a DS, a number or text).
    path : Path
        Shown in messages.

    Raises
    ------
    DicomSeriesError
        For a value that is no number, a NaN or infinite one, or a slope of 0.
    """
    try:
        values = float(slope), float(inter)
    except (TypeError, ValueError) as err:
        raise DicomSeriesError(
            f"'{path}' has an unreadable RescaleSlope/RescaleIntercept ({slope!r}, {inter!r}); expected numbers."
        ) from err
    if not all(np.isfinite(values)) or values[0] == 0:
        raise DicomSeriesError(
            f"'{path}' has RescaleSlope {values[0]:g} and RescaleIntercept {values[1]:g}; expected finite numbers and a "
            "slope that is not 0 (intensity = stored value x slope + intercept). The header is damaged: re-export the "
            "series."
        )
    return values


def _frame_refs(ds: Dataset, path: Path) -> tuple[list[FrameRef], tuple[float, ...] | None]:
    """Slices held by one instance, with positions (LPS) and scaling, and the orientation."""
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 1 <= n_frames <= MAX_FRAMES:
        raise DicomSeriesError(f"'{path}' declares {n_frames} frames; expected 1 to {MAX_FRAMES}.")
    _check_pixel_length(ds, path, n_frames)
    if "PerFrameFunctionalGroupsSequence" in ds:
        return _enhanced_frame_refs(ds, path, n_frames)
    slope, inter = rescale(ds.get("RescaleSlope", 1.0) or 1.0, ds.get("RescaleIntercept", 0.0) or 0.0, path)
    if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
        return [FrameRef(path, None, (0.0, 0.0, 0.0), slope, inter)], None
    position = floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", path)
    orientation = floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", path)
    if n_frames > 1:
        # Classic multi-frame (e.g. NM, old MR): frames along the normal at SpacingBetweenSlices.
        spacing = float(ds.get("SpacingBetweenSlices", ds.get("SliceThickness", 1.0)) or 1.0)
        normal = np.cross(orientation[:3], orientation[3:])
        return [FrameRef(path, f, tuple(np.asarray(position) + f * spacing * normal), slope, inter)  # type: ignore[arg-type]
                for f in range(n_frames)], orientation
    return [FrameRef(path, None, position, slope, inter)], orientation


#: Most frames accepted in one instance (a 3D head needs a few hundred).
MAX_FRAMES = 16384


def _check_pixel_length(ds: Dataset, path: Path, n_frames: int) -> None:
    """Refuse native pixel data shorter than Rows x Columns x frames need (known without reading it)."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if "PixelData" not in ds or (syntax is not None and syntax.is_transfer_syntax and syntax.is_encapsulated):
        return
    length = getattr(ds.get_item("PixelData"), "length", None)
    if length is None:
        length = len(ds.PixelData or b"")
    if length == 0xFFFFFFFF:
        return
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    need = -(-int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * n_frames * samples
             * int(ds.get("BitsAllocated", 0) or 0) // 8)
    if need > length:
        raise DicomSeriesError(
            f"'{path}' holds {length} bytes of pixel data but its Rows, Columns, frames and BitsAllocated need {need}."
        )


def _enhanced_frame_refs(ds: Dataset, path: Path, n_frames: int) -> tuple[list[FrameRef], tuple[float, ...] | None]:
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared_item = shared[0] if shared else None

    def group(item: Any, name: str) -> Any:
        for source in (item, shared_item):
            if source is not None and name in source and source[name].value:
                return source[name].value[0]
        return None

    refs = []
    orientation = None
    first_spacing: tuple[float, ...] | None = None
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        plane = group(item, "PlanePositionSequence")
        orient = group(item, "PlaneOrientationSequence")
        measures = group(item, "PixelMeasuresSequence")
        if measures is not None and "PixelSpacing" in measures:
            spacing = floats(measures.PixelSpacing, 2, "PixelSpacing", path)
            first_spacing = first_spacing or spacing
            if not np.allclose(spacing, first_spacing, rtol=1e-3, atol=0.0):
                raise DicomSeriesError(
                    f"'{path}' is an enhanced multi-frame instance whose frame {f + 1} has a PixelSpacing of "
                    f"{spacing[0]:g} x {spacing[1]:g} mm but its first frame {first_spacing[0]:g} x "
                    f"{first_spacing[1]:g} mm: stacked with the others, its pixels would lie on the wrong grid (its "
                    "part of the face where defacing would miss it). Re-export the series (nothing was written)."
                )
        transform = group(item, "PixelValueTransformationSequence")
        if plane is None or orient is None:
            raise DicomSeriesError(
                f"'{path}' is an enhanced multi-frame instance whose frame {f + 1} has no PlanePositionSequence or "
                "PlaneOrientationSequence, so its geometry is unknown. Export the series as classic single-frame images."
            )
        this_orientation = floats(orient.ImageOrientationPatient, 6, "ImageOrientationPatient", path)
        if orientation is not None and not np.allclose(orientation, this_orientation, atol=1e-4):
            raise DicomSeriesError(
                f"'{path}' is a multi-frame instance whose frames have different orientations (e.g. a localizer). "
                "defacer needs one 3D stack; export the stack you want as its own series."
            )
        orientation = this_orientation
        slope, inter = (rescale(transform.get("RescaleSlope", 1.0), transform.get("RescaleIntercept", 0.0), path)
                        if transform is not None else
                        rescale(ds.get("RescaleSlope", 1.0) or 1.0, ds.get("RescaleIntercept", 0.0) or 0.0, path))
        refs.append(FrameRef(path, f, floats(plane.ImagePositionPatient, 3, "ImagePositionPatient", path), slope, inter))
    if len(refs) != n_frames:
        raise DicomSeriesError(f"'{path}' declares {n_frames} frames but describes {len(refs)}; the file is inconsistent.")
    return refs, orientation


def scan(path: PathLike | Sequence[PathLike]) -> Scan:
    """Read the headers of every file under ``path`` and group them into stacks.

    Files that cannot be used are listed in :attr:`Scan.skipped` (nothing is deleted or
    changed); those that may be damaged slices (see :func:`unreadable_reason`) are also in
    :attr:`Scan.damaged`, which :func:`read_dicom_volume` refuses.

    Raises
    ------
    DicomSeriesError
        If ``path`` does not exist, or no file is DICOM.
    """
    from pydicom.errors import InvalidDicomError

    files = input_files(path, warn_linked_folders=True)
    skipped: list[tuple[Path, str]] = []
    groups: dict[tuple[Any, ...], list[tuple[Path, Dataset, list[FrameRef]]]] = defaultdict(list)
    orientations: dict[tuple[Any, ...], tuple[float, ...]] = {}
    oversize: list[tuple[Path, str]] = []
    for file in files:
        large = None
        try:
            ds = read_header(file)
        except InvalidDicomError as err:
            text = str(err)
            # A file too large to read may be another series' (left out unread, as its other files): its header
            # alone, bounded, tells which; it is refused only when its own stack is read.
            large = header_of_a_large_file(file) if too_large(err) else None
            if large is None:
                skipped.append((file, text if text.startswith("damaged") else unreadable_reason(file)))
                continue
            ds = large
            refusal = text
        if "SOPClassUID" not in ds and "SeriesInstanceUID" not in ds:
            meta = getattr(ds, "file_meta", None)
            if meta is not None and "MediaStorageSOPClassUID" in meta and "DirectoryRecordSequence" not in ds:
                skipped.append((file, INCOMPLETE_INSTANCE))
            else:
                skipped.append((file, "no SOP Class or Series Instance UID (a DICOMDIR or not an instance)"))
            continue
        has_pixels = large is not None or "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds
        try:
            refs, orientation = _frame_refs(ds, file) if has_pixels else ([], None)
            rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        except DicomSeriesError as err:
            skipped.append((file, f"damaged geometry or scaling: {err}"))
            continue
        except (ValueError, TypeError, AttributeError, KeyError, OverflowError) as err:
            # a value its VR cannot hold (NumberOfFrames '1A', Rows as text...): pydicom raises on access
            skipped.append((file, f"damaged header: an image attribute has an unreadable value ({err})"))
            continue
        key = (
            str(ds.get("SeriesInstanceUID", "")),
            has_pixels,
            tuple(np.round(orientation, 3)) if orientation else None,
            rows,
            columns,
            # Slices of two patients or two studies are never one head, whatever their series' UID says (a copy
            # renumbered by hand, an anonymizer writing one constant UID): they were stacked into one volume.
            str(ds.get("PatientID", "")),
            str(ds.get("StudyInstanceUID", "")),
        )
        groups[key].append((file, _kept(ds), refs))
        if large is not None:
            oversize.append((file, refusal))
        if orientation:
            orientations.setdefault(key, orientation)
    image_series = {key[0] for key in groups if key[1]}
    for key in [k for k in groups if not k[1] and k[0] in image_series]:
        for member in groups.pop(key):
            skipped.append((member[0], _no_pixels_reason(member[1])))
    if not groups:
        reasons = "; ".join(f"{p.name}: {why}" for p, why in skipped[:5])
        from defacer.files import IMAGE_SUFFIXES

        images = [p.name for p, _ in skipped if p.name.lower().endswith(IMAGE_SUFFIXES)]
        hint = (f" It holds {len(images)} image file(s) of another format ({', '.join(images[:3])}"
                f"{' ...' if len(images) > 3 else ''}): give one of them as the scan, or deface them all with "
                f"'defacer batch {path} OUT'." if images else "")
        raise DicomSeriesError(f"No DICOM instance found in '{path}' ({len(skipped)} file(s) skipped: {reasons}).{hint}")
    series = []
    count_by_uid: dict[str, int] = defaultdict(int)
    for group_key, members in sorted(
        groups.items(), key=lambda kv: (str(kv[1][0][1].get("SeriesNumber", "")).zfill(6), kv[0][0], -len(kv[1]))
    ):
        uid, has_pixels, _, rows, columns, _, _ = group_key
        orientation = orientations.get(group_key)
        count_by_uid[uid] += 1
        first = members[0][1]
        stack_key = uid if count_by_uid[uid] == 1 else f"{uid}#{count_by_uid[uid]}"
        series.append(SeriesInfo(
            key=stack_key,
            series_uid=uid,
            series_number=str(first.get("SeriesNumber", "") or ""),
            modality=str(first.get("Modality", "") or ""),
            description=str(first.get("SeriesDescription", "") or ""),
            rows=rows,
            columns=columns,
            orientation=tuple(orientation) if orientation else (),
            files=tuple(m[0] for m in members),
            frames=tuple(r for m in members for r in m[2]),
            has_pixels=has_pixels,
            instances=tuple(str(m[1].get("SOPInstanceUID", "") or "") for m in members),
        ))
    for file, why in skipped:
        logger.warning("skipped '%s': %s", file, why)
    owners: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for group_key in groups:
        owners[group_key[0]].add(group_key[5:])
    for uid, held in owners.items():
        if len(held) > 1 and (uid, len(held)) not in _WARNED_SHARED:
            _WARNED_SHARED.add((uid, len(held)))  # once per process: a folder is scanned again to read each stack
            what = ("patients" if len({patient for patient, _ in held}) > 1 else "studies")
            logger.warning("the series %s holds the slices of %d %s (PatientID, StudyInstanceUID): they are never "
                           "stacked into one volume, each is a stack of its own (%s, %s#2...)", shown(uid), len(held),
                           what, shown(uid), shown(uid))
    return Scan(tuple(series), tuple(skipped), tuple(oversize))


#: The elements :func:`scan` keeps of each file's header once it has grouped the file: what it names a series by
#: (:class:`SeriesInfo`), tells a non-image instance by (:func:`_no_pixels_reason`) and finds one instance in two
#: files by (:func:`defacer.io.dicom_geometry.read_dicom_volume`).
_KEPT = ("SeriesNumber", "Modality", "SeriesDescription", "SOPClassUID", "SOPInstanceUID")


#: Longest value of :data:`_KEPT` kept, in characters (each is at most 64 by the standard; a longer one, bloat in
#: the element itself, is left out, as if absent).
_KEPT_CHARS = 1024


def _kept(ds: Dataset) -> Dataset:
    """A header holding only :data:`_KEPT` of ``ds``, each no longer than :data:`_KEPT_CHARS`: the whole header of
    every file was kept until the series were listed, bloat and all (a private sequence of 20 items of 1 MB in each
    of 80 files: 1.6 GB held at once)."""
    from pydicom.dataset import Dataset

    kept = Dataset()
    for keyword in _KEPT:
        if keyword in ds and len(str(ds[keyword].value)) <= _KEPT_CHARS:
            kept[keyword] = ds[keyword]
    return kept


#: Series UIDs already warned about as shared by several patients or studies (:func:`scan`).
_WARNED_SHARED: set[tuple[str, int]] = set()


def find_series(path: PathLike | Sequence[PathLike]) -> list[SeriesInfo]:
    """List the stacks of slices (series, or geometries within a series) under ``path``.

    Parameters
    ----------
    path : path-like or sequence of path-like
        A folder (searched recursively) or a list of files.

    Returns
    -------
    list of SeriesInfo
        Ordered by SeriesNumber.
    """
    return list(scan(path).series)


def select_series(found: Sequence[SeriesInfo], series: str | None, source: str) -> SeriesInfo:
    """Pick one image stack by key, SeriesInstanceUID, SeriesNumber or 1-based index.

    Raises
    ------
    DicomSeriesError
        If none or several match, listing the stacks and how to choose.
    """
    images = [s for s in found if s.has_pixels]
    listing = "\n  ".join(s.label(i + 1) for i, s in enumerate(found))
    if not images:
        raise DicomSeriesError(f"'{source}' holds no image series (no instance has pixel data):\n  {listing}")
    if series is None:
        if len(images) == 1:
            return images[0]
        raise SeveralSeriesError(
            f"'{source}' holds {len(images)} image stacks. Put each series in a folder of its own (what 'defacer "
            f"batch' needs), or choose one with --series of 'defacer deface' (a number in brackets, the series "
            f"number, or the UID):\n  {listing}", count=len(images)
        )
    # A stack's own key first: the first stack of a series split by geometry is keyed by the bare UID, which the
    # others share as their series UID ('--series UID' of a study's first stack matched them all and was refused).
    matches = [s for s in images if s.key == series] or [s for s in images if s.series_uid == series]
    if not matches:
        matches = [s for s in images if s.series_number == series]
    if not matches and series.isdigit() and 1 <= int(series) <= len(found) and found[int(series) - 1].has_pixels:
        matches = [found[int(series) - 1]]
    if len(matches) != 1:
        found_text = "no" if not matches else f"{len(matches)}"
        raise DicomSeriesError(f"--series {series!r} matches {found_text} image stack(s) in '{source}'. Stacks:\n  {listing}")
    return matches[0]


def _no_pixels_reason(ds: Any) -> str:
    """Why an instance of an image series without pixel data is left out: an instance of a SOP class that holds no
    image (a structured report, a presentation state, a key object selection, a waveform) is named for what it is;
    it was called a "damaged or truncated DICOM file", sending the user after a file that was whole."""
    from pydicom.uid import UID

    sop_class = str(ds.get("SOPClassUID", "") or "").strip().rstrip("\x00")
    name = UID(sop_class).name if sop_class else ""
    if name and name != sop_class and "Image" not in name and _NON_IMAGE_CLASS.search(name):
        return (f"not an image: a {name.removesuffix(' Storage')} instance (SOP class {sop_class}) filed in the "
                "image series; it is left out of the defaced series (not copied, not de-identified)")
    return "damaged or truncated DICOM file (an instance of an image series without pixel data)"


#: Names of SOP classes that hold no image (pydicom's UID names): reports, presentation states, selections,
#: waveforms, RT objects without pixels, documents, spectra, raw data, registrations, fiducials, mappings.
_NON_IMAGE_CLASS = re.compile(
    r"\bSR\b|Presentation State|Key Object Selection|Waveform|Structure Set|RT .*Plan|Treatment Record"
    r"|Encapsulated|Spectroscopy|Raw Data|Registration|Fiducials|Real World Value Mapping|Measurement Report"
)
