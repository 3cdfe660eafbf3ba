"""NIfTI-1/2 (.nii, .nii.gz) and MGH/MGZ reading and header-preserving writing via nibabel."""

from __future__ import annotations

import contextlib
import gzip
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.arrayproxy import ArrayProxy
from nibabel.freesurfer.mghformat import MGHError
from nibabel.openers import Opener
from nibabel.volumeutils import array_from_file, array_to_file

from defacer.checks import check_voxel_count
from defacer.errors import InputImageError
from defacer.volume import Volume

log = logging.getLogger(__name__)


def read_nifti_like(path: Path, fmt: str, *, max_voxels: int | None = None) -> Volume:
    """Read a NIfTI or MGH/MGZ file into a :class:`Volume` with its stored values and header.

    Parameters
    ----------
    path : Path
        File to read.
    fmt : {"nifti", "mgh"}
        Expected format (decides which nibabel class reads it).
    max_voxels : int, optional
        Refuse a header declaring more voxels than this before reading any voxel.
    """
    if fmt == "nifti":
        check_extensions(path)
    try:
        # a NaN or infinite voxel size or direction (MGH delta, Mdc) gives a non-finite affine, refused by
        # checks.validate_volume in words; nibabel's numpy warnings while computing it say nothing more
        with np.errstate(invalid="ignore", over="ignore"):
            image: Any = nib.MGHImage.from_filename(str(path)) if fmt == "mgh" else nib.load(str(path))
    except Exception as err:  # nibabel raises many types for bad files
        mismatch = compression_mismatch(path, fmt)
        if mismatch is not None:
            raise InputImageError(mismatch) from err
        if fmt == "nifti" and _readable_to_the_end(path):  # magic checked (defacer.io._sniff), not cut short:
            raise InputImageError(unusable_header_message(path, err)) from err  # a header field is wrong
        if fmt == "mgh" and isinstance(err, KeyError | MGHError):  # an unknown type code (KeyError: the code), zero dims
            what = (f"the data type code {err.args[0]!r}, which is no MGH type (0 uchar, 1 int32, 3 float32, 4 int16)"
                    if isinstance(err, KeyError) else f"a value nibabel refuses ({err})")
            raise InputImageError(
                f"'{path}' has an MGH header with {what}: the header is damaged, or the file is not MGH/MGZ. "
                "Re-export the scan (e.g. with mri_convert)."
            ) from err
        raise InputImageError(
            f"Could not read '{path}' as {fmt.upper()}: {err}. The file may be truncated, corrupt or of "
            "another format; check it opens in a viewer, or re-export it."
        ) from err
    if fmt == "nifti" and not isinstance(image, nib.Nifti1Image | nib.Nifti2Image | nib.Nifti1Pair):
        raise InputImageError(
            f"'{path}' was read as {type(image).__name__}, not NIfTI. Rename it with the extension of its real "
            "format (.nii, .nii.gz, .nrrd, .nhdr, .mgz, .mgh)."
        )
    check_voxel_count(tuple(image.shape), path, max_voxels)
    try:
        raw = _stored_values(image, path)
    except Exception as err:
        raise InputImageError(
            f"Could not read the voxel data of '{path}': {err}. The file is probably truncated or corrupt; "
            "re-export or re-download it."
        ) from err
    slope = float(getattr(image.dataobj, "slope", 1.0))
    inter = float(getattr(image.dataobj, "inter", 0.0))
    if not np.isfinite(slope) or slope == 0:
        slope = 1.0
    if not np.isfinite(inter):
        inter = 0.0
    header = _original_header(path, image) if fmt == "nifti" else image.header.copy()
    unset_geometry = _mgh_unset_geometry(path) if fmt == "mgh" else None
    warnings = header_warnings(header, path) if fmt == "nifti" else [MGH_GEOMETRY_ASSUMED] if unset_geometry else []
    for warning in warnings:
        log.warning("'%s': %s", path.name, warning)
    return Volume(
        raw=raw,
        affine=np.asarray(image.affine, dtype=np.float64),
        slope=slope,
        inter=inter,
        format=fmt,
        header=header,
        extra={"image_class": type(image).__name__, "raw_shape": tuple(raw.shape), "warnings": warnings,
               **({"mgh_stored_geometry": unset_geometry} if unset_geometry else {})},
    )


#: Most bytes of NIfTI header extensions read (64 MiB), and most extensions (a real file has one to three).
MAX_EXTENSION_BYTES = 64 << 20
MAX_EXTENSIONS = 256


def check_extensions(path: Path) -> None:
    """Refuse a NIfTI file whose header extensions would make nibabel read more than it should.

    nibabel reads every extension whole into memory while it reads the header, before any voxel
    count is known: an extension declaring 2 GB of zeros packs into 2 MB of gzip, one declaring a
    negative size reads the rest of the (decompressed) file, and extensions of 8 bytes each become
    millions of objects.  This walks the extension headers the way nibabel does (skipping their
    contents, streamed), so nothing is held.

    Raises
    ------
    InputImageError
        Naming what the header declares and what to do.
    """
    problem = ""
    with contextlib.suppress(Exception), Opener(str(path), "rb") as fileobj:  # unreadable: nibabel says why
        head = fileobj.read(544)
        order = "<" if int.from_bytes(head[:4], "little") in (348, 540) else ">"
        nifti2 = int(np.frombuffer(head[:4], order + "i4")[0]) == 540
        start = 544 if nifti2 else 352
        if len(head) < start or head[start - 4] == 0:
            return  # no extensions (nibabel reads none)
        vox_offset = float(np.frombuffer(head[168:176], order + "i8")[0] if nifti2
                           else np.frombuffer(head[108:112], order + "f4")[0])
        left = vox_offset - start
        fileobj.seek(start)
        total = count = 0
        while left >= 16 and not problem:  # nibabel's loop for a single file (.nii, .nii.gz)
            ext_head = fileobj.read(8)
            if len(ext_head) < 8:
                break  # nibabel refuses a cut extension itself
            esize = int(np.frombuffer(ext_head[:4], order + "i4")[0])
            total += max(esize, 0)
            count += 1
            problem = (f"an extension of {esize} bytes (expected at least 8: its own size and code)" if esize < 8 else
                       f"{total:,} bytes of extensions (defacer reads at most {MAX_EXTENSION_BYTES >> 20} MiB)"
                       if total > MAX_EXTENSION_BYTES else
                       f"more than {MAX_EXTENSIONS} extensions (defacer reads at most {MAX_EXTENSIONS})"
                       if count > MAX_EXTENSIONS else "")
            if problem:
                break
            fileobj.seek(esize - 8, 1)
            left -= esize
    if problem:
        raise InputImageError(
            f"'{path}' has a NIfTI header declaring {problem}: the header is damaged or "
            "made to exhaust memory (a few megabytes of gzip can unpack to gigabytes). If the scan is yours, "
            "remove the extensions (nibabel: img.header.extensions.clear(), then save) or re-export it."
        )


#: Where an MGH header keeps goodRASFlag (int16), delta (3 float32), Mdc (9) and Pxyz_c (3): bytes 28-89.
_MGH_GEOMETRY = slice(28, 90)

#: The warning for an MGH file whose goodRASFlag is 0.
MGH_GEOMETRY_ASSUMED = (
    "the MGH header's goodRASFlag is 0: its voxel sizes and orientation are marked as not valid, so defacer (as "
    "FreeSurfer and nibabel do) assumed 1 mm voxels in FreeSurfer's default coronal orientation (LIA). If the scan "
    "is not stored that way, the face is searched in the wrong place (features not found, or distorted where they "
    "are not); set the geometry first (e.g. mri_convert with --in_orientation and the voxel size) and check the "
    "result with 'defacer verify'. The output header keeps the stored values byte for byte"
)


def _mgh_unset_geometry(path: Path) -> bytes | None:
    """The stored geometry bytes of an MGH/MGZ header whose goodRASFlag is 0, else ``None``.

    nibabel replaces them by its defaults when it reads such a header (and would write those);
    :func:`write_mgh` puts these bytes back.
    """
    with _open_mgh(path, "rb") as fileobj:
        head = fileobj.read(_MGH_GEOMETRY.stop)
    if len(head) < _MGH_GEOMETRY.stop or int(np.frombuffer(head[28:30], ">i2")[0]) != 0:
        return None
    return bytes(head[_MGH_GEOMETRY])


#: The gzip magic number.
GZIP_MAGIC = b"\x1f\x8b"


def compression_mismatch(path: Path, fmt: str) -> str | None:
    """What to tell the user when a file's ending and its compression disagree (an uncompressed NIfTI named
    ``.nii.gz``, a gzipped one named ``.nii``, an uncompressed MGH named ``.mgz``, a gzipped one named ``.mgh``), or
    ``None``.  nibabel reads by the ending: such files failed as "not a gzip file ... truncated, corrupt or of another
    format ... re-export it", or as an unusable header, while renaming is all they need."""
    try:
        with open(path, "rb") as handle:
            gzipped = handle.read(2) == GZIP_MAGIC
    except OSError:
        return None
    name = path.name
    lower = name.lower()
    pairs = {"nifti": (".nii.gz", ".nii"), "mgh": (".mgz", ".mgh")}
    if fmt not in pairs:
        return None
    packed, plain = pairs[fmt]
    if lower.endswith(packed) and not gzipped:
        right = name[: -len(packed)] + plain
        return (f"'{path}' is named '{packed}' but is not gzip-compressed (an uncompressed file under a compressed "
                f"name). Rename it to '{right}' (or compress it with gzip) and give that name.")
    if lower.endswith(plain) and not lower.endswith(packed) and gzipped:
        right = name[: -len(plain)] + packed
        return (f"'{path}' is gzip-compressed but named '{plain}'. Rename it to '{right}' and give that name.")
    return None


def _readable_to_the_end(path: Path) -> bool:
    """Whether the whole file reads (decompressed to its end if gzipped) and holds a NIfTI-1 header's 348 bytes.

    A ``.nii.gz`` cut short (a truncated download) passes the magic check but fails in nibabel with a
    reason about the header ("Cannot work out file type"): that is a damaged file, not a header field
    to fix.  Read only after nibabel refused the file.
    """
    try:
        with Opener(str(path), "rb") as fileobj:
            total = 0
            while chunk := fileobj.read(1 << 22):
                total += len(chunk)
        return total >= 348
    except Exception:  # noqa: BLE001 - gzip, zlib, EOF and OS errors alike: the file cannot be read to its end
        return False


def unusable_header_message(path: Path, err: Exception) -> str:
    """What to tell the user when nibabel refuses a NIfTI header (magic and length already checked).

    nibabel's reason names the field (a NaN ``scl_inter`` with a valid slope, a qform quaternion
    longer than 1, an unknown datatype code); a NIfTI-1 ``dim[0]`` outside 1-7 is named too, since
    nibabel then reads the header in the other byte order and reports whatever that garbles.

    Parameters
    ----------
    path : Path
        The NIfTI file.
    err : Exception
        nibabel's error.

    Returns
    -------
    str
        The message: the file, nibabel's reason, and what to do.
    """
    detail = ""
    with contextlib.suppress(Exception), Opener(str(path), "rb") as fileobj:
        head = fileobj.read(348)
        sizes = [int(np.frombuffer(head[0:4], order + "i4")[0]) for order in "<>"]
        if 348 in sizes:  # NIfTI-1 (NIfTI-2 has 540): dim[0] is the int16 at byte 40
            ndim = int(np.frombuffer(head[40:42], ("<" if sizes[0] == 348 else ">") + "i2")[0])
            if not 1 <= ndim <= 7:
                detail = (f" Its dim[0] (the number of dimensions) is {ndim}, outside 1-7, so nibabel read the header in "
                          "the other byte order, which garbles every field.")
    return (f"'{path}' has a NIfTI header that cannot be used: {err}.{detail} A header field holds an impossible value "
            "(for example a NaN scl_inter, a qform quaternion longer than 1, an unknown datatype code, dim[0] outside "
            "1-7). Fix that field (e.g. with nibabel, or fslhd and fsledithd) or re-export the scan.")


def _stored_values(image: Any, path: Path) -> np.ndarray[Any, Any]:
    """The stored (unscaled) voxel values of ``image``, read from ``path``.

    A gzipped file is decompressed by ISA-L (when installed) instead of zlib, about twice as fast, or was
    decompressed already while the command line started (:mod:`defacer.ahead`); the array is the one
    nibabel's own reading gives (same bytes, dtype, shape and memory order: nibabel's
    :func:`~nibabel.volumeutils.array_from_file` with the image's own proxy geometry).
    """
    proxy = image.dataobj
    if path.name.lower().endswith(".gz") and type(proxy) is ArrayProxy:
        from defacer.ahead import take_bytes

        ahead = take_bytes(path)  # decompressed while the command line imported its libraries, or None
        if ahead is not None:
            count = int(np.prod(proxy.shape, dtype=np.int64))
            offset = int(proxy.offset)
            if 0 <= offset and offset + count * proxy.dtype.itemsize <= len(ahead):
                # nibabel's array_from_file without mmap: an ndarray over a bytearray of the file's bytes
                return np.ndarray(proxy.shape, proxy.dtype, buffer=ahead, offset=offset, order=proxy.order)
        try:
            from isal import igzip
        except ImportError:
            igzip = None  # type: ignore[assignment]  # nibabel's zlib reading below
        if igzip is not None:
            with igzip.open(path, "rb") as stream:
                return array_from_file(proxy.shape, proxy.dtype, stream, offset=proxy.offset, order=proxy.order,
                                       mmap=False)
    return np.asarray(proxy.get_unscaled())


def _original_header(path: Path, image: Any) -> Any:
    """The header exactly as stored, unrepaired (nibabel's loaded header is repaired and its scaling moved)."""
    with Opener(str(path), "rb") as fileobj:
        return type(image.header).from_fileobj(fileobj, check=False)


def header_warnings(header: Any, path: Path) -> list[str]:
    """What nibabel had to repair in a NIfTI header to read it, in words (the header itself stays as stored).

    A zero or negative voxel size (``pixdim[1..3]``) is read as 1 mm or its absolute value:
    when the geometry comes from those sizes (no sform), it is invented, and the warning says so.
    A header with neither a qform nor an sform (both codes 0) has no orientation: nibabel assumes
    LAS voxel axes, which is wrong for a scan stored in another order, and the warning says so.

    Returns
    -------
    list of str
        One sentence per repair (no file name: they go into sidecars); empty for a clean header.
    """
    from nibabel.batteryrunners import BatteryRunner

    fixed, reports = BatteryRunner(type(header)._get_checks()).check_fix(header.copy())
    warnings = []
    for report in reports:
        if report.problem_level < 30:
            continue
        if "pixdim" in report.problem_msg and "qfac" not in report.problem_msg:
            stored = [float(v) for v in header["pixdim"][1:4]]
            used = [float(v) for v in fixed["pixdim"][1:4]]
            if int(fixed["sform_code"]) == 0:
                consequence = (f"defacer used {used} mm instead, so the geometry of this scan (voxel size, where the "
                               "face is searched) is invented, not measured. Check the result, and fix the header "
                               "(e.g. with fslhd/nibabel) if you know the real voxel size")
            else:
                consequence = "the geometry was taken from the header's sform, which is valid"
            warnings.append(
                f"the NIfTI header gives voxel sizes pixdim[1..3] = {stored} (zero or negative); "
                f"{consequence}. The output header keeps the stored values byte for byte."
            )
        else:
            warnings.append(
                f"NIfTI header problem: {report.problem_msg}; read as if {report.fix_msg or 'repaired'}. "
                "The output header keeps the stored values byte for byte."
            )
    extensions = list(getattr(header, "extensions", []) or [])
    if extensions:
        codes = sorted({int(e.get_code()) for e in extensions})
        warnings.append(
            f"the NIfTI header carries {len(extensions)} extension(s) (ecode {', '.join(map(str, codes))}), which the "
            "output keeps byte for byte with the rest of the header: an extension can hold identifying text (a whole "
            "DICOM header, a processing history with names, dates and paths). defacer does not read or clean them; "
            "look at them, and remove them before sharing if they do (e.g. nibabel: img.header.extensions.clear())"
        )
    if int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
        warnings.append(
            "the NIfTI header sets neither a qform nor an sform (qform_code and sform_code are 0), so the scan's "
            "orientation is unknown: defacer assumed nibabel's default, voxel axes pointing left, anterior and superior "
            "(LAS). If the scan is stored in another axis order, the face is searched in the wrong place (features not "
            "found, or distorted where they are not); set the header's orientation first (e.g. fslorient, or nibabel's "
            "set_sform with the scanner's affine) and check the result with 'defacer verify'"
        )
    return warnings


def write_nifti(volume: Volume, path: Path, sha256: Any = None) -> bool:
    """Write ``volume`` as NIfTI with the input's header bytes and stored dtype unchanged.

    The header (including extensions, qform/sform, scl_slope/scl_inter, descriptions) is
    written exactly as read and the stored values follow at ``vox_offset``, so every voxel
    not deliberately changed is bit-identical to the input.  A volume without a header
    (``Volume(raw, affine)``) gets a fresh one (:func:`defacer.io.in_memory.fresh_nifti_header`).

    ``sha256`` (a :func:`hashlib.sha256` object), when given, is updated with the file's bytes as they are
    written where every byte passes through defacer's own writer (``.nii.gz`` by ISA-L's threaded writer);
    returns whether it was, so that the file need not be read back for its digest.
    """
    if volume.header is None:  # a Volume made in memory: a fresh header from its affine and dtype
        from defacer.io.in_memory import fresh_nifti_header

        header = fresh_nifti_header(volume)
    else:
        header = volume.header.copy()
    raw = volume.raw.reshape(volume.extra.get("raw_shape", volume.raw.shape))
    if header.get_data_shape() != raw.shape:
        header.set_data_shape(raw.shape)
    if str(path).endswith((".hdr", ".img")):
        raise InputImageError("NIfTI pairs (.hdr/.img) are not supported for output; use .nii or .nii.gz.")
    with _open_for_writing(path, sha256) as (fileobj, digested):
        header.write_to(fileobj)
        offset = int(header.get_data_offset())
        array_to_file(raw, fileobj, header.get_data_dtype(), offset=offset, intercept=0.0, divslope=1.0, order="F")
    return digested


#: Threads compressing a ``.nii.gz`` (ISA-L's threaded writer; the bytes written do not depend on it).
GZIP_THREADS = 2


class _ForwardWriter:
    """A write-only stream that counts its bytes and seeks forward only, by writing zeros.

    ISA-L's threaded gzip writer cannot seek; nibabel seeks to the header's ``vox_offset`` before
    the voxel data, which lies at or after the end of the header it has just written.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._position = 0

    def write(self, data: Any) -> int:
        """Write ``data`` (bytes or a buffer); returns its length in bytes."""
        size = memoryview(data).nbytes
        self._stream.write(data)
        self._position += size
        return size

    def tell(self) -> int:
        """Bytes written so far."""
        return self._position

    def seek(self, offset: int, whence: int = 0) -> int:
        """Move forward to ``offset`` (from the start) by writing zeros; never backwards."""
        target = offset if whence == 0 else self._position + offset if whence == 1 else -1
        if target < self._position:
            raise OSError(f"cannot seek backwards in a compressed stream (at {self._position}, asked {offset})")
        self.write(bytes(target - self._position))
        return self._position


class _Digested:
    """Passes bytes on to a binary file, adding them to a sha256 on the way (in the writing thread's order)."""

    def __init__(self, file: Any, sha256: Any) -> None:
        self._file = file
        self._sha256 = sha256

    def write(self, data: Any) -> int:
        """Digest ``data`` (bytes or a buffer) and write it; returns what the file's write returns."""
        self._sha256.update(data)
        return int(self._file.write(data))

    def flush(self) -> None:
        """Flush the file."""
        self._file.flush()


@contextlib.contextmanager
def _open_for_writing(path: Path, sha256: Any = None) -> Iterator[tuple[Any, bool]]:
    """A binary writer for ``path`` and whether ``sha256`` gets every byte of the file: gzip via ISA-L's
    threaded writer (about 5x faster than zlib, and its compression runs on :data:`GZIP_THREADS` threads)
    when installed, its compressed bytes digested as they go to the file (when ``sha256`` is given).

    The gzip header carries no modification time and no file name, and the compressed bytes do
    not depend on the number of threads, so the same volume always gives the same bytes, whatever
    the machine, the time or the temporary name it was written under.
    """
    if str(path).endswith(".gz"):
        try:
            from isal import igzip_threaded as threaded_gzip
        except ImportError:
            threaded_gzip = None  # type: ignore[assignment]  # zlib below
        if threaded_gzip is not None:
            with open(path, "wb") as raw:
                target = raw if sha256 is None else _Digested(raw, sha256)
                stream = threaded_gzip.open(target, "wb", compresslevel=1, threads=GZIP_THREADS)
                try:
                    yield _ForwardWriter(stream), sha256 is not None
                finally:
                    stream.close()
            return
    with Opener(str(path), "wb") as fileobj:
        yield fileobj, False


def write_mgh(volume: Volume, path: Path) -> None:
    """Write ``volume`` as MGH/MGZ keeping the input header (voxel sizes, direction cosines, footer).

    A header read with goodRASFlag 0 gets its stored geometry bytes back (nibabel writes its defaults).
    """
    raw = volume.raw.reshape(volume.extra.get("raw_shape", volume.raw.shape))
    image = nib.MGHImage(raw, volume.affine, volume.header.copy() if volume.header is not None else None)
    nib.save(image, str(path))
    stored = volume.extra.get("mgh_stored_geometry")
    if stored:  # goodRASFlag 0: nibabel wrote its assumed geometry; the input's bytes go back
        with _open_mgh(path, "rb") as fileobj:
            data = bytearray(fileobj.read())
        data[_MGH_GEOMETRY] = stored
        with _open_mgh(path, "wb") as fileobj:
            fileobj.write(bytes(data))


@contextlib.contextmanager
def _open_mgh(path: Path, mode: str) -> Iterator[Any]:
    """``path`` opened in binary ``mode`` ("rb" or "wb"), through gzip for ``.mgz`` (no time or name in its header)."""
    with open(path, mode) as raw:
        if not path.name.lower().endswith(".mgz"):
            yield raw
            return
        with gzip.GzipFile(filename="", mode=mode, fileobj=raw, mtime=0) as stream:
            yield stream
