"""The JSON provenance sidecar written beside every defaced output."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from defacer._typing import PathLike
from defacer.files import file_sha256, files_under, image_stem
from defacer.io.atomic import atomic_outputs

#: Ending of the sidecar file name: ``scan.nii.gz`` -> ``scan.defacer.json``.
SIDECAR_SUFFIX = ".defacer.json"
#: Suffix of a QC folder (verification reports and pictures) beside an output: ``<output stem>-qc``.
QC_SUFFIX = "-qc"


def sidecar_path(output: PathLike) -> Path:
    """Path of the provenance sidecar for an output file or DICOM output folder."""
    p = Path(output)
    return p.with_name(image_stem(p.name, dicom=True) + SIDECAR_SUFFIX)


def qc_dir_for(output: PathLike) -> Path:
    """The QC folder of one defaced output: ``<output stem>-qc`` beside it (never inside an output folder).

    ``sub-01_T1w_defaced.nii.gz`` gives ``sub-01_T1w_defaced-qc``; a DICOM folder ``out/``
    gives ``out-qc``.  It holds the verification report and pictures, which show the original face.
    """
    sidecar = sidecar_path(Path(output))
    return sidecar.with_name(sidecar.name[: -len(SIDECAR_SUFFIX)] + QC_SUFFIX)


def batch_qc_dir(out_root: PathLike) -> Path:
    """The QC folder of a batch: ``OUT-qc`` beside ``OUT`` (an absolute path)."""
    root = Path(os.path.abspath(out_root))
    return root.with_name(root.name + QC_SUFFIX)


def sha256_of(path: PathLike) -> str:
    """sha256 of a file, or of the sorted (relative name, file sha256) list of a folder."""
    p = Path(path)
    if p.is_dir():
        return sha256_of_files(p, files_under(p))
    return file_sha256(p)


def sha256_of_files(root: PathLike, files: Iterable[PathLike]) -> str:
    """sha256 of some files of a folder: over their sorted (name relative to ``root``, file sha256) list.

    The folder's own digest (:func:`sha256_of`) when ``files`` are all its files; a DICOM series of a study folder
    is digested over its own files alone, so that no other series' file is read for it.  A file outside ``root``
    is named by its absolute path.
    """
    base = Path(os.path.abspath(root))
    named = []
    for file in files:
        absolute = Path(os.path.abspath(file))
        named.append((str(absolute.relative_to(base)) if absolute.is_relative_to(base) else str(absolute), absolute))
    digest = hashlib.sha256()
    for name, file in sorted(set(named), key=lambda item: Path(item[0])):  # Path order, as the folder's digest was
        digest.update(name.encode())
        digest.update(bytes.fromhex(file_sha256(file)))
    return digest.hexdigest()


@lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 of defacer's own Python source: every ``.py`` file of the installed package, by relative name.

    The version number alone does not change when the detector's rules, the distortions or the
    de-identification learn something between releases; this digest does, so a sidecar names the exact
    code that wrote an output and a batch rerun redoes the scans an earlier code wrote
    (:func:`defacer.batch.runner._fingerprint`).  Computed once per process (about 100 files, 1.2 MB: 8 ms).
    """
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for source in sorted(package.rglob("*.py")):
        digest.update(source.relative_to(package).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(source.read_bytes()).digest())
    return digest.hexdigest()


def environment() -> dict[str, str]:
    """Software versions worth recording (``defacer_code``: :func:`code_digest`)."""
    import nibabel
    import numpy
    import scipy

    from defacer._version import __version__

    return {
        "defacer": __version__,
        "defacer_code": code_digest(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "nibabel": nibabel.__version__,
        "platform": platform.platform(),
    }


def write_provenance(provenance: dict[str, Any], path: PathLike, *, force: bool = True) -> Path:
    """Write ``provenance`` as indented JSON to ``path`` atomically; without ``force`` a file that appeared under that
    name since the run checked it is never replaced (:class:`~defacer.errors.OutputError`)."""
    target = Path(path)
    with atomic_outputs([target], replace=force) as (temp,):
        temp.write_text(json.dumps(provenance, indent=2, sort_keys=False, default=to_jsonable) + "\n")
    return target


def to_jsonable(value: Any) -> Any:
    """JSON form of numpy scalars and arrays and of paths (``json.dumps(..., default=to_jsonable)``)."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)
