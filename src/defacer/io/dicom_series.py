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
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from defacer._typing import PathLike
from defacer.errors import DicomSeriesError, OutputError
from defacer.io.atomic import atomic_outputs, check_output_path
from defacer.volume import Volume

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from defacer.phi.scrub import Scrubber

logger = logging.getLogger(__name__)

#: LPS (DICOM patient coordinates) to RAS+.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Relative deviation of slice gaps from their mean above which spacing counts as uneven.
UNEVEN_TOLERANCE = 0.01
#: Angle (degrees) between the slice vector and the normal above which the stack is reported as tilted.
TILT_TOLERANCE_DEG = 0.5
#: A gap this many times the median gap suggests missing slices.
MISSING_SLICE_FACTOR = 1.5
#: Transfer syntaxes written back unchanged (native, little endian).
NATIVE_LITTLE_ENDIAN = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


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

    def label(self, index: int) -> str:
        """One line for listings: ``[index] number description (modality, n files, rows x cols) key``."""
        what = f"{self.modality or '?'}, {len(self.files)} file(s), {len(self.frames)} slice(s)"
        if self.has_pixels:
            what += f", {self.columns}x{self.rows}"
        else:
            what += ", no pixel data"
        return f"[{index}] series {self.series_number or '?'} '{self.description}' ({what}) {self.key}"


@dataclass(frozen=True)
class Scan:
    """Result of scanning a folder: the stacks found and the files that were skipped."""

    series: tuple[SeriesInfo, ...]
    skipped: tuple[tuple[Path, str], ...]

    @property
    def damaged(self) -> tuple[tuple[Path, str], ...]:
        """Skipped files that are DICOM but unreadable (truncated, corrupt, broken geometry)."""
        return tuple(item for item in self.skipped if item[1].startswith("damaged"))


# ---------------------------------------------------------------------------------- scanning
def _input_files(path: PathLike | Sequence[PathLike]) -> list[Path]:
    if isinstance(path, str | os.PathLike):
        p = Path(path)
        if not p.exists():
            raise DicomSeriesError(f"No such file or folder: '{p}'. Check the path.")
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".defacer-tmp"))
            if not files:
                raise DicomSeriesError(f"The folder '{p}' is empty: expected DICOM files (one per slice or multi-frame).")
            return files
        return [p]
    files = [Path(f) for f in path]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DicomSeriesError(f"These DICOM files do not exist: {', '.join(missing[:5])}. Check the paths.")
    return sorted(files)


#: Extensions of files that are clearly not image slices (notes, reports, exports, pictures):
#: when one of these is not DICOM it is skipped with a warning instead of refusing the series.
NON_IMAGE_EXTENSIONS = frozenset({
    ".txt", ".md", ".rst", ".json", ".xml", ".html", ".htm", ".pdf", ".csv", ".tsv", ".log", ".ini", ".cfg",
    ".yaml", ".yml", ".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".nii", ".gz", ".nrrd", ".nhdr",
    ".mgz", ".mgh", ".zip", ".db", ".doc", ".docx", ".rtf", ".bval", ".bvec", ".sha256", ".md5",
})
#: Names of files that are clearly not slices.
NON_IMAGE_NAMES = frozenset({"readme", "license", "licence", "thumbs.db", "desktop.ini", "manifest", "checksums"})
#: Reason given to an unreadable file that may be a slice; it starts with "damaged" (see :attr:`Scan.damaged`).
UNREADABLE_SLICE = (
    "damaged or not DICOM: it cannot be read as DICOM (random or damaged bytes) and its name does not mark it as "
    "a non-image file, so it may be a missing slice"
)


#: Reason given to a file whose meta group describes an instance but whose data set lacks its identifiers.
INCOMPLETE_INSTANCE = (
    "damaged, truncated or incomplete DICOM file (its file meta names an instance but its data set has no SOP Class "
    "or Series Instance UID)"
)


def unreadable_reason(path: Path) -> str:
    """Why a file that pydicom cannot read as DICOM is left out.

    Hidden files and files whose name or extension marks a document or picture (``notes.txt``,
    ``README``, ``.DS_Store``) are "not a DICOM file" (skipped with a warning); anything else
    may be a damaged slice and gets :data:`UNREADABLE_SLICE`, which refuses the series.
    """
    name = path.name.lower()
    if name.startswith(".") or name in NON_IMAGE_NAMES or path.suffix.lower() in NON_IMAGE_EXTENSIONS:
        return "not a DICOM file"
    return UNREADABLE_SLICE


def _looks_like_raw_dicom(path: Path) -> bool:
    """True when a file without the Part 10 preamble starts like a DICOM data set (old exports)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError:
        return False
    return len(head) == 8 and (int.from_bytes(head[:2], "little") in (0x0002, 0x0008)
                               or int.from_bytes(head[:2], "big") == 0x0008)  # big endian (retired syntax)


#: Deepest nesting of sequences accepted in a file (real files use a handful of levels).
MAX_SEQUENCE_DEPTH = 64


def _check_depth(ds: Dataset) -> None:
    """Raise InvalidDicomError when sequences nest deeper than :data:`MAX_SEQUENCE_DEPTH` (walked without recursion)."""
    from pydicom.datadict import DicomDictionary
    from pydicom.errors import InvalidDicomError

    stack = [(ds, 0)]
    while stack:
        dataset, depth = stack.pop()
        for tag in list(dataset.keys()):
            vr = dataset.get_item(tag).VR or DicomDictionary.get(int(tag), ("",))[0]
            if vr != "SQ":
                continue
            if depth >= MAX_SEQUENCE_DEPTH:
                raise InvalidDicomError(
                    f"damaged or hostile DICOM file (sequences nested more than {MAX_SEQUENCE_DEPTH} deep)"
                )
            stack.extend((item, depth + 1) for item in dataset[tag].value or ())


def dcmread_any(path: Path, **kwargs: Any) -> Dataset:
    """``pydicom.dcmread``, also accepting files without the 128-byte preamble and "DICM" marker.

    Such files get a TransferSyntaxUID in ``file_meta`` matching how they were encoded.
    Sequences nested deeper than :data:`MAX_SEQUENCE_DEPTH` are refused (they would
    exhaust the stack of every recursive reader and writer).

    Raises
    ------
    pydicom.errors.InvalidDicomError
        If the file is not DICOM at all, or is nested too deep (the message then starts
        with "damaged").
    """
    from pydicom.errors import InvalidDicomError

    try:
        ds = _dcmread(path, **kwargs)
        _check_depth(ds)
    except RecursionError as err:
        raise InvalidDicomError(
            f"damaged or hostile DICOM file (sequences nested more than {MAX_SEQUENCE_DEPTH} deep)"
        ) from err
    return ds


def _dcmread(path: Path, **kwargs: Any) -> Dataset:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        return pydicom.dcmread(path, **kwargs)
    except InvalidDicomError:
        if not _looks_like_raw_dicom(path):
            raise
    ds = pydicom.dcmread(path, force=True, **kwargs)
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        if little is False:
            ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
        else:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return ds


def _read_header(path: Path) -> Dataset:
    from pydicom.errors import InvalidDicomError

    try:
        return dcmread_any(path, defer_size=512)
    except InvalidDicomError:
        raise
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError, NotImplementedError) as err:
        raise InvalidDicomError(f"damaged or truncated DICOM file ({type(err).__name__}: {err})") from err


def _floats(value: Any, count: int, what: str, path: Path) -> tuple[float, ...]:
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise DicomSeriesError(f"'{path}' has an unreadable {what} ({value!r}); expected {count} numbers.") from err
    if len(numbers) != count:
        raise DicomSeriesError(f"'{path}' has {what} with {len(numbers)} values; expected {count}.")
    return numbers


def _frame_refs(ds: Dataset, path: Path) -> tuple[list[FrameRef], tuple[float, ...] | None]:
    """Slices held by one instance, with positions (LPS) and scaling, and the orientation."""
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 1 <= n_frames <= MAX_FRAMES:
        raise DicomSeriesError(f"'{path}' declares {n_frames} frames; expected 1 to {MAX_FRAMES}.")
    _check_pixel_length(ds, path, n_frames)
    if "PerFrameFunctionalGroupsSequence" in ds:
        return _enhanced_frame_refs(ds, path, n_frames)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    inter = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
        return [FrameRef(path, None, (0.0, 0.0, 0.0), slope, inter)], None
    position = _floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", path)
    orientation = _floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", path)
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
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        plane = group(item, "PlanePositionSequence")
        orient = group(item, "PlaneOrientationSequence")
        transform = group(item, "PixelValueTransformationSequence")
        if plane is None or orient is None:
            raise DicomSeriesError(
                f"'{path}' is an enhanced multi-frame instance whose frame {f + 1} has no PlanePositionSequence or "
                "PlaneOrientationSequence, so its geometry is unknown. Export the series as classic single-frame images."
            )
        this_orientation = _floats(orient.ImageOrientationPatient, 6, "ImageOrientationPatient", path)
        if orientation is not None and not np.allclose(orientation, this_orientation, atol=1e-4):
            raise DicomSeriesError(
                f"'{path}' is a multi-frame instance whose frames have different orientations (e.g. a localizer). "
                "defacer needs one 3D stack; export the stack you want as its own series."
            )
        orientation = this_orientation
        slope = float(transform.get("RescaleSlope", 1.0)) if transform is not None else float(ds.get("RescaleSlope", 1.0) or 1.0)
        inter = float(transform.get("RescaleIntercept", 0.0)) if transform is not None else float(ds.get("RescaleIntercept", 0.0) or 0.0)
        refs.append(FrameRef(path, f, _floats(plane.ImagePositionPatient, 3, "ImagePositionPatient", path), slope, inter))
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

    files = _input_files(path)
    skipped: list[tuple[Path, str]] = []
    groups: dict[tuple[Any, ...], list[tuple[Path, Dataset, list[FrameRef]]]] = defaultdict(list)
    orientations: dict[tuple[Any, ...], tuple[float, ...]] = {}
    for file in files:
        try:
            ds = _read_header(file)
        except InvalidDicomError as err:
            text = str(err)
            skipped.append((file, text if text.startswith("damaged") else unreadable_reason(file)))
            continue
        if "SOPClassUID" not in ds and "SeriesInstanceUID" not in ds:
            meta = getattr(ds, "file_meta", None)
            if meta is not None and "MediaStorageSOPClassUID" in meta and "DirectoryRecordSequence" not in ds:
                skipped.append((file, INCOMPLETE_INSTANCE))
            else:
                skipped.append((file, "no SOP Class or Series Instance UID (a DICOMDIR or not an instance)"))
            continue
        has_pixels = "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds
        try:
            refs, orientation = _frame_refs(ds, file) if has_pixels else ([], None)
            rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        except DicomSeriesError as err:
            skipped.append((file, f"damaged geometry: {err}"))
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
        )
        groups[key].append((file, ds, refs))
        if orientation:
            orientations.setdefault(key, orientation)
    image_series = {key[0] for key in groups if key[1]}
    for key in [k for k in groups if not k[1] and k[0] in image_series]:
        for member in groups.pop(key):
            why = "damaged or truncated DICOM file (an instance of an image series without pixel data)"
            skipped.append((member[0], why))
    if not groups:
        reasons = "; ".join(f"{p.name}: {why}" for p, why in skipped[:5])
        raise DicomSeriesError(f"No DICOM instance found in '{path}' ({len(skipped)} file(s) skipped: {reasons}).")
    series = []
    count_by_uid: dict[str, int] = defaultdict(int)
    for group_key, members in sorted(
        groups.items(), key=lambda kv: (str(kv[1][0][1].get("SeriesNumber", "")).zfill(6), kv[0][0], -len(kv[1]))
    ):
        uid, has_pixels, _, rows, columns = group_key
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
        ))
    for file, why in skipped:
        logger.warning("skipped '%s': %s", file, why)
    return Scan(tuple(series), tuple(skipped))


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
        raise DicomSeriesError(
            f"'{source}' holds {len(images)} image stacks; choose one with --series (a number in brackets, the "
            f"series number, or the UID), or split the folder:\n  {listing}"
        )
    matches = [s for s in images if series in (s.key, s.series_uid)]
    if not matches:
        matches = [s for s in images if s.series_number == series]
    if not matches and series.isdigit() and 1 <= int(series) <= len(found) and found[int(series) - 1].has_pixels:
        matches = [found[int(series) - 1]]
    if len(matches) != 1:
        found_text = "no" if not matches else f"{len(matches)}"
        raise DicomSeriesError(f"--series {series!r} matches {found_text} image stack(s) in '{source}'. Stacks:\n  {listing}")
    return matches[0]


# ---------------------------------------------------------------------------------- reading
def _decode(path: Path) -> tuple[Dataset, npt.NDArray[Any]]:
    """Read one instance with pixels; frames first: shape (F, Rows, Columns)."""
    try:
        ds = dcmread_any(path)
        pixels = ds.pixel_array
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
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise DicomSeriesError(f"'{path}' is a colour image (SamplesPerPixel {ds.SamplesPerPixel}); defacer needs grey MR/CT.")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames == 1 and pixels.ndim == 2:
        pixels = pixels[None]
    return ds, pixels


def _check_spacing(projections: npt.NDArray[np.float64], source: str) -> list[str]:
    warnings: list[str] = []
    gaps = np.diff(projections)
    if gaps.size == 0:
        return warnings
    if np.any(gaps < 1e-3):
        dup = int(np.argmin(gaps))
        raise DicomSeriesError(
            f"'{source}' has two slices at the same position ({projections[dup]:.3f} mm along the slice normal): "
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


def read_dicom_volume(path: PathLike | Sequence[PathLike], series: str | None = None) -> Volume:
    """Read one DICOM image series as a :class:`Volume` (format ``"dicom"``).

    Parameters
    ----------
    path : path-like or sequence of path-like
        A folder (searched recursively; non-DICOM files are skipped with a warning), one
        file of a multi-frame instance, or a list of files.
    series : str, optional
        Which stack when there are several: its key/SeriesInstanceUID, SeriesNumber, or the
        1-based index shown in the error message.

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
        positions, undecodable or truncated pixel data.
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
    warnings = _check_spacing(positions @ normal, source)

    by_file: dict[Path, list[tuple[int, FrameRef]]] = defaultdict(list)
    for k, ref in enumerate(frames):
        by_file[ref.path].append((k, ref))
    raw: npt.NDArray[Any] | None = None
    header = None
    spacing_yx = None
    for file, members in by_file.items():
        ds, pixels = _decode(file)
        if header is None:
            header = ds
            spacing_yx = _floats(_pixel_spacing(ds), 2, "PixelSpacing", file)
            raw = np.empty((info.columns, info.rows, len(frames)), dtype=pixels.dtype)
        elif pixels.dtype != raw.dtype:  # type: ignore[union-attr]
            raise DicomSeriesError(
                f"'{file}' stores {pixels.dtype} pixels but other slices store {raw.dtype}; "  # type: ignore[union-attr]
                "the series mixes pixel formats."
            )
        if pixels.shape[1:] != (info.rows, info.columns):
            raise DicomSeriesError(f"'{file}' has {pixels.shape[1:]} pixels; the series has {(info.rows, info.columns)}.")
        for k, ref in members:
            raw[:, :, k] = pixels[ref.frame or 0].T  # type: ignore[index]
    assert raw is not None and header is not None and spacing_yx is not None

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
    }
    return Volume(raw, affine, float(slope), float(inter), "dicom", header, extra)


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


# ---------------------------------------------------------------------------------- writing
def _stored_range(ds: Dataset) -> tuple[int, int]:
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _stored_slice(volume: Volume, k: int, ref: FrameRef, dtype: np.dtype[Any], ds: Dataset) -> npt.NDArray[Any]:
    """Stored values of slice ``k`` as (Rows, Columns), clipped to the instance's bit range."""
    values = volume.raw[:, :, k].T
    per_slice = volume.extra.get("per_slice_scaling")
    if per_slice is not None:
        values = np.rint((values.astype(np.float64) - ref.inter) / (ref.slope or 1.0))
    elif not np.issubdtype(values.dtype, np.integer) and np.issubdtype(dtype, np.integer):
        values = np.rint(values)
    if np.issubdtype(dtype, np.integer):
        low, high = _stored_range(ds)
        values = np.clip(values, low, high)
    return np.ascontiguousarray(values.astype(dtype))


def _replace_pixels(ds: Dataset, frames: npt.NDArray[Any], n_frames: int) -> None:
    """Put new native pixels into ``ds``; compressed or big-endian input becomes Explicit VR Little Endian."""
    from pydicom.uid import UID

    data = frames if n_frames > 1 else frames[0]
    bits_allocated = int(ds.BitsAllocated)
    if bits_allocated == 1:
        raise DicomSeriesError("Single-bit pixel data cannot be defaced (it is not an MR or CT image).")
    syntax = str(ds.file_meta.TransferSyntaxUID) if "TransferSyntaxUID" in ds.get("file_meta", {}) else ""
    if syntax not in NATIVE_LITTLE_ENDIAN:
        # LossyImageCompression is kept: the history of an earlier lossy compression stays true.
        ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)
        for tag in (0x7FE00001, 0x7FE00002):  # (Extended) offset tables only exist for encapsulated data
            if tag in ds:
                del ds[tag]
    little = data.astype(data.dtype.newbyteorder("<"), copy=False)
    ds.PixelData = little.tobytes()
    ds["PixelData"].VR = "OB" if bits_allocated <= 8 else "OW"
    ds["PixelData"].is_undefined_length = False
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in ds:
            value = int(data.min() if keyword.startswith("Smallest") else data.max())
            ds[keyword].value = value


def _check_output_folder(out_dir: Path, volume_root: Path | None, sources: Iterable[Path], force: bool) -> None:
    target = out_dir.resolve()
    if volume_root is not None:
        root = volume_root.resolve()
        if target == root or root.is_relative_to(target) or target.is_relative_to(root):
            raise OutputError(
                f"The output folder '{out_dir}' overlaps the input folder '{volume_root}'. defacer never writes into "
                "or over its input: choose a folder outside it."
            )
    for source in sources:
        if source.resolve().is_relative_to(target):
            raise OutputError(f"The output folder '{out_dir}' contains the input file '{source}'. Choose another folder.")
    check_output_path(out_dir, force=force)


def _output_names(paths: Sequence[Path], root: Path | None, deidentified: bool) -> list[Path]:
    """Relative output names: ``IM00001.dcm``... when de-identified (file names can hold PHI), else the input's."""
    if deidentified or root is None:
        return [Path(f"IM{n + 1:05d}.dcm") for n in range(len(paths))]
    names = []
    for p in paths:
        try:
            names.append(p.resolve().relative_to(root.resolve()))
        except ValueError:
            names.append(Path(p.name))
    if len(set(names)) != len(names):
        return [Path(f"IM{n + 1:05d}.dcm") for n in range(len(paths))]
    return names


def write_dicom_volume(volume: Volume, out_dir: PathLike, *, force: bool = False, deid: Scrubber | None = None) -> list[Path]:
    """Write ``volume`` as a DICOM series: every input instance with its pixels replaced.

    Parameters
    ----------
    volume : Volume
        Read by :func:`read_dicom_volume` (same grid; typically ``with_raw`` of the defaced
        stored values).
    out_dir : path-like
        New folder for the series; it must not exist (unless ``force``) and must not
        overlap the input folder.
    force : bool
        Replace an existing output folder.
    deid : Scrubber, optional
        De-identify each instance's header (PS3.15 Annex E) on the way out.  Without it all
        attributes other than the pixels are left untouched.

    Returns
    -------
    list of Path
        The files written, in slice order of their first frame.

    Raises
    ------
    OutputError
        Output exists without ``force`` or overlaps the input.
    DicomSeriesError
        The volume is not a DICOM volume read by defacer, or an input file changed.
    """
    frames: tuple[FrameRef, ...] | None = volume.extra.get("frames")
    if volume.format != "dicom" or not frames:
        raise DicomSeriesError(
            "Only volumes read from a DICOM series can be written as DICOM (they carry the instances to copy). "
            "Save this volume as NIfTI or NRRD instead."
        )
    if volume.raw.shape[2] != len(frames):
        raise DicomSeriesError(f"The volume has {volume.raw.shape[2]} slices but its series has {len(frames)}.")
    out = Path(out_dir)
    root = volume.extra.get("source_root")
    by_file: dict[Path, list[tuple[int, FrameRef]]] = defaultdict(list)
    for k, ref in enumerate(frames):
        by_file[ref.path].append((k, ref))
    files = list(by_file)
    _check_output_folder(out, root, files, force)
    names = _output_names(files, root, deid is not None)
    if deid is not None and deid.cleans_text:
        _collect_identifying(files, deid)
    written = []
    with atomic_outputs([out]) as temps:
        folder = temps[0]
        folder.mkdir()
        for file, name in zip(files, names, strict=True):
            try:
                ds = dcmread_any(file)
                original = ds.pixel_array
            except (OSError, EOFError, ValueError) as err:
                raise DicomSeriesError(f"Cannot read '{file}' again to write its defaced copy ({err}).") from err
            n_frames = int(ds.get("NumberOfFrames", 1) or 1)
            stack = original[None] if n_frames == 1 and original.ndim == 2 else original.copy()
            for k, ref in by_file[file]:
                stack[ref.frame or 0] = _stored_slice(volume, k, ref, stack.dtype, ds)
            _replace_pixels(ds, stack, n_frames)
            if deid is not None:
                deid.scrub(ds, source=str(file))
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            write_instance(ds, target, source=file)
            written.append(out / name)
    return written


def _collect_identifying(files: Iterable[Path], deid: Scrubber) -> None:
    """Let ``deid`` see the identifying values of every file first (free text is cleaned of a study's values)."""
    from pydicom.errors import InvalidDicomError

    for file in files:
        try:
            deid.collect_identifying(dcmread_any(file, stop_before_pixels=True))
        except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # unreadable: it is skipped (or refused) when it is written


def prepare_for_storage(ds: Dataset, source: PathLike | None = None) -> Dataset:
    """Remove from ``ds`` what a stored DICOM file may not hold, in place, and return it.

    Files written by other software carry such things, and pydicom refuses some of them at
    write time (or writes them, which makes a non-conformant file):

    * Command Set elements (group 0000, a network message's header) at any depth;
    * File Meta elements (group 0002) inside the data set body or a sequence item;
    * group length elements (gggg,0000), retired and wrong once a value changed;
    * a file meta group holding other groups, or lacking MediaStorageSOPClassUID,
      MediaStorageSOPInstanceUID or TransferSyntaxUID (filled from the data set);
    * the 128-byte preamble (zeroed: it can hold anything, e.g. an executable header).

    Raises
    ------
    DicomSeriesError
        If the instance has no SOPClassUID/SOPInstanceUID to describe it in the file meta.
    """
    from pydicom.datadict import DicomDictionary
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID

    def strip(dataset: Dataset) -> None:
        for tag in list(dataset.keys()):
            if tag.group in (0x0000, 0x0002) or (tag.element == 0 and not tag.group & 1):
                del dataset[tag]
                continue
            vr = dataset.get_item(tag).VR or DicomDictionary.get(int(tag), ("",))[0]  # implicit VR: raw VR is None
            if vr == "SQ":
                for item in dataset[tag].value or ():
                    strip(item)

    strip(ds)
    where = f"'{source}'" if source is not None else "The instance"
    old_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    meta = FileMetaDataset()
    for element in old_meta:
        if element.tag.group == 0x0002 and element.tag.element != 0:
            meta.add(element)
    for meta_keyword, keyword in (("MediaStorageSOPClassUID", "SOPClassUID"),
                                  ("MediaStorageSOPInstanceUID", "SOPInstanceUID")):
        value = str(ds.get(keyword, "") or "").strip()
        if value:
            setattr(meta, meta_keyword, UID(value))
        elif not str(meta.get(meta_keyword, "") or "").strip():
            raise DicomSeriesError(
                f"{where} has no {keyword}, so it cannot be stored as a DICOM file. It is not an image instance; "
                "remove it from the input."
            )
    if not str(meta.get("TransferSyntaxUID", "") or "").strip():
        implicit, little = ds.original_encoding
        meta.TransferSyntaxUID = UID(
            "1.2.840.10008.1.2" if implicit else ("1.2.840.10008.1.2.1" if little is not False else "1.2.840.10008.1.2.2")
        )
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    return ds


def write_instance(ds: Dataset, path: Path, *, source: PathLike | None = None) -> None:
    """Write one instance as a DICOM Part 10 file (zeroed preamble, file meta, data set).

    The single place defacer writes DICOM files: :func:`prepare_for_storage` runs first, so
    every file gets a zeroed preamble and holds no command or misplaced meta elements.
    Little-endian transfer syntaxes take a direct path (elements never decoded are copied as
    read, no deep copy of the meta group); deflated and big-endian ones go through pydicom's
    ``dcmwrite``.  ``path`` must not exist.

    Raises
    ------
    DicomSeriesError
        If the instance cannot be stored (see :func:`prepare_for_storage`) or encoded.
    """
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    prepare_for_storage(ds, source)
    syntax = ds.file_meta.get("TransferSyntaxUID")
    where = f"'{source}'" if source is not None else "an instance"
    buffer = DicomBytesIO()
    try:
        if syntax is None or not syntax.is_transfer_syntax or syntax.is_deflated or not syntax.is_little_endian:
            ds.save_as(buffer, enforce_file_format=True)
        else:
            buffer.write(b"\x00" * 128 + b"DICM")
            write_file_meta_info(buffer, ds.file_meta, enforce_standard=True)
            buffer.is_little_endian = True
            buffer.is_implicit_VR = syntax.is_implicit_VR
            write_dataset(buffer, ds)
    except (ValueError, TypeError, AttributeError, KeyError, OverflowError, NotImplementedError) as err:
        raise DicomSeriesError(
            f"The copy of {where} cannot be encoded as DICOM ({type(err).__name__}: {err}). "
            "The file holds a value its own encoding cannot represent; nothing was written."
        ) from err
    data = buffer.getvalue()
    if data[:128] != b"\x00" * 128:  # never copy a preamble, whatever pydicom does
        data = b"\x00" * 128 + data[128:]
    with path.open("xb") as handle:
        handle.write(data)


def pixel_data_problem(ds: Dataset) -> str:
    """What is wrong with the native (uncompressed) pixel data of ``ds``, or ``""``.

    pydicom reads a file cut inside its pixel data without complaint; the value is then
    shorter than Rows x Columns x Frames x SamplesPerPixel x BitsAllocated / 8.
    Encapsulated (compressed) pixel data is not checked here (decoding checks it).
    """
    if "PixelData" not in ds:
        return ""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_transfer_syntax and syntax.is_encapsulated:
        return ""
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError) as err:
        return f"pixel data without a usable Rows/Columns/BitsAllocated: {err}"
    expected = -(-rows * columns * frames * samples * bits // 8)
    found = len(ds.PixelData or b"")
    if found < expected:
        return f"pixel data holds {found} bytes where Rows, Columns and BitsAllocated need {expected}"
    return ""


def _anonymize_chunk(
    files: Sequence[Path], first: int, folder: Path, deid: Scrubber
) -> tuple[list[tuple[int, str | None, str]], dict[str, Any] | None]:
    """De-identify ``files`` into ``folder/<index>.dcm``; per file ``(index, SeriesInstanceUID or None, why skipped)``."""
    from pydicom.errors import InvalidDicomError

    results: list[tuple[int, str | None, str]] = []
    for index, file in enumerate(files, start=first):
        try:
            ds = dcmread_any(file)
        except InvalidDicomError as err:
            text = str(err)
            results.append((index, None, text if text.startswith("damaged") else unreadable_reason(file)))
            continue
        except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            results.append((index, None, f"damaged or truncated DICOM file ({type(err).__name__})"))
            continue
        if "SOPClassUID" not in ds and "SeriesInstanceUID" not in ds:
            meta = getattr(ds, "file_meta", None)
            if meta is not None and "MediaStorageSOPClassUID" in meta and "DirectoryRecordSequence" not in ds:
                results.append((index, None, INCOMPLETE_INSTANCE))
            else:
                results.append((index, None, "not a DICOM instance (e.g. DICOMDIR)"))
            continue
        problem = pixel_data_problem(ds)
        if problem:
            results.append((index, None, f"damaged or truncated DICOM file ({problem})"))
            continue
        uid = str(ds.get("SeriesInstanceUID", ""))
        deid.scrub(ds, source=str(file))
        write_instance(ds, folder / f"{index:07d}.dcm", source=file)
        results.append((index, uid, ""))
    return results, (deid.mapping.as_dict() if deid.record_mapping else None)


def anonymize_files(
    in_path: PathLike | Sequence[PathLike], out_dir: PathLike, deid: Scrubber, *, force: bool = False, jobs: int = 1
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """De-identify the headers of every DICOM file under ``in_path`` (pixels untouched).

    Output layout: ``out_dir/S001/IM00001.dcm``..., one folder per SeriesInstanceUID in order
    of first appearance (sorted input paths), files in input order: names carry no PHI and
    are the same on every run, whatever ``jobs``.  Documents, pictures and DICOMDIRs are not
    copied and are returned as skipped; a file that may be a damaged instance refuses the
    whole input (nothing is written).

    Parameters
    ----------
    in_path : path-like or sequence of path-like
        A folder (searched recursively), a file, or a list of files.
    out_dir : path-like
        New output folder (appears atomically).
    deid : Scrubber
        The de-identification to apply; its mapping is filled when it records one.
    force : bool
        Replace an existing output folder.
    jobs : int
        Worker processes (1: in this process).  Output is identical for any value.

    Returns
    -------
    written, skipped : list of Path, list of (Path, reason)

    Raises
    ------
    OutputError
        Output exists without ``force`` or overlaps the input.
    DicomSeriesError
        No DICOM file found; a file that may be a damaged instance (random bytes, truncated);
        an instance with burned-in text without opt-in (nothing is written).
    """
    files = _input_files(in_path)
    out = Path(out_dir)
    root = Path(in_path) if isinstance(in_path, str | os.PathLike) and Path(in_path).is_dir() else None
    _check_output_folder(out, root, files, force)
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}.")
    skipped: list[tuple[Path, str]] = []
    written: list[Path] = []
    with atomic_outputs([out]) as temps:
        folder = temps[0]
        work = folder / ".work"
        work.mkdir(parents=True)
        if deid.cleans_text:
            _collect_identifying(files, deid)
        if jobs == 1 or len(files) < 2 * jobs:
            outcomes, _ = _anonymize_chunk(files, 0, work, deid)
        else:
            outcomes = _anonymize_parallel(files, work, deid, jobs)
        damaged = [(files[index], why) for index, uid, why in sorted(outcomes) if uid is None and why.startswith("damaged")]
        if damaged:
            listing = "\n  ".join(f"{p}: {why}" for p, why in damaged[:10])
            raise DicomSeriesError(
                f"{len(damaged)} file(s) in '{in_path}' cannot be read as DICOM, so a series would be written with "
                f"missing instances:\n  {listing}\nRe-export them, or move them out of the input (nothing was written)."
            )
        series_index: dict[str, int] = {}
        counts: dict[int, int] = defaultdict(int)
        for index, uid, why in sorted(outcomes):
            if uid is None:
                skipped.append((files[index], why))
                continue
            number = series_index.setdefault(uid, len(series_index) + 1)
            counts[number] += 1
            name = Path(f"S{number:03d}") / f"IM{counts[number]:05d}.dcm"
            (folder / name).parent.mkdir(exist_ok=True)
            os.replace(work / f"{index:07d}.dcm", folder / name)
            written.append(out / name)
        work.rmdir()
        if not written:
            raise DicomSeriesError(f"No DICOM instance found in '{in_path}'; {len(skipped)} file(s) skipped.")
    for file, why in skipped:
        logger.warning("skipped '%s': %s", file, why)
    return written, skipped


def _anonymize_parallel(files: list[Path], work: Path, deid: Scrubber, jobs: int) -> list[tuple[int, str | None, str]]:
    from concurrent.futures import ProcessPoolExecutor

    size = max(16, -(-len(files) // (jobs * 4)))
    outcomes: list[tuple[int, str | None, str]] = []
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_anonymize_chunk, files[i:i + size], i, work, deid) for i in range(0, len(files), size)]
        for future in futures:
            results, mapping = future.result()
            outcomes.extend(results)
            if mapping is not None:
                deid.mapping.uids.update(mapping["uids"])
                for patient, entry in mapping["patients"].items():
                    deid.mapping.patients.setdefault(patient, {}).update(entry)
    return outcomes


def write_deid_mapping(mapping: dict[str, Any], path: PathLike, *, out_dir: PathLike, force: bool = False) -> Path:
    """Write the original → new identifier map as JSON, never inside the output folder.

    The map re-identifies the data: keep it apart from the de-identified output.

    Raises
    ------
    OutputError
        If ``path`` lies inside ``out_dir``, or exists without ``force``.
    """
    import json

    target = Path(path)
    if target.resolve().is_relative_to(Path(out_dir).resolve()):
        raise OutputError(
            f"The mapping file '{target}' would be inside the de-identified output '{out_dir}', where it would "
            "re-identify the data. Write it somewhere else (it is only written where you ask)."
        )
    check_output_path(target, force=force)
    with atomic_outputs([target]) as (temp,):
        temp.write_text(json.dumps(mapping, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.chmod(temp, 0o600)
    return target
