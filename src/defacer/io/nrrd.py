"""NRRD reading and writing (attached ``.nrrd`` and detached ``.nhdr`` + data file) via pynrrd."""

from __future__ import annotations

import bz2
import logging
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import nrrd
import numpy as np

from defacer.checks import check_voxel_count
from defacer.errors import InputImageError
from defacer.files import link_outside
from defacer.volume import Volume

#: NRRD 'space' values whose world axes are LPS (the DICOM convention) or RAS.
_LPS_SPACES = {"left-posterior-superior", "lps"}
_RAS_SPACES = {"right-anterior-superior", "ras"}

log = logging.getLogger(__name__)


def nrrd_affine(header: dict[str, Any], path: Path) -> np.ndarray:
    """Build the (4, 4) voxel-to-RAS+ affine from a NRRD header's space fields."""
    space = str(header.get("space", "")).lower()
    directions = header.get("space directions")
    origin = header.get("space origin")
    if directions is None:
        spacings = header.get("spacings")
        if spacings is None:
            raise InputImageError(
                f"'{path}' has no 'space directions' or 'spacings': its voxel geometry is unknown, so the "
                "face cannot be located in world space. Re-export it with geometry (e.g. from 3D Slicer)."
            )
        directions = np.diag(np.asarray(spacings, dtype=float))
        space = space or "right-anterior-superior"
    directions = np.asarray(directions, dtype=float)
    directions = directions[~np.all(np.isnan(directions), axis=1)] if directions.ndim == 2 else directions
    if directions.shape != (3, 3):
        raise InputImageError(
            f"'{path}' has space directions of shape {directions.shape}; expected a 3D volume with a 3x3 "
            "direction matrix."
        )
    origin = np.zeros(3) if origin is None else np.asarray(origin, dtype=float).ravel()
    if origin.shape != (3,):
        raise InputImageError(f"'{path}' has a space origin with {origin.size} values; expected 3 (x, y, z).")
    # A NaN or infinite entry would only come back as a NaN-filled affine (and numpy warnings on the way): name it.
    for name, values in (("space directions" if header.get("space directions") is not None else "spacings",
                          directions), ("space origin", origin)):
        if not np.all(np.isfinite(values)):
            raise InputImageError(
                f"'{path}' has the NRRD {name} {np.asarray(values).tolist()}; expected finite "
                "numbers (mm). The header's geometry is damaged: re-export the scan (e.g. from 3D Slicer)."
            )
    affine = np.eye(4)
    affine[:3, :3] = directions.T
    affine[:3, 3] = origin
    if space in _LPS_SPACES or space == "":
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    elif space not in _RAS_SPACES:
        raise InputImageError(
            f"'{path}' uses NRRD space '{space}'; defacer reads 'left-posterior-superior' and "
            "'right-anterior-superior'. Resample it to one of those first."
        )
    return affine


#: Where a NRRD header may take its voxel data from (see :func:`read_nrrd`).
DATA_FILE_POLICIES = ("none", "beside", "anywhere")

#: Longest NRRD header read (comments included); real headers are a few kB.
MAX_HEADER_BYTES = 4 * 1024 * 1024

#: NRRD types defacer reads (pynrrd's names); ``block`` and unknown types are refused.
_NUMERIC_TYPES = {name for name, code in nrrd.reader._TYPEMAP_NRRD2NUMPY.items() if code != "V"}

_COMPRESSED = {"gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2"}
_TEXT = {"ascii", "text", "txt"}

#: Bytes read or decompressed at a time.
_CHUNK = 1 << 20
#: Most decompressed bytes skipped before the voxels of gzip or bzip2 data (a positive ``byte skip``, or what lies
#: before the last voxels with ``byte skip: -1``): a header kept inside the stream is a few kilobytes.  Every skipped
#: byte must be decompressed, and a 753-byte bzip2 stream is a gigabyte of zeros (6 s): without a bound a small
#: file kept a reader busy for hours (HOSTILE25).
MAX_SKIPPED_BYTES = 64 * 1024 * 1024


def read_header_lines(handle: BinaryIO, path: Path) -> tuple[list[bytes], int]:
    """Read the header lines of an open NRRD file (magic line first) and the offset where its data starts.

    The header ends at the first blank line or at the end of the file (a detached header
    may end there).  At most :data:`MAX_HEADER_BYTES` are read.

    Raises
    ------
    InputImageError
        If there is no NRRD magic or the header is longer than the limit.
    """
    lines: list[bytes] = []
    size = 0
    while True:
        line = handle.readline(MAX_HEADER_BYTES + 1 - size)
        if not line:
            break
        size += len(line)
        if size > MAX_HEADER_BYTES:
            raise InputImageError(
                f"'{path}' has a NRRD header longer than {MAX_HEADER_BYTES // (1024 * 1024)} MiB (or no blank line "
                "ending it). Real headers are a few kilobytes: the file is damaged or not a NRRD file."
            )
        if lines and not line.strip():
            break
        lines.append(line)
    if not lines or not lines[0].startswith(b"NRRD"):
        raise InputImageError(f"'{path}' does not start with the NRRD magic 'NRRD000x'. It is not a NRRD file.")
    return lines, size


def parse_header(lines: list[bytes], path: Path) -> dict[str, Any]:
    """Parse header lines with pynrrd; parse errors become :class:`InputImageError`."""
    try:
        # numbers beyond what pynrrd casts them to (sizes of 1e20) are refused by the checks that follow; numpy's
        # cast warning on the way says nothing to the user
        with np.errstate(invalid="ignore", over="ignore"):
            return nrrd.read_header(iter(lines))
    except Exception as err:  # pynrrd raises NRRDError, ValueError, IndexError, ... on bad headers
        raise InputImageError(
            f"'{path}' has an unreadable NRRD header ({type(err).__name__}: {err}). Re-export it (e.g. from 3D Slicer)."
        ) from err


def data_file_field(header: dict[str, Any]) -> str | None:
    """The ``data file`` (or ``datafile``) value of a NRRD header, whatever its case; ``None`` when attached."""
    for key, value in header.items():
        if str(key).strip().lower().replace(" ", "") == "datafile":
            return str(value)
    return None


def resolve_data_file(header: dict[str, Any], path: Path, policy: str = "beside") -> Path | None:
    """Where a NRRD header's voxel data lives, checked against ``policy``; ``None`` for attached data.

    Parameters
    ----------
    header : dict
        Parsed header of ``path``.
    path : Path
        The header file.
    policy : {"none", "beside", "anywhere"}
        ``"none"``: the data must follow the header in the same file (used for web uploads).
        ``"beside"`` (default): a detached data file is allowed only as a plain file name in the
        header's own folder (no folder parts, no ``..``, never an absolute path, not a symbolic
        link out of the folder other than into a git-annex store holding it, see
        :func:`defacer.files.link_outside`), so reading a scan never reads any other file.  ``"anywhere"``: any path the header names (an
        explicit opt-in for trusted files).

    Raises
    ------
    InputImageError
        If the header names a data file the policy refuses, a list of files, or a missing file.
    """
    if policy not in DATA_FILE_POLICIES:
        raise ValueError(f"policy must be one of {DATA_FILE_POLICIES}, not {policy!r}")
    name = data_file_field(header)
    if name is None:
        return None
    shown = name if len(name) <= 200 else name[:200] + "..."
    if policy == "none":
        raise InputImageError(
            f"'{path}' is a detached NRRD header: its voxels are in another file ('data file: {shown}'), which is "
            "not read here. Save the scan as a single .nrrd (e.g. in 3D Slicer) and use that."
        )
    if name.split()[0:1] == ["LIST"] or len(name.split()) > 1:
        raise InputImageError(
            f"'{path}' spreads its voxels over several data files ('data file: {shown}'); defacer reads one data "
            "file per header. Save the scan as a single .nrrd (e.g. in 3D Slicer) and use that."
        )
    if policy == "beside":
        parts = name.replace("\\", "/").split("/")
        if (name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or len(parts) > 1
                or name in (".", "..") or not name):
            raise InputImageError(
                f"'{path}' names its data file '{shown}', which is not a plain file name in the header's own folder. "
                "defacer reads only the files of the scan itself: put the data file beside the header and write "
                "its bare name in the 'data file:' line."
            )
        target = path.parent / name
        if target.is_symlink() and link_outside(target, path.parent) is not None:
            raise InputImageError(
                f"'{path}' names its data file '{shown}', a symbolic link to a file outside the header's folder. "
                "defacer reads only the files of the scan itself: copy the data file beside the header (e.g. "
                "'cp -L'), or read it with load_volume(..., data_files=\"anywhere\") if you trust the link."
            )
    else:
        target = Path(name) if Path(name).is_absolute() else path.parent / name
    if not target.is_file():
        raise InputImageError(
            f"The data file '{shown}' named by '{path}' is missing or not a regular file. Keep the data file beside "
            "its .nhdr header."
        )
    return target


def read_nrrd(path: Path, *, data_files: str = "beside", max_voxels: int | None = None) -> Volume:
    """Read an attached or detached NRRD file into a :class:`Volume` (physical values = stored values).

    Parameters
    ----------
    path : Path
        The ``.nrrd`` file or ``.nhdr`` header.
    data_files : {"beside", "none", "anywhere"}
        Which detached data files may be read (see :func:`resolve_data_file`).
    max_voxels : int, optional
        Refuse, before reading any voxel, a header declaring more voxels than this.

    Raises
    ------
    InputImageError
        For a bad header, a refused or missing data file, too many voxels, or data that does
        not match the header.  Memory use is bounded by the declared size: extra data (for
        example a gzip bomb) is never decompressed into memory.
    """
    with path.open("rb") as handle:
        lines, offset = read_header_lines(handle, path)
    header = parse_header(lines, path)
    data_path = resolve_data_file(header, path, data_files)
    dtype, sizes = _layout(header, path, max_voxels)
    data = _read_data(header, data_path or path, 0 if data_path else offset, dtype, sizes)
    affine = nrrd_affine(header, path)
    warnings = orientation_warnings(header)
    for warning in warnings:
        log.warning("'%s': %s", path.name, warning)
    return Volume(
        raw=data,
        affine=affine,
        format="nrrd",
        header=OrderedDict(header),
        extra={"detached": data_path is not None, "raw_shape": tuple(np.shape(data)), "warnings": warnings},
    )


def orientation_warnings(header: dict[str, Any]) -> list[str]:
    """What :func:`nrrd_affine` had to assume about a header's orientation, in words (no file name: sidecars).

    Space directions without a ``space:`` line are read in LPS; ``spacings`` without space
    directions are read as RAS voxel axes.  Either guess puts the face elsewhere for a scan
    stored otherwise.

    Returns
    -------
    list of str
        One sentence per assumption; empty when the header names its space.
    """
    if str(header.get("space", "")).strip():
        return []
    advice = ("If the scan is not stored that way, the face is searched in the wrong place (features not found, or "
              "distorted where they are not); add the header's 'space:' line (e.g. re-export it from 3D Slicer) and "
              "check the result with 'defacer verify'")
    if header.get("space directions") is not None:
        return ["the NRRD header gives space directions but names no space (no 'space:' line), so its world axes are "
                "unknown: defacer assumed 'left-posterior-superior' (LPS, the DICOM convention). " + advice]
    if header.get("spacings") is not None:
        return ["the NRRD header gives only 'spacings' (no space, no space directions), so its orientation is "
                "unknown: defacer assumed voxel axes pointing right, anterior and superior (RAS). " + advice]
    return []


def _layout(header: dict[str, Any], path: Path, max_voxels: int | None) -> tuple[np.dtype, tuple[int, ...]]:
    """Check type, sizes, dimension and encoding of a header; return the stored dtype and the sizes."""
    missing = [f for f in ("type", "dimension", "sizes", "encoding") if f not in header]
    if missing:
        raise InputImageError(f"'{path}' lacks the required NRRD field(s) {', '.join(missing)}. Re-export it.")
    kind = str(header["type"])
    if kind not in _NUMERIC_TYPES:
        raise InputImageError(f"'{path}' stores NRRD type '{kind[:40]}'; defacer reads integer and float voxels.")
    sizes = tuple(int(n) for n in np.atleast_1d(header["sizes"]))
    if int(header["dimension"]) != len(sizes) or not sizes or min(sizes) < 1:
        raise InputImageError(
            f"'{path}' declares dimension {header['dimension']} with sizes "
            # pynrrd reads a size beyond 64-bit integers (1e20) as the most negative one: say so, not that number
            f"{[n if n > -2**62 else 'beyond any file' for n in sizes][:8]}; expected as many "
            "positive sizes as dimensions."
        )
    check_voxel_count(sizes, path, max_voxels)
    encoding = str(header["encoding"]).lower()
    if encoding != "raw" and encoding not in _COMPRESSED and encoding not in _TEXT:
        raise InputImageError(f"'{path}' uses NRRD encoding '{encoding[:40]}'; defacer reads raw, gzip, bzip2 and ascii.")
    dtype = np.dtype(nrrd.reader._TYPEMAP_NRRD2NUMPY[kind])
    if dtype.itemsize > 1 and encoding not in _TEXT:
        endian = str(header.get("endian", "")).lower()
        if endian not in ("little", "big"):
            raise InputImageError(f"'{path}' needs an 'endian: little' or 'endian: big' line for {kind} voxels.")
        dtype = dtype.newbyteorder("<" if endian == "little" else ">")
    return dtype, sizes


def _read_data(header: dict[str, Any], data_path: Path, offset: int, dtype: np.dtype,
               sizes: tuple[int, ...]) -> np.ndarray:
    """Read exactly the declared voxels, never holding more than their size (plus one chunk) in memory."""
    count = int(np.prod(sizes, dtype=np.int64))
    nbytes = count * dtype.itemsize
    encoding = str(header["encoding"]).lower()
    try:
        line_skip = int(header.get("line skip", header.get("lineskip", 0)))
        byte_skip = int(header.get("byte skip", header.get("byteskip", 0)))
    except (TypeError, ValueError) as err:
        raise InputImageError(f"'{data_path}' has a non-integer line skip or byte skip.") from err
    if line_skip < 0 or byte_skip < -1:
        raise InputImageError(
            f"'{data_path}' has line skip {line_skip} / byte skip {byte_skip}; expected >= 0 (byte skip may be -1)."
        )
    if encoding in _COMPRESSED and byte_skip > MAX_SKIPPED_BYTES:
        raise InputImageError(
            f"'{data_path}' has byte skip {byte_skip:,} for {encoding} voxel data: that many bytes would be "
            f"decompressed and thrown away before the voxels; defacer skips at most {MAX_SKIPPED_BYTES:,} (a header "
            "inside compressed data is a few kilobytes). The header does not match the data: re-export the scan."
        )
    with data_path.open("rb") as handle:
        handle.seek(offset)
        for _ in range(line_skip):
            if not handle.readline(_CHUNK):  # the end of the file: a huge line skip must not loop on
                break
        if encoding in _TEXT:
            try:
                values = np.fromfile(handle, dtype=dtype, count=count + 1, sep=" ")
            except ValueError as err:
                raise InputImageError(
                    f"'{data_path}' has ASCII voxel data that are not all numbers ({err}). Re-export the scan."
                ) from err
            buffer = values.tobytes() if values.size == count else b""
        elif encoding == "raw":
            if byte_skip == -1:
                start = handle.tell()
                end = handle.seek(0, 2)
                buffer = b""
                if end - start >= nbytes:
                    handle.seek(end - nbytes)
                    buffer = handle.read(nbytes)
            else:
                handle.seek(byte_skip, 1)
                buffer = handle.read(nbytes + 1)
        else:
            buffer = _decompress(handle, _COMPRESSED[encoding], byte_skip, nbytes, data_path)
    if len(buffer) != nbytes:
        found = f"{len(buffer):,}" if len(buffer) <= nbytes else f"more than {nbytes:,}"
        raise InputImageError(
            f"'{data_path}' holds {found} bytes of voxel data where its NRRD header declares {nbytes:,} "
            f"({' x '.join(map(str, sizes))} {dtype.name}). The file is truncated, or its header does not match it."
        )
    data = np.frombuffer(bytearray(buffer), dtype=dtype).reshape(sizes[::-1]).T
    return data


def _decoded_chunks(handle: BinaryIO, decoder: Any, kind: str) -> Iterator[bytes]:
    """Decompressed pieces of at most :data:`_CHUNK` bytes each, until the end of the compressed stream."""
    while data := handle.read(_CHUNK):
        while True:
            out = decoder.decompress(data, _CHUNK)
            if kind == "gzip":
                data = decoder.unconsumed_tail
                more = bool(data)
            else:
                data = b""
                more = not decoder.eof and not decoder.needs_input
            if out:
                yield out
            if decoder.eof:
                return
            if not more:
                break


def _decompress(handle: BinaryIO, kind: str, byte_skip: int, nbytes: int, path: Path) -> bytes:
    """Decompress just enough: ``byte_skip`` bytes skipped, then ``nbytes`` kept (the last ones when -1).

    Returns ``nbytes + 1`` bytes or more when the stream holds more than declared (refused by the caller).
    """
    decoder: Any = zlib.decompressobj(zlib.MAX_WBITS | 16) if kind == "gzip" else bz2.BZ2Decompressor()
    kept = bytearray()
    skip = max(byte_skip, 0)
    seen = 0  # decompressed bytes after the skip (byte skip -1: all of them)
    try:
        for out in _decoded_chunks(handle, decoder, kind):
            if skip:
                dropped = min(skip, len(out))
                out, skip = out[dropped:], skip - dropped
            kept += out
            seen += len(out)
            if byte_skip == -1:
                if seen - nbytes > MAX_SKIPPED_BYTES:
                    raise InputImageError(
                        f"'{path}' holds more than {MAX_SKIPPED_BYTES:,} bytes of {kind} data before its last "
                        f"{nbytes:,} (byte skip -1: the voxels are the last bytes): defacer decompresses no more than "
                        "that before the voxels (a header inside compressed data is a few kilobytes). The header "
                        "does not match the data: re-export the scan."
                    )
                del kept[: max(0, len(kept) - nbytes)]
            elif len(kept) > nbytes:
                break
    except InputImageError:  # the bound above (a ValueError too): said as it is
        raise
    except (zlib.error, OSError, EOFError, ValueError) as err:
        raise InputImageError(
            f"'{path}' has damaged {kind} voxel data ({err}). It is probably truncated: re-export or re-download it."
        ) from err
    return bytes(kept)


def write_nrrd(volume: Volume, path: Path) -> list[Path]:
    """Write ``volume`` as NRRD with its original header fields; returns every file written.

    A ``.nhdr`` output gets a detached data file named after it (``NAME.raw.gz`` for gzip
    encoding, ``NAME.raw`` otherwise) in the same folder.
    """
    header = OrderedDict(volume.header)
    header.pop("data file", None)
    header.pop("datafile", None)
    detached = path.suffix.lower() == ".nhdr"
    raw = volume.raw.reshape(volume.extra.get("raw_shape", volume.raw.shape))
    nrrd.write(str(path), raw, header, detached_header=detached, index_order="F")
    _drop_timestamp(path)
    written = [path]
    if detached:
        written.extend(p for p in path.parent.iterdir() if p.name.startswith(path.stem + ".") and p != path)
    return written


def _drop_timestamp(path: Path) -> None:
    """Remove pynrrd's "# on <date>" header comment, so the same volume always gives the same bytes."""
    data = path.read_bytes()
    end = data.find(b"\n\n")
    head = data if end < 0 else data[: end + 1]
    lines = [line for line in head.split(b"\n") if not line.startswith(b"# on ")]
    cleaned = b"\n".join(lines)
    if cleaned != head:
        path.write_bytes(cleaned + (b"" if end < 0 else data[end + 1 :]))


def detached_data_name(path: Path, header: dict[str, Any]) -> str:
    """Name of the data file pynrrd writes beside a ``.nhdr`` header ``path``."""
    encoding = str(header.get("encoding", "raw")).lower()
    suffix = {"gzip": ".raw.gz", "gz": ".raw.gz", "bzip2": ".raw.bz2", "bz2": ".raw.bz2"}.get(encoding, ".raw")
    if encoding in {"ascii", "text", "txt"}:
        suffix = ".txt"
    return path.stem + suffix
