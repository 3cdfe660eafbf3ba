"""File plumbing shared by the whole package: image file endings, name stems, file hashes, small files.

One table of the endings defacer reads (:data:`IMAGE_FORMATS`, matched without regard to
case, longest first), the functions that use it, one sha256 of a file, the one test of whether a
file of the user's folder may be read (:func:`stays_inside`), and the one bounded read of a small
text or JSON file beside the scans (:func:`read_json_object`, :data:`MAX_SMALL_FILE_BYTES`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from defacer.errors import DefacerError

if TYPE_CHECKING:  # (defacer._typing imports numpy, which the command line's argument parsing does not need)
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
#: Endings of a scan's label map (``<stem>.labels.nii.gz`` ...; ``--labels-dir``), in the order they are tried: a file
#: named so is a label map, never a scan to deface.
LABEL_ENDINGS: tuple[str, ...] = (".labels.nii.gz", ".labels.nii", ".labels.nrrd", ".labels.nhdr", ".labels.mgz",
                                 ".labels.mgh")
#: Largest text or JSON file read beside the scans (a provenance record, a BIDS sidecar, dataset description or
#: ``.bidsignore``; real ones are a few kB): a larger one is refused, so a hostile file (or ``/dev/zero``) cannot
#: make defacer hold gigabytes of text.
MAX_SMALL_FILE_BYTES = 16 * 2**20


def is_text_name(name: str) -> bool:
    """Whether ``name`` is text that a UTF-8 file can hold: a file name whose bytes are not UTF-8 is kept by
    Python as lone surrogates, which cannot be encoded."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def text_name(name: str) -> str:
    """``name`` as text to show or record: bytes that are not UTF-8 (which Python keeps in a file name as lone
    surrogates, e.g. a Latin-1 folder name) become U+FFFD.  Writing such a name into a UTF-8 file fails."""
    return name if is_text_name(name) else os.fsencode(name).decode("utf-8", "replace")


def label_ending(name: str) -> str | None:
    """The :data:`LABEL_ENDINGS` entry ``name`` ends with (any case), or ``None`` when it is no label map's name."""
    lower = name.lower()
    return next((ending for ending in LABEL_ENDINGS if lower.endswith(ending)), None)


def label_map_in(folder: PathLike, stem: str, *, within: PathLike | None = None) -> Path | None:
    """The label map ``<folder>/<stem><ending>`` for the first of :data:`LABEL_ENDINGS` that is a file, or ``None``.

    Parameters
    ----------
    folder : path-like
        The folder holding the maps.
    stem : str
        The scan's name without its image ending.
    within : path-like, optional
        The folder the user gave (``--labels-dir``): the first map that is no symbolic link out of it
        (:func:`link_outside`) is taken, so a map with a later ending that the folder holds itself wins over a
        linked-out one with an earlier ending (which used to be taken, then refused).  When every map there leads
        out, the first is returned all the same, for the caller to refuse in words.
    """
    found = [Path(folder) / f"{stem}{ending}" for ending in LABEL_ENDINGS]
    found = [candidate for candidate in found if candidate.is_file()]
    if within is not None:
        inside = [candidate for candidate in found if link_outside(candidate, within) is None]
        found = inside or found
    return found[0] if found else None


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


def walk(top: PathLike) -> Iterator[tuple[str, list[str], list[str]]]:
    """:func:`os.walk` of ``top`` (top-down, links to folders not entered, unreadable folders passed over), without
    recursion.

    Python 3.11's :func:`os.walk` and :meth:`pathlib.Path.rglob` call themselves once per folder level: a folder
    tree 1,000 deep (a hostile or broken copy makes one in a second) raised ``RecursionError``, and ``deface``,
    ``anonymize`` and ``batch`` stopped with "a bug in defacer".  This walk keeps its pending folders in a list, so
    any depth the file system allows is walked like a shallow tree.

    Yields
    ------
    tuple of (str, list of str, list of str)
        As :func:`os.walk`: a folder, its sub-folders' names (the caller may prune this list in place) and its
        other entries' names (files, links to files, pipes...).
    """
    pending = [os.fspath(top)]
    while pending:
        here = pending.pop()
        dirnames: list[str] = []
        names: list[str] = []
        try:
            with os.scandir(here) as entries:
                for entry in entries:
                    try:
                        is_dir = entry.is_dir()
                    except OSError:
                        is_dir = False
                    (dirnames if is_dir else names).append(entry.name)
        except OSError:
            continue
        yield here, dirnames, names
        pending += [path for path in (os.path.join(here, name) for name in reversed(dirnames))
                    if not os.path.islink(path)]


def files_under(folder: PathLike) -> list[Path]:
    """Every regular file under ``folder`` (or link to one), at any depth, in :func:`walk`'s order; links to folders
    are not entered.  What ``[p for p in folder.rglob("*") if p.is_file()]`` gave, without its recursion."""
    return [path for here, _, names in walk(folder) for path in (Path(here, name) for name in names)
            if path.is_file()]


def make_folders(folder: PathLike) -> None:
    """``Path(folder).mkdir(parents=True, exist_ok=True)`` without recursion.

    :meth:`pathlib.Path.mkdir` calls itself once per missing folder level: a ``batch`` mirroring a scan that lies
    1,100 folders deep in IN failed that scan with "RecursionError".  This makes the missing folders from the
    top down, in a loop.

    Raises
    ------
    OSError
        As :meth:`pathlib.Path.mkdir` (``FileExistsError`` where ``folder`` or a part of it is a file...).
    """
    missing: list[Path] = []
    here = Path(folder)
    while not here.is_dir():
        missing.append(here)
        if here.parent == here:
            break
        here = here.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            if not path.is_dir():
                raise


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


#: The JSON name of each kind of value :func:`json.loads` gives, for messages.
_JSON_KINDS: dict[type, str] = {list: "array", str: "string", int: "number", float: "number", bool: "true/false",
                                type(None): "null"}


def read_small_text(path: PathLike, *, what: str, redo: str) -> str:
    """The UTF-8 text of a small file of the user's: a regular file of at most :data:`MAX_SMALL_FILE_BYTES`.

    Parameters
    ----------
    path : path-like
        The file.
    what : str
        What the file is, for the message (``"provenance file"``, ``"JSON sidecar"``).
    redo : str
        What the user may do about a refused file: the message's last sentence.

    Returns
    -------
    str
        The file's text (read at most one byte past the limit, never whole).

    Raises
    ------
    DefacerError
        For a missing file or one that is not regular (a pipe, socket or device is never opened), an unreadable
        one, one over :data:`MAX_SMALL_FILE_BYTES`, or one that is not UTF-8 text.
    """
    p = Path(path)
    if not p.is_file():
        raise DefacerError(f"The {what} '{p}' is missing or not a regular file (a pipe, socket or device is never "
                           f"read): expected a small text file. {redo}")
    try:
        with p.open("rb") as handle:
            data = handle.read(MAX_SMALL_FILE_BYTES + 1)
    except OSError as err:
        raise DefacerError(f"Could not read the {what} '{p}': {err.strerror or err}. {redo}") from err
    if len(data) > MAX_SMALL_FILE_BYTES:
        raise DefacerError(f"The {what} '{p}' is larger than {MAX_SMALL_FILE_BYTES // 2**20} MiB: expected a few kB. "
                           f"{redo}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DefacerError(f"The {what} '{p}' is not UTF-8 text (byte {err.start}): expected a text file. "
                           f"{redo}") from err


def without_bom(text: str) -> str:
    """``text`` without a leading byte order mark, which Windows editors put before UTF-8 text: :func:`json.loads`
    refuses it ("Unexpected UTF-8 BOM"), so a sidecar saved in Notepad lost its fields (RFC 8259 lets a parser
    ignore it)."""
    return text.removeprefix("\ufeff")


def read_json_object(path: PathLike, *, what: str, redo: str) -> dict[str, Any]:
    """The JSON object in a small file of the user's (:func:`read_small_text`).

    Parameters
    ----------
    path : path-like
        The file.
    what, redo : str
        As :func:`read_small_text`: what the file is, and what the user may do about a refused one.

    Returns
    -------
    dict
        The object, as :func:`json.loads` gives it.

    Raises
    ------
    DefacerError
        As :func:`read_small_text`, and for text that is not JSON or JSON that is not an object.
    """
    return json_object_of(read_small_text(path, what=what, redo=redo), path, what=what, redo=redo)


def json_object_of(text: str, path: PathLike, *, what: str, redo: str) -> dict[str, Any]:
    """The JSON object ``text`` (read from ``path``) holds, a leading byte order mark ignored (:func:`without_bom`).

    Raises
    ------
    DefacerError
        For text that is not JSON (or nests thousands deep) or JSON that is not an object, naming ``path``,
        ``what`` it is and ``redo``.
    """
    try:
        loaded = json.loads(without_bom(text))
    except (ValueError, RecursionError) as err:  # RecursionError: arrays or objects nested thousands deep
        raise DefacerError(f"The {what} '{path}' is not valid JSON ({err}): expected a JSON object. {redo}") from err
    if not isinstance(loaded, dict):
        found = _JSON_KINDS.get(type(loaded), "value")
        raise DefacerError(f"The {what} '{path}' holds a JSON {found}: expected a JSON object, as every {what} is. "
                           f"{redo}")
    return loaded
