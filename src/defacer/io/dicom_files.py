"""Single DICOM files, read and written safely: the primitives the series reader, the writer and
the header-only anonymiser share.

Reading accepts files without the Part 10 preamble and refuses hostile nesting
(:func:`dcmread_any`); every file defacer writes goes through :func:`write_instance` (zeroed
preamble, clean file meta); :func:`check_output_folder` keeps outputs out of the input.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from defacer._typing import PathLike
from defacer.errors import DicomSeriesError, OutputError, shown
from defacer.files import files_under, link_outside, walk
from defacer.io.atomic import check_output_path

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from defacer.phi.scrub import Scrubber

logger = logging.getLogger(__name__)


def input_files(path: PathLike | Sequence[PathLike], *, warn_linked_folders: bool = False) -> list[Path]:
    """The files of a DICOM input: every file under a folder (sorted), a single file, or a list of files.

    Only the folder's own files are read: a symbolic link in it that leads out of it (other than
    into a git-annex store holding it, see :func:`defacer.files.link_outside`) refuses the input.
    Links to folders are not entered; ``warn_linked_folders`` says so (once per run: the reader).

    Raises
    ------
    DicomSeriesError
        For a missing path, an empty folder, a link out of the folder, or missing listed files.
    """
    if isinstance(path, str | os.PathLike):
        p = Path(path)
        if not p.exists():
            raise DicomSeriesError(f"No such file or folder: '{p}'. Check the path.")
        if p.is_dir():
            files = sorted(f for f in files_under(p) if not f.name.startswith(".defacer-tmp"))
            linked = _linked_folders(p)
            if linked and warn_linked_folders and p.resolve() not in _WARNED_LINKS:
                _WARNED_LINKS.add(p.resolve())  # a run lists the series, then reads one: said once
                logger.warning(
                    "'%s' holds %d link(s) to folders, not entered (defacer reads only the folders it is given): %s. "
                    "Give the linked series as inputs of their own, or copy them in ('cp -rL').", p, len(linked),
                    ", ".join(f"'{f}'" for f in linked[:5]) + (" ..." if len(linked) > 5 else ""))
            if not files:
                raise DicomSeriesError(f"The folder '{p}' is empty: expected DICOM files (one per slice or multi-frame)"
                                       + (f"; it holds only links to folders, which are not entered ('{linked[0]}')."
                                          if linked else "."))
            _refuse_links_out(files, p)
            return files
        if not p.is_file():  # a named pipe would block the reader forever
            raise DicomSeriesError(f"'{p}' is not a regular file (a pipe, socket or device): expected a DICOM file or "
                                   "a folder of DICOM files.")
        return [p]
    files = [Path(f) for f in path]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DicomSeriesError(f"These DICOM files do not exist: {', '.join(missing[:5])}. Check the paths.")
    return sorted(files)


def same_file(first: Path, second: Path) -> bool:
    """Whether two files of an input are one file twice: a link to the other, a hard link, or a byte-identical copy."""
    import filecmp

    try:
        return first != second and (os.path.samefile(first, second) or filecmp.cmp(first, second, shallow=False))
    except OSError:
        return False


def one_instance_twice(source: str, first: str, second: str, same: bool) -> str:
    """The refusal of an input holding one DICOM instance (SOP Instance UID) in two files, for ``anonymize`` and
    ``deface`` alike.

    Parameters
    ----------
    source : str
        The input as shown to the user.
    first, second : str
        The two files, as shown (escaped where hostile).
    same : bool
        Whether they are one file twice (:func:`same_file`) rather than two different files.
    """
    if same:
        return (f"'{source}' holds one DICOM file twice: '{first}' and '{second}' are the same file (a copy, or a link "
                "to it), and the output would hold its instance twice. Remove one of them (nothing was written).")
    return (f"'{source}' holds two different files of one instance: '{first}' and '{second}' carry the same SOP "
            "Instance UID but differ (a re-export beside the first export, a header edited by hand), and the output "
            "would hold two instances of one UID, of which an archive keeps one or refuses the series. Keep the file "
            "you mean and move the other out of the input (nothing was written).")


def refuse_one_instance_twice(source: str, files: Sequence[Path], instances: Iterable[tuple[int, str]]) -> None:
    """Refuse an input holding one SOP Instance UID in two of ``files`` (:func:`one_instance_twice`'s words).

    Parameters
    ----------
    source : str
        The input as shown to the user.
    files : sequence of Path
        The input's files.
    instances : iterable of (int, str)
        ``(index into files, SOP Instance UID)`` in the order to look (``""``: none, skipped).  Only two files of
        one instance are compared (:func:`same_file`): no file is read again unless it repeats an instance.

    Raises
    ------
    DicomSeriesError
        Naming the first two files of one instance.
    """
    first: dict[str, int] = {}
    for index, instance in instances:
        if not instance:
            continue
        seen = first.setdefault(instance, index)
        if seen != index:
            a, b = files[seen], files[index]
            raise DicomSeriesError(one_instance_twice(source, shown(a), shown(b), same_file(a, b)))


#: DICOM folders whose links to folders were warned about in this process.
_WARNED_LINKS: set[Path] = set()


def _linked_folders(folder: Path) -> list[Path]:
    """Symbolic links to folders below ``folder`` (the search for files does not enter them)."""
    found: list[Path] = []
    for here, dirnames, _ in walk(folder):
        found += [Path(here) / name for name in dirnames if (Path(here) / name).is_symlink()]
    return sorted(found)


def _refuse_links_out(files: Sequence[Path], folder: Path) -> None:
    """Refuse a DICOM folder holding symbolic links to files outside it.

    Raises
    ------
    DicomSeriesError
        Naming the links (at most 5).
    """
    outside = [f for f in files if link_outside(f, folder) is not None]
    if outside:
        shown = ", ".join(f"'{f}'" for f in outside[:5]) + (f" and {len(outside) - 5} more" if len(outside) > 5 else "")
        raise DicomSeriesError(
            f"The DICOM folder '{folder}' holds {len(outside)} symbolic link(s) to files outside it: {shown}. "
            "defacer reads only the files of the folder it is given (links could pull any file of this machine into "
            "the output). Copy those files into the folder (e.g. 'cp -L') if they belong to the series, or remove "
            "the links; nothing was written."
        )


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
    """Raise InvalidDicomError when sequences nest deeper than :data:`MAX_SEQUENCE_DEPTH` (walked without recursion).

    An element whose reading was deferred (:func:`read_header`'s ``defer_size``) stays unread: ``get_item`` read it
    to learn its VR, so the headers of a whole series were held whole, bloat included (a series of 80 files, each with a
    20 MB private OB element: 1.65 GB kept by the reading of its headers, 1.78 GB for the whole ``deface``).
    """
    from pydicom.datadict import DicomDictionary
    from pydicom.errors import InvalidDicomError

    stack = [(ds, 0)]
    while stack:
        dataset, depth = stack.pop()
        for tag in list(dataset.keys()):
            vr = dataset.get_item(tag, keep_deferred=True).VR or DicomDictionary.get(int(tag), ("",))[0]
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


#: Most bytes a deflated data set (transfer syntax 1.2.840.10008.1.2.1.99) may inflate to: 512 MiB, a 512^3
#: volume of 32-bit voxels. pydicom inflates the whole data set in memory before reading any element, and deflate
#: packs up to about 1,000 bytes into one: a 1 MB file of zeros took 2.1 GB, a 20 MB one would take 40 GB.
MAX_INFLATED_BYTES = 512 << 20


def _check_inflated_size(path: Path) -> None:
    """Refuse a deflated DICOM file whose data set inflates beyond :data:`MAX_INFLATED_BYTES`, counted in bounded steps.

    Files of any other transfer syntax, and files whose meta group pydicom cannot read, pass
    unchanged (pydicom judges them); a damaged deflate stream passes too (pydicom refuses it).

    Raises
    ------
    pydicom.errors.InvalidDicomError
        Starting with "damaged or hostile", naming the limit.
    """
    import zlib

    from pydicom.errors import InvalidDicomError
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.uid import UID

    with path.open("rb") as handle:
        try:
            read_preamble(handle, True)  # no "DICM": back at the start (a raw file may still begin with group 2)
            meta = _read_file_meta_info(handle)
            syntax = UID(str(meta.get("TransferSyntaxUID", "") or "").strip())
            if not (syntax.is_transfer_syntax and syntax.is_deflated):
                return
        except Exception:  # noqa: BLE001 - not readable as a meta group: pydicom's own reading decides
            return
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        limit = MAX_INFLATED_BYTES
        total = 0
        step = 1 << 22
        try:
            while chunk := handle.read(1 << 20):
                pending = chunk
                while pending:
                    total += len(inflater.decompress(pending, step))
                    pending = inflater.unconsumed_tail
                    if total > limit:
                        raise InvalidDicomError(
                            f"damaged or hostile DICOM file (its deflated data set inflates to more than "
                            f"{limit >> 20} MiB, the most defacer reads from one file; re-export it uncompressed)"
                        )
                if inflater.eof:
                    return
        except zlib.error:
            return


#: Most bytes of one DICOM file defacer reads: 1 GiB, twice a 512^3 volume of 32-bit voxels (the most the default
#: voxel limit lets through) in one multi-frame file.  pydicom reads a file whole, every element and the pixels, and
#: the reading holds copies of them: a file of several GB took that much memory and more.  A head series stored as one
#: file per slice is a few hundred KB a file.
MAX_FILE_BYTES = 1 << 30


class _BoundedReader(io.BufferedReader):
    """A file whose reads never ask for more bytes than are left in it.

    pydicom reads an element's value with ``read(length)`` of the length the element declares, and Python allocates
    that length before reading: a 1 KB file whose PixelData declared 2 GiB took 2 GiB (under a memory limit: "out of
    memory"), then gave the 512 bytes left as if they were the value.  :attr:`overrun` keeps the first read that asked
    for more than was left (``(asked, left)``), which :func:`dcmread_any` refuses.
    """

    #: Reads of up to this many bytes are left alone: the preamble (128), a tag, a length (pydicom reads them at the
    #: end of a file to find that it ends).
    SMALL = 128

    def __init__(self, raw: io.FileIO, size: int) -> None:
        super().__init__(raw)
        self.size = size
        self.overrun: tuple[int, int] | None = None

    def read(self, size: int | None = -1, /) -> bytes:
        if size is not None and size > self.SMALL:
            left = max(self.size - self.tell(), 0)
            if size > left:
                self.overrun = self.overrun or (size, left)
                size = left
        return super().read(size)


def _read_bounded(path: Path, **kwargs: Any) -> Dataset:
    """``pydicom.dcmread`` of ``path`` through a :class:`_BoundedReader`, refusing a file over :data:`MAX_FILE_BYTES`
    before a byte of it is read, and one with an element declaring more bytes than the file holds."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    with io.FileIO(os.fspath(path), "r") as raw:  # a str name: pydicom re-opens it by name for a deferred value
        size = os.fstat(raw.fileno()).st_size
        if size > MAX_FILE_BYTES:
            refusal = InvalidDicomError(
                f"damaged or too large DICOM file ({size:,} bytes, larger than the {MAX_FILE_BYTES >> 20} MiB defacer "
                "reads from one DICOM file: a head scan needs far less; re-export the series as one file per slice, "
                "or move this file out of the input)")
            refusal.too_large = size  # type: ignore[attr-defined]  # scan reads its header alone: see too_large()
            raise refusal
        handle = _BoundedReader(raw, size)
        try:
            ds = pydicom.dcmread(handle, **kwargs)
        finally:
            handle.detach()  # the FileIO is closed by its own with-statement
    if handle.overrun is not None:
        asked, left = handle.overrun
        raise InvalidDicomError(
            f"damaged or truncated DICOM file (an element declares {asked:,} bytes but only {left:,} are left in the "
            "file; re-export it)")
    ds.fileobj_type = _open_bounded  # a deferred value is read bounded too
    return ds


def too_large(err: BaseException) -> bool:
    """Whether ``err`` refused a file for its size alone (over :data:`MAX_FILE_BYTES`), before a byte was read."""
    return getattr(err, "too_large", None) is not None


#: Most bytes read of a file over :data:`MAX_FILE_BYTES` to learn, from its header alone, which series it belongs to
#: (:func:`header_of_a_large_file`): 4 MiB, the NRRD header's bound; a head series' header is a few KB, an enhanced
#: multi-frame one of hundreds of frames well under a MB.
MAX_LARGE_HEADER_BYTES = 4 << 20


class _HeaderTooLong(Exception):
    """A header read by :class:`_CappedReader` went on past its cap."""


class _CappedReader(io.BufferedReader):
    """A file of which at most ``cap`` bytes are read in all (seeks are free); a read beyond raises
    :class:`_HeaderTooLong` before it is made, whatever length it asks for."""

    def __init__(self, raw: io.FileIO, cap: int) -> None:
        super().__init__(raw)
        self.cap = cap
        self.taken = 0

    def read(self, size: int | None = -1, /) -> bytes:
        if size is None or size < 0 or self.taken + size > self.cap:
            raise _HeaderTooLong
        data = super().read(size)
        self.taken += len(data)
        return data


#: The tags of top-level pixel data (PixelData, FloatPixelData, DoubleFloatPixelData): a header ends there.
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})


def header_of_a_large_file(path: Path) -> Dataset | None:
    """The header of a DICOM file too large to be read whole, read up to its pixel data, or ``None``.

    A file over :data:`MAX_FILE_BYTES` is refused when it is read; but in a folder of several series it may belong
    to a series the user did not ask for, and another series' files are left out unread.  Its header alone tells
    its series: at most :data:`MAX_LARGE_HEADER_BYTES` are read (no value is deferred, so nothing is read later),
    and the reading stops before the pixel data.

    Returns
    -------
    pydicom.dataset.Dataset or None
        The header, without pixel data, when it ended at top-level pixel data within the cap and names a
        SeriesInstanceUID; ``None`` otherwise (a header longer than the cap, bloat before the pixels, no pixels,
        no series, or not readable as DICOM): the file is then refused as it was.
    """
    from pydicom.errors import InvalidDicomError
    from pydicom.filereader import read_partial

    at_pixels = False

    def stop(tag: int, vr: str | None, length: int) -> bool:
        nonlocal at_pixels
        at_pixels = at_pixels or tag in _PIXEL_TAGS
        return at_pixels

    for force in (False, True):
        at_pixels = False
        try:
            with io.FileIO(os.fspath(path), "r") as raw:
                handle = _CappedReader(raw, MAX_LARGE_HEADER_BYTES)
                try:
                    ds = read_partial(handle, stop_when=stop, force=force)  # type: ignore[arg-type]
                finally:
                    handle.detach()
            _check_depth(ds)
        except InvalidDicomError:
            if force or not _looks_like_raw_dicom(path):
                return None
            continue  # no preamble: read it as dcmread_any would
        except (_HeaderTooLong, RecursionError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError,
                NotImplementedError):
            return None
        break
    if not at_pixels or not str(ds.get("SeriesInstanceUID", "") or "").strip():
        return None
    return ds


def _open_bounded(name: str, mode: str = "rb") -> _BoundedReader:
    """``open(name, "rb")`` for pydicom's deferred reads, as a :class:`_BoundedReader`."""
    raw = io.FileIO(name, "r")
    return _BoundedReader(raw, os.fstat(raw.fileno()).st_size)


def _dcmread(path: Path, **kwargs: Any) -> Dataset:
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    _check_inflated_size(path)
    try:
        return _read_bounded(path, **kwargs)
    except InvalidDicomError as err:
        if str(err).startswith("damaged") or not _looks_like_raw_dicom(path):
            raise
    ds = _read_bounded(path, force=True, **kwargs)
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        if little is False:
            ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
        else:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return ds


def read_header(path: Path) -> Dataset:
    from pydicom.errors import InvalidDicomError

    try:
        return dcmread_any(path, defer_size=512)
    except InvalidDicomError:
        raise
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError, NotImplementedError) as err:
        raise InvalidDicomError(f"damaged or truncated DICOM file ({type(err).__name__}: {err})") from err



def check_output_folder(out_dir: Path, volume_root: Path | None, sources: Iterable[Path], force: bool) -> None:
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



def collect_identifying(files: Iterable[Path], deid: Scrubber) -> None:
    """Let ``deid`` see the identifying values of every file first (free text is cleaned of a study's values)."""
    from pydicom.errors import InvalidDicomError

    from defacer.io.dicom_vr_notice import vr_notices

    for file in files:
        try:
            with vr_notices(file):  # pydicom's "VR lookup failed" once per element and series, not per file
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



#: JPEG start-of-frame markers (SOF0-SOF15 but DHT C4, JPG C8, DAC CC) and JPEG-LS's SOF55 (F7).
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})


def codestream_size(frame: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) a JPEG, JPEG-LS or JPEG 2000 frame declares in its own header, else ``None``.

    Read from the start-of-frame segment (JPEG, JPEG-LS) or the SIZ segment (JPEG 2000, raw
    codestream or inside a JP2 file); a frame of another kind, or one too damaged to find it in,
    gives ``None`` (the decoder judges it).
    """
    if frame[:2] == b"\xff\xd8":  # JPEG family: walk the segments up to the frame header
        at = 2
        while at + 4 <= len(frame):  # every step moves on: megabytes of segments before the frame header are walked
            if frame[at] != 0xFF:
                return None
            marker = frame[at + 1]
            if marker == 0xFF:  # fill byte
                at += 1
                continue
            if marker in _JPEG_SOF and at + 10 <= len(frame):
                rows, columns = int.from_bytes(frame[at + 5:at + 7], "big"), int.from_bytes(frame[at + 7:at + 9], "big")
                return rows, columns, frame[at + 9]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # segments without a length
                at += 2
                continue
            at += 2 + int.from_bytes(frame[at + 2:at + 4], "big")
        return None
    found = 0 if frame[:4] == b"\xff\x4f\xff\x51" else _jp2_codestream(frame)  # JPEG 2000: SOC, then SIZ
    if found < 0 or frame[found:found + 4] != b"\xff\x4f\xff\x51" or found + 42 > len(frame):
        return None
    siz = frame[found + 4:found + 42]
    width = int.from_bytes(siz[4:8], "big") - int.from_bytes(siz[12:16], "big")  # Xsiz - XOsiz (after Lsiz, Rsiz)
    height = int.from_bytes(siz[8:12], "big") - int.from_bytes(siz[16:20], "big")
    return height, width, int.from_bytes(siz[36:38], "big")


def _jp2_codestream(frame: bytes) -> int:
    """Where the codestream of a JP2 file starts (its ``jp2c`` box, found by walking the boxes), or -1."""
    if frame[4:8] != b"jP  ":
        return -1
    at = 0
    while at + 8 <= len(frame):
        size, kind, header = int.from_bytes(frame[at:at + 4], "big"), frame[at + 4:at + 8], 8
        if size == 1:
            size, header = int.from_bytes(frame[at + 8:at + 16], "big"), 16
        if kind == b"jp2c":
            return at + header
        if size < header:
            return -1
        at += size
    return -1


def encapsulated_frames_problem(ds: Dataset) -> str:
    """What is wrong with the compressed frames of ``ds`` before they are decoded, or ``""``.

    A decoder allocates the picture its frame's own header declares, whatever Rows and Columns
    say: a 7 kB JPEG 2000 slice declaring 40,000 x 40,000 pixels made openjpeg take 3.3 GB before it
    failed.  Each frame's declared size and number of components must be the data set's.
    """
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if "PixelData" not in ds or syntax is None or not syntax.is_transfer_syntax or not syntax.is_encapsulated:
        return ""
    from pydicom.encaps import generate_frames

    try:
        expected = (int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1) or 1))
        n_frames = int(ds.get("NumberOfFrames", 1) or 1)
        for k, frame in enumerate(generate_frames(ds.PixelData, number_of_frames=n_frames)):
            declared = codestream_size(frame)
            if declared is not None and declared != expected:
                return (f"its compressed frame {k + 1} declares {declared[0]} x {declared[1]} pixels of "
                        f"{declared[2]} component(s) where Rows, Columns and SamplesPerPixel say {expected[0]} x "
                        f"{expected[1]} of {expected[2]}: the file is damaged or made to exhaust memory when decoded")
    except (AttributeError, TypeError, ValueError, KeyError, EOFError) as err:
        return f"its compressed pixel data cannot be split into frames ({type(err).__name__}: {err})"
    return ""
