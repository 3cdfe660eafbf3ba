"""File plumbing shared by the whole package: image file endings, name stems, file hashes.

One table of the endings defacer reads (:data:`IMAGE_FORMATS`, matched without regard to
case, longest first), the functions that use it, and one sha256 of a file.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from defacer._typing import PathLike

#: File endings of single-file (or header + data) scans and the format each one means, longest first.
IMAGE_FORMATS: dict[str, str] = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mgz": "mgh",
    ".mgh": "mgh",
}
#: The endings of :data:`IMAGE_FORMATS`, as a tuple (for ``str.endswith``).
IMAGE_SUFFIXES: tuple[str, ...] = tuple(IMAGE_FORMATS)
#: Ending of a single DICOM file.
DICOM_SUFFIX = ".dcm"


def image_suffix(name: str, *, dicom: bool = False) -> str:
    """The image ending of a file name as written in the name (``"a.NII.GZ"`` -> ``".NII.GZ"``), or ``""``.

    Parameters
    ----------
    name : str
        A file name (not a path).
    dicom : bool
        Also recognise ``.dcm``.
    """
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES + ((DICOM_SUFFIX,) if dicom else ()):
        if lower.endswith(suffix):
            return name[len(name) - len(suffix):]
    return ""


def image_stem(name: str, *, dicom: bool = False) -> str:
    """A file name without its image ending (``a.nii.gz`` -> ``a``); other names are kept whole."""
    suffix = image_suffix(name, dicom=dicom)
    return name[: len(name) - len(suffix)]


def is_image_name(name: str) -> bool:
    """Whether a file name ends in an image ending defacer reads (any case)."""
    return bool(image_suffix(name))


def file_sha256(path: PathLike) -> str:
    """Hex sha256 of a file's bytes (:func:`hashlib.file_digest`: read in blocks, never whole)."""
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def named_path(path: PathLike) -> Path:
    """``path`` spelt so that its last part is its own name: ``.``, ``..`` and ``x/..`` made absolute (a name
    such as ``<name>_defaced`` or ``<name>-qc`` is then derived from the folder itself, beside it, never inside).
    Other paths are returned as given."""
    p = Path(path)
    return Path(os.path.abspath(p)) if p.name in ("", ".", "..") else p


def _in_annex(target: Path, root: Path) -> bool:
    """Whether ``target`` lies in the git-annex object store of a repository holding ``root``
    (``<repo>/.git/annex/objects`` or a submodule's ``<repo>/.git/modules/.../annex/objects``)."""
    for folder in (root, *root.parents):
        git = folder / ".git"
        if target.is_relative_to(git) and "annex/objects" in target.relative_to(git).as_posix():
            return True
    return False


def link_outside(path: PathLike, root: PathLike) -> Path | None:
    """Where ``path`` leads when a symbolic link takes it outside ``root``, or ``None`` when it stays inside.

    A link into the git-annex object store of a repository holding ``root`` stays inside: DataLad and
    git-annex datasets are made of such links.  Any other link out of ``root`` (to another study, a home
    folder, ``/etc``) makes a hostile folder read files that are not part of it.

    Parameters
    ----------
    path : path-like
        A file or folder found under ``root`` (not resolved).
    root : path-like
        The input folder the user gave.

    Returns
    -------
    Path or None
        The resolved target outside ``root``, or ``None``.
    """
    base = Path(root).resolve()
    target = Path(path).resolve()
    if target.is_relative_to(base) or _in_annex(target, base):
        return None
    return target


def stays_inside(path: PathLike, root: PathLike, *, log: logging.Logger | None = None, outcome: str = "") -> bool:
    """Whether ``path``, found under the input folder ``root``, is no symbolic link out of it.

    The one test of "may defacer read this file of the user's folder": :func:`link_outside` is ``None``
    (a regular file, a link within ``root``, or a link into the git-annex store of a repository holding it).

    Parameters
    ----------
    path : path-like
        A file found under ``root`` (not resolved).
    root : path-like
        The input folder the user gave.
    log : logging.Logger, optional
        Where to warn about a link out (the caller's logger), as ``'<path relative to root>' is a symbolic link
        to a file outside the input folder: <outcome>``.  Without it a link out is not warned about.
    outcome : str
        What defacer does instead of reading the file, and what the user may do (the warning's end).

    Returns
    -------
    bool
        ``True`` when the file may be read; ``False`` for a link out of ``root`` (warned on ``log``).
    """
    if link_outside(path, root) is None:
        return True
    if log is not None:
        log.warning("'%s' is a symbolic link to a file outside the input folder: %s", os.path.relpath(path, root),
                    outcome)
    return False
