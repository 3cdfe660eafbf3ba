"""NRRD reading and writing (attached ``.nrrd`` and detached ``.nhdr`` + data file) via pynrrd."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import nrrd
import numpy as np

from defacer.errors import InputImageError
from defacer.volume import Volume

#: NRRD 'space' values whose world axes are LPS (the DICOM convention) or RAS.
_LPS_SPACES = {"left-posterior-superior", "lps"}
_RAS_SPACES = {"right-anterior-superior", "ras"}


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
    affine = np.eye(4)
    affine[:3, :3] = directions.T
    affine[:3, 3] = np.zeros(3) if origin is None else np.asarray(origin, dtype=float)
    if space in _LPS_SPACES or space == "":
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    elif space not in _RAS_SPACES:
        raise InputImageError(
            f"'{path}' uses NRRD space '{space}'; defacer reads 'left-posterior-superior' and "
            "'right-anterior-superior'. Resample it to one of those first."
        )
    return affine


def read_nrrd(path: Path) -> Volume:
    """Read an attached or detached NRRD file into a :class:`Volume` (physical values = stored values)."""
    try:
        data, header = nrrd.read(str(path), index_order="F")
    except Exception as err:
        raise InputImageError(
            f"Could not read '{path}' as NRRD: {err}. The header or its data file may be missing, truncated or "
            "corrupt; for .nhdr keep the data file it names in the same folder."
        ) from err
    return Volume(
        raw=np.asarray(data),
        affine=nrrd_affine(header, path),
        format="nrrd",
        header=OrderedDict(header),
        extra={"detached": path.suffix.lower() == ".nhdr", "raw_shape": tuple(np.shape(data))},
    )


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
