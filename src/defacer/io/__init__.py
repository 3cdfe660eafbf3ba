"""Reading and writing scans: the only package in defacer that touches image files.

:func:`load_volume` sniffs the format, reads it, and validates it as a 3D head volume;
:func:`save_volume` writes a volume back in its own format, atomically.
DICOM series live in :mod:`defacer.io.dicom_series`.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np

from defacer._typing import PathLike
from defacer.checks import DEFAULT_MAX_VOXELS, validate_volume
from defacer.errors import InputImageError, OutputError
from defacer.files import IMAGE_FORMATS
from defacer.io.atomic import atomic_outputs, check_output_path
from defacer.volume import Volume

#: File name endings and the format each one means (the one table, :data:`defacer.files.IMAGE_FORMATS`).
SUFFIX_FORMATS: dict[str, str] = IMAGE_FORMATS


def format_of(path: PathLike) -> str:
    """Return the format implied by a file name (``"nifti"``, ``"nrrd"``, ``"mgh"`` or ``"dicom"``).

    A folder means a DICOM series.

    Raises
    ------
    InputImageError
        If the name has none of the supported endings.
    """
    p = Path(path)
    if p.is_dir():
        return "dicom"
    name = p.name.lower()
    for suffix, fmt in SUFFIX_FORMATS.items():
        if name.endswith(suffix):
            return fmt
    if name.endswith(".dcm"):
        return "dicom"
    supported = ", ".join(SUFFIX_FORMATS)
    raise InputImageError(
        f"'{p}' has an unsupported file type: expected one of {supported}, or a folder of DICOM files. "
        "Convert it (e.g. with dcm2niix or 3D Slicer) or rename it if the extension is wrong."
    )


def _sniff(path: Path, fmt: str) -> None:
    """Check the file's first bytes agree with the format its name claims."""
    with path.open("rb") as handle:
        head = handle.read(352)
    if not head:
        raise InputImageError(f"'{path}' is empty (0 bytes). Re-export or re-download the scan.")
    gzipped = head[:2] == b"\x1f\x8b"
    if fmt == "nrrd":
        if not head.startswith(b"NRRD"):
            raise InputImageError(
                f"'{path}' does not start with the NRRD magic 'NRRD000x'; found {head[:8]!r}. It is not a NRRD "
                "file: check the extension."
            )
        return
    if fmt == "nifti":
        if gzipped:
            try:
                with gzip.open(path, "rb") as handle:
                    head = handle.read(352)
            except (OSError, EOFError, zlib.error) as err:
                raise InputImageError(
                    f"'{path}' is a damaged gzip file ({err}). It is probably truncated: re-export or re-download it."
                ) from err
        if len(head) < 348:
            raise InputImageError(
                f"'{path}' is too short for a NIfTI header ({len(head)} of 348 bytes). It is truncated or not NIfTI."
            )
        sizeof = int.from_bytes(head[:4], "little")
        if sizeof not in (348, 540) and int.from_bytes(head[:4], "big") not in (348, 540):
            raise InputImageError(
                f"'{path}' has no NIfTI header (sizeof_hdr is {sizeof}, expected 348 or 540). "
                "It is not a NIfTI file: check the extension or the export."
            )


def load_volume(
    path: PathLike,
    *,
    strict: bool = True,
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    data_files: str = "beside",
) -> Volume:
    """Read a NIfTI, NRRD, MGH/MGZ file or a DICOM series folder as a validated 3D volume.

    Parameters
    ----------
    path : path-like
        The scan. A folder is read as a DICOM series (see :mod:`defacer.io.dicom_series`).
    strict : bool
        Raise on suspicious geometry or values (NaN, absurd voxel sizes).  Always raised
        for problems that make defacing impossible (2D, 4D, empty).
    max_voxels : int or None
        Refuse a NIfTI/NRRD/MGH file whose header (or a DICOM series whose Rows x Columns x
        slices) declares more voxels than this, before reading any voxel (default :data:`defacer.checks.DEFAULT_MAX_VOXELS`, 512^3);
        ``None`` removes the limit.
    data_files : {"beside", "none", "anywhere"}
        Which detached NRRD data files may be read: by default only a plain file name in the
        header's own folder (never an absolute path or ``..``), so reading a scan reads only
        the scan's own files; ``"none"`` refuses detached data (web uploads); ``"anywhere"``
        trusts the header.

    Returns
    -------
    Volume
        Stored values in the file's axis order, with affine and header.

    Raises
    ------
    InputImageError
        For a missing, empty, truncated, corrupt, 2D, 4D or too large file, or a refused
        data file, with what to do.
    """
    if max_voxels is not None and (isinstance(max_voxels, bool | np.bool_)
                                   or not isinstance(max_voxels, int | np.integer)):
        raise TypeError(f"max_voxels must be a whole number >= 1, or None for no limit; found {max_voxels!r:.40}.")
    if max_voxels is not None and max_voxels < 1:
        raise ValueError(f"max_voxels must be positive or None, not {max_voxels}")
    p = Path(path)
    if not p.exists():
        raise InputImageError(f"No such file or folder: '{p}'. Check the path.")
    fmt = format_of(p)
    if fmt == "dicom":
        from defacer.io.dicom_series import read_dicom_volume

        volume = read_dicom_volume(p, max_voxels=max_voxels)
    else:
        if not p.is_file():
            raise InputImageError(f"'{p}' is not a regular file.")
        _sniff(p, fmt)
        if fmt == "nrrd":
            from defacer.io.nrrd import read_nrrd

            volume = read_nrrd(p, data_files=data_files, max_voxels=max_voxels)
        else:
            from defacer.io.nifti import read_nifti_like

            volume = read_nifti_like(p, fmt, max_voxels=max_voxels)
    return validate_volume(volume, source=str(p), strict=strict)


def output_files(volume: Volume, path: PathLike) -> list[Path]:
    """Every file that :func:`save_volume` writes for ``path`` (a ``.nhdr`` also writes its data file)."""
    p = Path(path)
    if volume.format == "nrrd" and p.name.lower().endswith(".nhdr"):
        from defacer.io.nrrd import detached_data_name

        return [p, p.parent / detached_data_name(p, volume.header)]
    return [p]


def save_volume(volume: Volume, path: PathLike, *, force: bool = False, inputs: tuple[PathLike, ...] = (),
                digests: dict[Path, str] | None = None) -> list[Path]:
    """Write ``volume`` in the format of its source, atomically, and return the files written.

    Parameters
    ----------
    volume : Volume
        Typically the defaced copy of a loaded volume (same header, dtype and grid).
    path : path-like
        Output path; its ending must match the volume's format (``.nii``/``.nii.gz`` for
        NIfTI, ``.nrrd``/``.nhdr`` for NRRD, ``.mgz``/``.mgh`` for MGH, a folder for DICOM).
    force : bool
        Overwrite an existing output.
    inputs : tuple of path-like
        Input files; writing onto one of them is refused.
    digests : dict, optional
        Given, it receives ``{file written: hex sha256}`` for the files whose bytes were digested as they were
        written (a ``.nii.gz``), so that they need not be read back for it; other files are not listed.

    Raises
    ------
    OutputError
        If the output exists without ``force``, is an input, or cannot be written, or if an
        NRRD or DICOM volume has no header (a volume made in memory, ``Volume(raw, affine)``, is
        written as NIfTI or MGH with a fresh header).
    """
    p = Path(path)
    wanted = "dicom" if volume.format == "dicom" else format_of(p)
    if wanted != volume.format:
        raise OutputError(
            f"The output name '{p.name}' means {wanted.upper()}, but the input is {volume.format.upper()}. "
            "defacer writes the input's own format: give the output the same kind of extension as the input."
        )
    if volume.header is None and volume.format in ("nrrd", "dicom"):
        raise OutputError(
            f"This {volume.format.upper()} volume has no header (it was made in memory, not read from a file), so "
            f"'{p.name}' cannot be written as {volume.format.upper()}. Build it from a volume read by "
            "defacer.load_volume (volume.with_raw(new_values)), or write it as NIfTI: "
            "Volume(raw, affine) is saved with a fresh NIfTI header to a .nii or .nii.gz name."
        )
    targets = output_files(volume, p)
    for target in targets:
        check_output_path(target, force=force, inputs=inputs)
    if volume.format == "dicom":
        from defacer.io.dicom_series import write_dicom_volume

        return write_dicom_volume(volume, p, force=force)
    sha256 = hashlib.sha256() if digests is not None else None
    digested = False
    with atomic_outputs(targets, replace=force) as temps:  # a name taken since the check above: never replaced
        if volume.format == "nifti":
            from defacer.io.nifti import write_nifti

            digested = write_nifti(volume, temps[0], sha256)
        elif volume.format == "mgh":
            from defacer.io.nifti import write_mgh

            write_mgh(volume, temps[0])
        else:
            from defacer.io.nrrd import write_nrrd

            write_nrrd(volume, temps[0])
    if digested and digests is not None and sha256 is not None:  # one file (a .nii.gz), now in its place
        digests[targets[0]] = sha256.hexdigest()
    return targets


def label_map_files(path: PathLike) -> list[Path]:
    """Every file :func:`save_label_map` writes for ``path``: the map, and for a ``.nhdr`` its ``.raw.gz`` data file."""
    p = Path(path)
    if p.name.lower().endswith(".nhdr"):
        return [p, p.parent / (p.name[: -len(".nhdr")] + ".raw.gz")]
    return [p]


def save_label_map(labels: np.ndarray, like: Volume, path: PathLike, *, force: bool = False) -> list[Path]:
    """Write a label map on ``like``'s grid, in ``like``'s format when possible (uint8, no scaling).

    DICOM inputs get a NIfTI label map.
    """
    import nibabel as nib

    p = Path(path)
    data = np.asarray(labels, dtype=np.uint8)
    fmt = format_of(p) if not p.is_dir() else "nifti"
    detached = fmt == "nrrd" and p.name.lower().endswith(".nhdr")
    targets = label_map_files(p)
    for target in targets:
        check_output_path(target, force=force)
    with atomic_outputs(targets, replace=force) as temps:
        if fmt == "nrrd":
            import nrrd

            header = {"space": "right-anterior-superior", "space directions": like.affine[:3, :3].T,
                      "space origin": like.affine[:3, 3], "encoding": "gzip", "kinds": ["domain"] * 3}
            nrrd.write(str(temps[0]), data, header, index_order="F", detached_header=detached)
        elif fmt == "mgh":
            nib.save(nib.MGHImage(data, like.affine), str(temps[0]))
        else:
            image = nib.Nifti1Image(data, like.affine)
            image.header.set_xyzt_units("mm")
            image.header["descrip"] = b"defacer labels 1=eyes 2=nose 3=ears"
            nib.save(image, str(temps[0]))
    return targets
