"""Checking uploaded bytes before anything parses them, and unpacking zipped DICOM series safely.

The client's file name is never used as a path: it only hints at the type (``.mgz`` versus
``.nii.gz``) and is shown back to the same user.  Stored files get names chosen here.
"""

from __future__ import annotations

import shutil
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from defacer.errors import InputImageError

#: Stored name of a detached NRRD header's data file: the stored header is rewritten to name it (never the
#: user's own name for it).
NHDR_DATA_NAME = "input.data"

#: Stored name (server side) of each kind of single-file scan.
STORED_NAMES: dict[str, str] = {
    "nifti-gz": "input.nii.gz",
    "nifti": "input.nii",
    "nrrd": "input.nrrd",
    "nhdr": "input.nhdr",
    "nhdr-data": NHDR_DATA_NAME,
    "mgz": "input.mgz",
    "mgh": "input.mgh",
    "zip": "upload.zip",
}

#: Bytes needed to recognise every supported type (DICOM's "DICM" sits at 128..132).
SNIFF_BYTES = 352

ACCEPTED_TEXT = ("a NIfTI (.nii, .nii.gz), NRRD (.nrrd, or a .nhdr with its data file), MGH/MGZ file, a .zip of a "
                 "DICOM series, or DICOM files")


class UploadTooLarge(InputImageError):
    """The upload exceeds the server's limit."""


class UnsupportedUpload(InputImageError):
    """The uploaded bytes are not of a supported type."""


def human_bytes(n: float) -> str:
    """Format a byte count for people: ``1.5 MB``."""
    for unit in ("bytes", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def _gunzip_head(head: bytes) -> bytes:
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 400)
    except zlib.error:
        return b""


def _is_nifti_header(head: bytes) -> bool:
    if len(head) < 4:
        return False
    return int.from_bytes(head[:4], "little") in (348, 540) or int.from_bytes(head[:4], "big") in (348, 540)


def _is_mgh_header(head: bytes) -> bool:
    return len(head) >= 4 and int.from_bytes(head[:4], "big") == 1


def sniff(head: bytes, display_name: str = "") -> str:
    """Name the type of an upload from its first bytes.

    Parameters
    ----------
    head : bytes
        The first :data:`SNIFF_BYTES` bytes of the upload (fewer if the file is shorter).
    display_name : str
        The name the user's browser gave; used only to tell ``.mgz`` from ``.nii.gz`` when
        the compressed start is ambiguous.

    Returns
    -------
    str
        One of ``"nifti"``, ``"nifti-gz"``, ``"nrrd"``, ``"nhdr"`` (a detached header: its data file comes
        next, see :func:`prepare_nhdr_upload`), ``"mgh"``, ``"mgz"``, ``"zip"``, ``"dicom"``.

    Raises
    ------
    UnsupportedUpload
        For empty files and anything else, saying what was found.
    """
    name = display_name.lower()
    if not head:
        raise UnsupportedUpload("The uploaded file is empty (0 bytes). Choose the scan file again.")
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"NRRD") or name.endswith(".nhdr"):
        if name.endswith(".nhdr") or b"\ndata file:" in head or b"\ndatafile:" in head:
            if not head.startswith(b"NRRD"):
                raise UnsupportedUpload(f"This .nhdr file is not a NRRD header: it looks like {_looks_like(head)}.")
            return "nhdr"
        return "nrrd"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:2] == b"\x1f\x8b":
        inner = _gunzip_head(head)
        if _is_nifti_header(inner) and not name.endswith((".mgz", ".mgh.gz")):
            return "nifti-gz"
        if _is_mgh_header(inner):
            return "mgz"
        if _is_nifti_header(inner):
            return "nifti-gz"
        raise UnsupportedUpload(
            "The uploaded file is gzip-compressed but holds neither a NIfTI nor an MGH header. "
            f"Expected {ACCEPTED_TEXT}."
        )
    if _is_nifti_header(head) and (len(head) < 348 or head[344:347] in (b"n+1", b"n+2", b"ni1", b"ni2")):
        return "nifti"
    if _is_mgh_header(head) and name.endswith((".mgh", ".mgz", ".mgh.gz")):
        return "mgh"  # named .mgz yet not compressed: read as what it is (the load warns; see misnamed_note)
    if name.endswith(".dcm") and head[:2] in (b"\x08\x00", b"\x02\x00"):
        return "dicom"  # DICOM without the 128-byte preamble
    raise UnsupportedUpload(
        f"This file is not a supported scan: it looks like {_looks_like(head)}. "
        f"Expected {ACCEPTED_TEXT}. If it is a scan in another format, convert it first (e.g. with dcm2niix or "
        "3D Slicer)."
    )


def misnamed_note(display_name: str, kind: str) -> str | None:
    """A warning for an upload whose name claims another compression than its bytes (an uncompressed MGH named
    ``.mgz``, a plain NIfTI named ``.nii.gz``, or the reverse), or ``None``.  The page reads it as what it is (the
    command line refuses it and says to rename it); the user should know why the download's ending differs."""
    name = display_name.lower()
    endings = {"mgh": (".mgz", ".mgh.gz"), "nifti": (".nii.gz",), "mgz": (".mgh",), "nifti-gz": (".nii",)}
    claimed = next((ending for ending in endings.get(kind, ()) if name.endswith(ending)), None)
    if claimed is None:
        return None
    packed = kind in ("mgz", "nifti-gz")
    real = {"mgh": ".mgh", "nifti": ".nii", "mgz": ".mgz", "nifti-gz": ".nii.gz"}[kind]
    return (f"The file is named '{claimed}' but is {'' if packed else 'not '}gzip-compressed: it was read as a "
            f"{real} file and the defaced scan downloads as {real}. (The command line asks to rename it to {real}.)")


#: Beginnings of common files that are not scans, named in words for the error message.
_OTHER_KINDS: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG", "a PNG picture"), (b"\xff\xd8\xff", "a JPEG picture"), (b"GIF8", "a GIF picture"),
    (b"%PDF", "a PDF document"), (b"BM", "a BMP picture"), (b"II*\x00", "a TIFF picture"),
    (b"MM\x00*", "a TIFF picture"), (b"7z\xbc\xaf", "a 7-Zip archive"), (b"Rar!", "a RAR archive"),
    (b"\x89HDF", "an HDF5 file"),
)


def _looks_like(head: bytes) -> str:
    """What a file's first bytes look like, in words (never the raw bytes)."""
    for magic, kind in _OTHER_KINDS:
        if head.startswith(magic):
            return kind
    sample = head[:64]
    if sample and all(32 <= c < 127 or c in (9, 10, 13) for c in sample):
        return "text"
    return "binary data of an unknown kind"


def check_nrrd_upload(path: Path) -> None:
    """Refuse a stored NRRD upload whose header, read to its end, names a separate data file.

    :func:`sniff` sees only the first bytes; a header can push its ``data file:`` line past
    them with comment lines.  The reader refuses such files too (``data_files="none"``);
    this check answers at upload time, in words.

    Raises
    ------
    UnsupportedUpload
        For a detached header, or a header too long or damaged to be read.
    """
    from defacer.io.nrrd import data_file_field

    _, header = _read_stored_nrrd_header(path)
    if data_file_field(header) is not None:
        raise UnsupportedUpload(
            "This NRRD header names a separate 'data file' after long comments; name the header .nhdr and choose "
            "it together with its data file, or save the scan as a single .nrrd (e.g. in 3D Slicer)."
        )


def prepare_nhdr_upload(path: Path) -> str:
    """Check a stored detached NRRD header and make it name the data file the server will store; return the name
    the user's data file must have.

    The header is read to its end; it must name one data file (not a list or a numbered pattern).  Its
    ``data file:`` line is rewritten (atomically) to :data:`NHDR_DATA_NAME`, so that reading the scan reads
    exactly the two uploaded files and nothing else; the user's name for the data file is returned (its base
    name: any folder in it is dropped) so the upload of that file can be recognised.

    Raises
    ------
    UnsupportedUpload
        For a header that cannot be read, names no data file, or spreads the voxels over several.
    """
    from defacer.io.atomic import write_bytes_atomic
    from defacer.io.nrrd import data_file_field

    redo = "Save the scan as a single .nrrd (e.g. in 3D Slicer) and upload that."
    lines, header = _read_stored_nrrd_header(path)
    named = data_file_field(header)
    if named is None:
        raise UnsupportedUpload(f"This .nhdr header names no data file: its voxels are missing. {redo}")
    if named.strip().upper().startswith("LIST") or "%" in named:
        raise UnsupportedUpload(f"This .nhdr header spreads its voxels over several data files; defacer reads one. "
                                f"{redo}")
    base = named.strip().replace("\\", "/").rsplit("/", 1)[-1]
    if not base or base in (".", ".."):
        raise UnsupportedUpload(f"This .nhdr header names no usable data file ('{named[:80]}'). {redo}")
    rewritten = [f"data file: {NHDR_DATA_NAME}\n".encode() if _is_data_file_line(line) else line for line in lines]
    write_bytes_atomic(path, b"".join(rewritten))
    return base


def _is_data_file_line(line: bytes) -> bool:
    key = line.split(b":", 1)[0] if b":" in line else b""
    return not line.startswith(b"#") and key.strip().lower().replace(b" ", b"") == b"datafile"


@dataclass
class ZipReport:
    """What :func:`extract_zip` kept and skipped."""

    files: int
    skipped: int
    total_bytes: int


#: Average bytes one central-directory entry may take (46 fixed, name, extra field, comment): far above what
#: zip tools write for a DICOM series (names of a few dozen characters), far below a directory padded to exhaust
#: memory. The directory is read whole, and :mod:`zipfile` keeps one object of about 900 bytes per entry.
MAX_DIRECTORY_BYTES_PER_ENTRY = 256


def zip_directory(archive: Path) -> tuple[int, int] | None:
    """The entry count and central-directory size (bytes) an archive's end record declares, read from its end.

    Parameters
    ----------
    archive : Path
        A stored upload.

    Returns
    -------
    tuple of int or None
        ``(entries, directory_bytes)`` as :mod:`zipfile` would use them (ZIP64 values when the
        ZIP64 locator is present); ``None`` when no end record is found (:mod:`zipfile` then refuses it).
    """
    with archive.open("rb") as handle:
        size = handle.seek(0, 2)
        start = max(0, size - (22 + 0xFFFF + 20 + 56))  # end record, its longest comment, ZIP64 locator and record
        handle.seek(start)
        tail = handle.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        return None
    entries, directory = struct.unpack("<HI", tail[at + 10:at + 16])
    locator = at - 20
    if locator >= 56 and tail[locator:locator + 4] == b"PK\x06\x07" and tail[locator - 56:locator - 52] == b"PK\x06\x06":
        entries, directory = struct.unpack("<QQ", tail[locator - 56 + 32:locator - 56 + 48])
    return int(entries), int(directory)


def _check_zip_directory(archive: Path, max_files: int) -> None:
    """Refuse a zip whose central directory alone would take unbounded memory to read, before reading it."""
    declared = zip_directory(archive)
    if declared is None:
        return
    entries, directory = declared
    most = max_files * 2
    if entries > most or directory > most * MAX_DIRECTORY_BYTES_PER_ENTRY:
        raise UploadTooLarge(
            f"The zip's table of contents lists {entries:,} entries in {directory:,} bytes; this server reads at most "
            f"{max_files} files per series. Zip only the folder of one DICOM series and upload it again."
        )


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def extract_zip(archive: Path, into: Path, *, max_bytes: int, max_files: int) -> ZipReport:
    """Unpack the regular files of a zip into ``into`` under numbered names.

    Member names are never used as paths (no zip-slip); symbolic links, folders, hidden
    files and macOS resource forks are skipped; the unpacked size is counted while
    writing, so a zip bomb stops at ``max_bytes``.  When unpacking fails, ``into`` is removed
    with what was written into it.

    Parameters
    ----------
    archive : Path
        The uploaded zip (server-side name).
    into : Path
        Empty folder that receives ``00001.dcm``, ``00002.dcm``, ...
    max_bytes, max_files : int
        Limits on the unpacked content.

    Raises
    ------
    UnsupportedUpload
        For a damaged zip or one without files.
    UploadTooLarge
        When the unpacked content exceeds a limit, or the table of contents lists far more entries than
        ``max_files`` (checked from the end record before :mod:`zipfile` reads the table into memory).
    """
    _check_zip_directory(archive, max_files)
    try:
        handle = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise UnsupportedUpload(f"The zip file is damaged ({err}). Create it again and upload it.") from err
    try:
        into.mkdir(mode=0o700, parents=True, exist_ok=True)
        return _unpack(handle, into, max_bytes=max_bytes, max_files=max_files)
    except BaseException:
        shutil.rmtree(into, ignore_errors=True)  # never a partial series that a later read would take as whole
        raise


def _unpack(handle: zipfile.ZipFile, into: Path, *, max_bytes: int, max_files: int) -> ZipReport:
    """Body of :func:`extract_zip`: write the kept members of an open zip into ``into``."""
    written = kept = skipped = 0
    with handle:
        members = handle.infolist()
        if len(members) > max_files * 2:
            raise UploadTooLarge(f"The zip holds {len(members)} entries; the limit is {max_files} files.")
        for info in members:
            base = info.filename.replace("\\", "/").rstrip("/").split("/")[-1]
            if info.is_dir() or _is_symlink(info) or not base or base.startswith(".") or "__MACOSX" in info.filename:
                skipped += 1
                continue
            kept += 1
            if kept > max_files:
                raise UploadTooLarge(f"The zip holds more than {max_files} files, the limit of this server.")
            target = into / f"{kept:05d}.dcm"
            try:
                with handle.open(info) as source, target.open("wb") as sink:
                    while block := source.read(1 << 20):
                        written += len(block)
                        if written > max_bytes:
                            raise UploadTooLarge(
                                f"The zip unpacks to more than {max_bytes:,} bytes ({human_bytes(max_bytes)}), the "
                                "upload limit of this server. Upload a single series, or restart the server with a "
                                "larger --max-upload-mb."
                            )
                        sink.write(block)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as err:
                raise UnsupportedUpload(
                    f"The zip file could not be unpacked ({type(err).__name__}: {err}). It may be damaged or "
                    "encrypted: create it again without a password."
                ) from err
    if kept == 0:
        raise UnsupportedUpload("The zip holds no files. Zip the folder of the DICOM series and upload it again.")
    return ZipReport(files=kept, skipped=skipped, total_bytes=written)


def _read_stored_nrrd_header(path: Path) -> tuple[list[bytes], dict[str, Any]]:
    """The header lines and parsed fields of a stored NRRD upload; unreadable: an :class:`UnsupportedUpload` in words."""
    from defacer.io.nrrd import parse_header, read_header_lines

    try:
        with path.open("rb") as handle:
            lines, _ = read_header_lines(handle, path)
        return lines, parse_header(lines, path)
    except InputImageError as err:
        raise UnsupportedUpload(
            f"The NRRD header could not be read ({str(err).replace(str(path), 'the upload')}) Save the scan as a "
            "single .nrrd (e.g. in 3D Slicer) and upload that."
        ) from err
