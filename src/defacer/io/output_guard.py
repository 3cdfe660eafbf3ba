"""Where defacer may write: every output is checked against every input, and ``--force`` only
replaces what defacer itself wrote.

Two rules, applied before anything is written (``--force`` or not):

1. **No output touches an input.**  :func:`input_files` expands each input into every file it
   is made of (a detached NRRD header and the data file(s) it names, every file of a DICOM
   folder), resolved through symbolic links; an output may not be one of them (also not through
   a hard link), may not lie inside an input folder, and may not contain an input.
2. **``--force`` replaces files and defacer's own folders, never a user's folder.**  Beside
   every folder defacer writes lies an ownership record, ``.<name>.defacer-output.json``
   (:func:`owner_record`), listing the files it wrote there and their sizes.  An existing
   output folder is replaced only when it is empty or when every entry in it is listed in that
   record; anything else in the way is refused with its name.
   The old folder is then removed file by file (:func:`remove_owned_folder`), never with a
   recursive delete.
"""

from __future__ import annotations

import json
import os
import stat
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from defacer._typing import PathLike
from defacer.errors import OutputError
from defacer.files import files_under, walk
from defacer.io.nrrd import MAX_HEADER_BYTES

#: Ending of the ownership record written beside every folder defacer writes (see :func:`owner_record`).
OWNER_SUFFIX = ".defacer-output.json"
#: Most offending names quoted in a refusal.
_NAMES_SHOWN = 5
#: At most this many files expanded from a NRRD data-file pattern.
_MAX_PATTERN_FILES = 100_000
#: Endings of files whose NRRD header may name a detached data file.
NRRD_SUFFIXES = (".nhdr", ".nrrd")


def nrrd_data_files(header_path: Path) -> list[Path]:
    """Every data file a NRRD header names (``data file:`` single name, ``LIST`` or a pattern).

    Any NRRD file may name one, ``.nrrd`` as well as ``.nhdr`` (the reader follows the field in
    both).  The header is read as far as the reader reads it (:data:`MAX_HEADER_BYTES`), and the
    field's name is matched as the reader matches it (case and spaces ignored: ``Data  File``).
    Over-inclusion is harmless here (the list only protects files from being written or marks
    them as part of a scan), so absolute paths and ``..`` are kept as written; an unreadable
    header names nothing.
    """
    try:  # a named pipe would block the open (and the run) until a writer came: only a regular file is read
        descriptor = os.open(header_path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(descriptor, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return []
            raw = handle.read(MAX_HEADER_BYTES)
    except OSError:
        return []
    text = raw.decode("latin-1")
    lines = text.split("\n")
    found: list[Path] = []
    for i, line in enumerate(lines):
        line = line.rstrip("\r")
        if not line:
            break
        if line.startswith("#") or ":=" in line:
            continue
        key, sep, value = line.partition(":")
        if not sep or key.strip().lower().replace(" ", "") != "datafile":
            continue
        value = value.strip()
        if value.upper().startswith("LIST"):
            found.extend(header_path.parent / name.rstrip("\r") for name in lines[i + 1:] if name.rstrip("\r"))
            break
        parts = value.split()
        if "%" in value and len(parts) >= 4:
            try:
                first, last, step = int(parts[1]), int(parts[2]), int(parts[3])
            except ValueError:
                continue
            if step == 0:
                continue
            numbers = range(first, last + (1 if step > 0 else -1), step)
            for number in list(numbers)[:_MAX_PATTERN_FILES]:
                try:
                    found.append(header_path.parent / (parts[0] % number))
                except (TypeError, ValueError):
                    break
        elif value:
            found.append(header_path.parent / value)
    return found


def input_files(path: PathLike) -> list[Path]:
    """The files an input is made of, resolved: the file itself, a NRRD header's data files (``.nhdr`` or
    ``.nrrd``), or every file under a folder (a DICOM series), recursively."""
    p = Path(path)
    if p.is_dir():
        return [q.resolve() for q in files_under(p)]
    files = [p.resolve()]
    if p.name.lower().endswith(NRRD_SUFFIXES):
        files += [q.resolve() for q in nrrd_data_files(p)]
    return files


def folded_name(path: str | PurePath) -> str:
    """A name or path as a case- and normalization-insensitive disk (macOS, Windows, exFAT) compares it: NFC, case
    folded."""
    return unicodedata.normalize("NFC", str(path)).casefold()


def true_path(path: PathLike) -> Path:
    """``path`` resolved, each existing part spelled as its folder lists it.

    On a case-insensitive disk (macOS, Windows, exFAT, an SMB share) ``SCAN.nii.gz`` opens ``scan.nii.gz``: the
    two paths differ, and (device, inode) does not always tell either (a FUSE exFAT mount numbers each spelling
    apart).  A part its folder does not list as given, but lists once in another case or Unicode form, is
    replaced by the listed name; the parts from the first one that does not exist on are kept as given.  On a
    case-sensitive disk this is ``path.resolve()``.
    """
    resolved = Path(path).resolve()
    parts = resolved.parts
    current = Path(parts[0])
    for index, name in enumerate(parts[1:], start=1):
        listed = listed_name(current, name)
        if listed is None:
            return current.joinpath(*parts[index:])
        current = current / listed
    return current


def listed_name(folder: Path, name: str) -> str | None:
    """How ``folder`` lists the entry ``name`` opens: ``name`` itself when listed so, else its one entry equal
    to it in another case or Unicode form (:func:`folded_name`) where ``name`` opens something; ``None`` when
    the folder cannot be read or lists nothing under that name (links are not followed)."""
    try:
        names = os.listdir(folder)
    except (OSError, ValueError):
        return None
    if name in names:
        return name
    matches = [n for n in names if folded_name(n) == folded_name(name)]
    if len(matches) != 1 or not os.path.lexists(folder / name):
        return None
    return matches[0]


@dataclass
class InputSet:
    """Every input of a run, resolved: files, folders and (device, inode) of existing files."""

    files: set[Path] = field(default_factory=set)
    folders: list[Path] = field(default_factory=list)
    inodes: set[tuple[int, int]] = field(default_factory=set)
    #: (device, inode) of each input folder, and of every folder above an input: the same folder under another name
    #: (a case-insensitive file system's 'ANON' for 'anon', a bind mount) is told by these, not by its path.
    folder_inodes: dict[tuple[int, int], Path] = field(default_factory=dict)
    above_inodes: set[tuple[int, int]] = field(default_factory=set)

    @classmethod
    def of(cls, inputs: Iterable[PathLike | None]) -> InputSet:
        """Collect ``inputs`` (files or folders; ``None`` entries are ignored)."""
        result = cls()
        for item in inputs:
            if item is None:
                continue
            p = Path(item)
            root, listed = p.resolve(), true_path(p)  # listed: as its folder spells it (another case, Unicode form)
            if p.is_dir():
                result.folders += [root] if listed == root else [root, listed]
                key = inode_of(p)
                if key is not None:
                    result.folder_inodes[key] = root
            for file in input_files(p):
                result.files.add(file)
                if listed != root:
                    result.files.add(listed / file.relative_to(root) if file.is_relative_to(root) else true_path(file))
                key = inode_of(file)
                if key is not None:
                    result.inodes.add(key)
        above = {parent for path in (*result.files, *result.folders) for parent in path.parents}
        result.above_inodes = {key for key in map(inode_of, above) if key is not None}
        return result

    def conflict(self, output: PathLike) -> str | None:
        """Why writing ``output`` would touch an input, or ``None`` when it would not."""
        out = Path(output)
        resolved = out.resolve()
        listed = true_path(out)  # 'SCAN.nii.gz' on a case-insensitive disk is the input 'scan.nii.gz'
        for path in (resolved,) if listed == resolved else (resolved, listed):
            if path in self.files:
                return f"it is the input file '{path}'" + ("" if path == resolved else " (under another name)")
            for folder in self.folders:
                if path == folder or path.is_relative_to(folder):
                    return f"it lies inside the input folder '{folder}'"
                if folder.is_relative_to(path):
                    return f"it contains the input folder '{folder}'"
            for file in self.files:
                if file.is_relative_to(path):
                    return f"it contains the input file '{file}'"
        if out.is_file():
            st = out.stat()
            if (st.st_dev, st.st_ino) in self.inodes:
                return "it is the same file as an input (a hard link)"
        # The same folder under another name: 'Anon' and 'anon' on a case-insensitive file system (macOS, Windows),
        # a bind mount.  Their paths differ, so only (device, inode) tells; '--force' once replaced such an input.
        key = inode_of(out) if out.is_dir() else None
        if key is not None and key in self.folder_inodes:
            return f"it is the input folder '{self.folder_inodes[key]}' under another name"
        if key is not None and key in self.above_inodes:
            return "it contains an input (under another name)"
        for parent in resolved.parents:
            key = inode_of(parent)
            if key is not None and key in self.folder_inodes:
                return f"it lies inside the input folder '{self.folder_inodes[key]}' (under another name)"
        return None


def inode_of(path: Path) -> tuple[int, int] | None:
    """(device, inode) of an existing path (links followed), or ``None``."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_not_input(outputs: Iterable[PathLike], inputs: InputSet | Iterable[PathLike | None]) -> None:
    """Refuse when any output is, contains, or lies inside an input.

    Raises
    ------
    OutputError
        Naming the output and the input it would touch.
    """
    found = inputs if isinstance(inputs, InputSet) else InputSet.of(inputs)
    for output in outputs:
        why = found.conflict(output)
        if why is not None:
            raise OutputError(
                f"Refusing to write '{output}': {why}. defacer never writes over, into or around its input: "
                "choose an output outside the input's files and folders."
            )


def owner_record(folder: PathLike) -> Path:
    """Path of the ownership record of an output folder: ``.<name>.defacer-output.json`` beside it.

    It lives beside the folder, not in it, so that the folder holds only the data (a DICOM
    reader that opens every file of a series folder never meets it).
    """
    p = Path(folder)
    return p.with_name(f".{p.name}{OWNER_SUFFIX}")


def owned_files(folder: Path) -> dict[str, int] | None:
    """Relative names (POSIX) and sizes listed in ``folder``'s ownership record, or ``None``.

    The record is read bounded (:data:`_MAX_RECORD_BYTES`, not following a link): one larger than any defacer
    writes is refused in words, unread (it was read whole: a multi-gigabyte file under that name filled memory).

    Raises
    ------
    OutputError
        When the record is larger than :data:`_MAX_RECORD_BYTES`.
    """
    record = owner_record(folder)
    if not record.is_file() or record.is_symlink():
        return None
    try:
        with open(record, "rb", opener=lambda path, flags: os.open(path, flags | getattr(os, "O_NOFOLLOW", 0))) as f:
            raw = f.read(_MAX_RECORD_BYTES + 1)
    except OSError:
        return None
    if len(raw) > _MAX_RECORD_BYTES:
        raise OutputError(
            f"The ownership record '{record}' of the output folder '{folder}' is larger than any defacer writes "
            f"(expected at most {_MAX_RECORD_BYTES // (1024 * 1024)} MiB, found more; not read), so nothing in the "
            "folder counts as defacer's and nothing was replaced. Move that file away, or choose another output "
            "folder.")
    try:
        data = json.loads(raw.decode("utf-8"))
        files = data["files"]
    except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: JSON nested thousands deep
        return None
    if data.get("written_by") != "defacer" or not isinstance(files, dict):
        return None
    return {str(name): size for name, size in files.items() if isinstance(size, int) and _plain_relative(str(name))}


#: Largest file read as an ownership record (a 16,384-file series' record is about 1 MB).
_MAX_RECORD_BYTES = 64 * 1024 * 1024


def is_owner_record(path: Path) -> bool:
    """Whether ``path`` is an ownership record defacer wrote (a regular file, not a link, holding a JSON object
    ``{"written_by": "defacer", "files": {...}}``), read bounded."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_RECORD_BYTES:
            return False
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):  # ValueError: not UTF-8, not JSON
        return False
    return isinstance(data, dict) and data.get("written_by") == "defacer" and isinstance(data.get("files"), dict)


def foreign_owner_record(folder: PathLike) -> str | None:
    """Refusal text when the ownership record's name beside ``folder`` holds something defacer did not write.

    A folder's record (:func:`owner_record`) is defacer's own name and is written over when it is defacer's (a
    record left by an earlier output that was moved or deleted since); a user's file, a link or a folder under that
    name is not: ``None`` when the name is free or holds a record of defacer's, else the reason, in words.
    """
    record = owner_record(folder)
    if not os.path.lexists(record) or is_owner_record(record):
        return None
    return (f"'{record}' beside the output folder '{Path(folder).name}' is not an ownership record of defacer's (defacer "
            "writes its record of the folder under that name, and would replace it, --force or not). Move or rename "
            "it, or choose another output name (nothing was written).")


def _plain_relative(name: str) -> bool:
    """Whether a name in an ownership record stays inside its folder: relative, POSIX, no ``..`` or ``.`` part
    (a forged record listing ``../home/thesis.tex`` must not make ``--force`` delete that file)."""
    parts = name.split("/")
    return bool(name) and "\\" not in name and not name.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def foreign_entries(folder: Path) -> list[str]:
    """Entries of an existing folder that defacer did not write (relative POSIX names, sorted).

    A file is defacer's when the folder's ownership record lists its name with its size.
    Every entry is foreign when the folder has no record.  Symbolic links are always foreign
    (defacer never writes one, and they are never followed); so is an empty sub-folder that
    holds no listed file.
    """
    owned = owned_files(folder) or {}
    owned_dirs = {p.as_posix() for name in owned for p in Path(name).parents}
    foreign = []
    for root, dirs, names in walk(folder):
        base = Path(root).relative_to(folder)
        for name in names:
            rel = (base / name).as_posix()
            full = Path(root) / name
            if rel not in owned or full.is_symlink() or not full.is_file() or full.stat().st_size != owned[rel]:
                foreign.append(rel)
        for name in list(dirs):
            rel = (base / name).as_posix()
            full = Path(root) / name
            if full.is_symlink():
                foreign.append(rel)
                dirs.remove(name)
            elif rel not in owned_dirs and not any(full.iterdir()):
                foreign.append(rel + "/")
    return sorted(foreign)


def check_replaceable(path: PathLike, *, force: bool) -> None:
    """Refuse an existing output unless ``force``; with ``force``, refuse a folder defacer did not write.

    Raises
    ------
    OutputError
        Naming what is in the way and what to do.
    """
    target = Path(path)
    if not target.exists() and not target.is_symlink():
        return
    mode = os.lstat(target).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
        # Renamed over, a device is replaced by a file: 'deface scan /dev/null --force' as root (a container)
        # removed the system's /dev/null and put the defaced scan there.
        kind = "a pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise OutputError(f"The output '{target}' is {kind}, not a file: defacer would write a new file in its place "
                          f"and so remove {kind.split()[-1]} itself, --force or not. Choose a file name; to discard the "
                          "output, write it into a temporary folder and delete that.")
    if not force:
        raise OutputError(f"The output '{target}' already exists. Pass --force to overwrite it, or choose another name.")
    if target.is_dir() and not target.is_symlink():
        foreign = foreign_entries(target)
        if foreign:
            shown = ", ".join(f"'{target / name}'" for name in foreign[:_NAMES_SHOWN])
            more = f" and {len(foreign) - _NAMES_SHOWN} more" if len(foreign) > _NAMES_SHOWN else ""
            raise OutputError(
                f"The output folder '{target}' holds files defacer did not write: {shown}{more}. --force only "
                "replaces defacer's own earlier output; move those files away or choose another output folder."
            )


def check_folder_usable(path: PathLike) -> None:
    """Refuse an output whose folder can be neither used nor made: the nearest existing path above it must be a
    writable folder (not a file, not a link to nothing).

    Checked with the other outputs, before anything is written: a run whose second output (``--save-mask``,
    ``--mapping-file``) could not be written would otherwise leave its first one behind and exit with an error.

    Raises
    ------
    OutputError
        Naming the output and what lies in the way.
    """
    target = Path(path)
    for folder in (target.parent, *target.parent.parents):
        if not str(folder) or not os.path.lexists(folder):
            continue
        if folder.is_dir():
            if not os.access(folder, os.W_OK | os.X_OK):
                raise OutputError(f"Cannot write '{target}': its output folder '{folder}' is not writable. "
                                  "Choose a folder you can write to.")
            return
        what = "a symbolic link to nothing" if folder.is_symlink() and not folder.exists() else "a file, not a folder"
        raise OutputError(f"Cannot write '{target}': its output folder '{folder}' is {what}. Choose an output in "
                          "a folder (or a new folder's name).")


def check_outputs(outputs: Sequence[PathLike | None], *, inputs: Iterable[PathLike | None] = (),
                  force: bool = False) -> list[Path]:
    """Check every output of a run before anything is written.

    Each output must be distinct from the others, must not touch an input
    (:func:`check_not_input`), must not exist unless ``force`` (and then be a file or
    defacer's own folder, :func:`check_replaceable`), and must have a folder it can be written in
    (:func:`check_folder_usable`).

    Parameters
    ----------
    outputs : sequence of path-like or None
        Files and folders the run will write (``None`` entries are ignored).
    inputs : iterable of path-like or None
        Input files and folders.
    force : bool
        Whether existing outputs may be replaced.

    Returns
    -------
    list of Path
        The outputs checked.

    Raises
    ------
    OutputError
        For the first output that may not be written.
    """
    paths = [Path(p) for p in outputs if p is not None]
    seen: dict[str, tuple[Path, Path]] = {}
    for p in paths:
        resolved = p.resolve()
        # Compared as a case- and normalization-insensitive disk (macOS, Windows, exFAT) sees them, whatever disk
        # this is: 'out.nii.gz' and '--save-mask OUT.nii.gz' are one file there (the label map replaced the defaced
        # output), 'out.defacer.json' and '--mapping-file OUT.defacer.json' too (the original identifiers under the
        # provenance record's name, beside the output to share).
        key = folded_name(resolved)
        if key in seen:
            earlier, earlier_resolved = seen[key]
            if earlier_resolved == resolved:
                raise OutputError(f"Two outputs of this run are the same file: '{earlier}' and '{p}'. "
                                  "Give each output its own name.")
            raise OutputError(f"Two outputs of this run, '{earlier}' and '{p}', differ only in letter case (or "
                              "Unicode form): on a case-insensitive disk (macOS, Windows, exFAT) they are the same "
                              "file, and one would replace the other. Give each output a name that differs by more "
                              "than letter case.")
        seen[key] = (p, resolved)
    check_not_input(paths, InputSet.of(inputs))
    for p in paths:
        check_replaceable(p, force=force)
        check_folder_usable(p)
    return paths


def detached_data_candidates(path: PathLike | None) -> list[Path]:
    """Names a ``.nhdr`` output's data file may get (``NAME.raw``, ``.raw.gz``, ``.raw.bz2``, ``.txt``)."""
    if path is None or not Path(path).name.lower().endswith(".nhdr"):
        return []
    p = Path(path)
    stem = p.name[: -len(".nhdr")]
    return [p.with_name(stem + suffix) for suffix in (".raw", ".raw.gz", ".raw.bz2", ".txt")]


def check_apart(path: PathLike | None, folder: PathLike, what: str) -> None:
    """Refuse ``path`` inside (or equal to) the output ``folder``: e.g. a re-identifying mapping file.

    Raises
    ------
    OutputError
    """
    if path is None:
        return
    target, out = Path(path).resolve(), Path(folder).resolve()
    if target == out or target.is_relative_to(out) or out.is_relative_to(target):
        raise OutputError(
            f"The {what} '{path}' would be inside the de-identified output '{folder}', where it would "
            "re-identify the data. Write it somewhere else (it is only written where you ask)."
        )


def write_owner_record(folder: Path, record: Path) -> None:
    """Write to ``record`` the ownership record of ``folder``: every file under it and its size."""
    files = {}
    for root, _, names in walk(folder):
        for name in names:
            full = Path(root) / name
            files[full.relative_to(folder).as_posix()] = full.stat().st_size
    record.write_text(json.dumps({"written_by": "defacer", "files": dict(sorted(files.items()))}, indent=1) + "\n",
                      encoding="utf-8")


def remove_owned_folder(folder: Path) -> None:
    """Remove a folder defacer wrote: its listed files, then its (then empty) sub-folders, then its record.

    Never a recursive delete: a file that appeared since the check stops the removal.

    Raises
    ------
    OutputError
        If the folder holds anything defacer did not write (checked again here, just before).
    """
    foreign = foreign_entries(folder)
    if foreign:
        raise OutputError(
            f"The output folder '{folder}' holds files defacer did not write (e.g. '{folder / foreign[0]}'); "
            "nothing was replaced. Move them away or choose another output folder."
        )
    for name in owned_files(folder) or {}:
        path = folder / name
        if path.is_file() and not path.is_symlink():  # only what is there, inside the folder (names checked)
            path.unlink()
    for root, _, _ in sorted(walk(folder), key=lambda entry: -len(Path(entry[0]).parts)):
        try:
            os.rmdir(root)
        except OSError as err:
            raise OutputError(f"Could not replace the output folder '{folder}': '{root}' is not empty "
                              f"({err.strerror}). Nothing else was removed.") from err
    owner_record(folder).unlink(missing_ok=True)


def check_dicom_output_name(target: PathLike) -> None:
    """Refuse a DICOM series' output named as a file of another format (``out.nii.gz``, ``out.nrrd``...): defacer
    writes the input's format, so it became a folder of DICOM files under that name, which every tool that opens
    it as a NIfTI file refuses (``deface series/ out.nii.gz`` wrote one, exit 0).  Also refuse one whose ownership
    record's name (``.<name>.defacer-output.json`` beside it) holds a file defacer did not write
    (:func:`foreign_owner_record`): it would be replaced.

    Raises
    ------
    OutputError
    """
    from defacer.files import image_suffix

    name = Path(target).name
    ending = image_suffix(name)
    foreign = None if ending else foreign_owner_record(target)
    if foreign:
        raise OutputError(foreign)
    if ending:
        raise OutputError(f"The output '{name}' is named as a {ending} file, but a DICOM series is written as a new "
                          f"DICOM series folder (defacer writes the input's format). Give a folder name, e.g. "
                          f"'{name[: -len(ending)] or 'defaced'}', and convert the defaced series afterwards if a "
                          f"{ending} file is needed (e.g. dcm2niix).")


def sharing_outputs(output: Path) -> list[str]:
    """The other files or folders beside ``output`` whose provenance sidecar and QC folder are its own (``out.nii``
    and ``out.nii.gz``, a DICOM folder ``out``: :func:`defacer.provenance.qc_dir_for` drops the image ending)."""
    from defacer.files import image_stem, image_suffix

    stem = image_stem(output.name, dicom=True)
    try:
        names = os.listdir(output.parent)
    except OSError:
        return ["?"]  # cannot tell: as if shared
    # letter case and Unicode form as a case-insensitive disk compares them: there 'O.nii' shares 'o.defacer.json'
    # with 'o.nii.gz' ('O.defacer.json' opens it), and 'o.nii.gz' listed for an output given as 'O.NII.GZ' is itself
    return [name for name in names if folded_name(name) != folded_name(output.name)
            and folded_name(image_stem(name, dicom=True)) == folded_name(stem)
            and (image_suffix(name, dicom=True) or (output.parent / name).is_dir())]


def recorded_output_name(record: Path) -> str | None:
    """The output a provenance record describes (its ``output.path``: a name, or ``<output>`` where hidden), read
    bounded (:func:`defacer.files.read_json_object`); ``None`` where the file is no record of defacer's."""
    from defacer.errors import DefacerError
    from defacer.files import read_json_object

    try:  # a JSON nested thousands deep, or a huge file so named, is no record
        described = read_json_object(record, what="provenance record", redo="").get("output", {})
    except DefacerError:
        return None
    path = described.get("path") if isinstance(described, dict) else None
    return path if isinstance(path, str) else None


def check_record_not_shared(output: PathLike) -> None:
    """Refuse an output whose provenance record is another output's that is still there.

    ``out.nii`` and ``out.nii.gz`` (or a DICOM folder ``out``) share ``out.defacer.json`` and ``out-qc``: ``deface b.nii
    out.nii --force`` beside ``out.nii.gz`` replaced that one's record with its own, and ``out.nii.gz`` was left
    without one (its checksum, options and features gone), --force being given for ``out.nii``.

    Raises
    ------
    defacer.errors.OutputError
    """
    from defacer.files import image_stem, image_suffix
    from defacer.provenance import sidecar_path

    output = Path(output)
    record = sidecar_path(output)
    if not record.is_file() or record.is_symlink():
        return
    path = recorded_output_name(record)
    if path is None or folded_name(path) == folded_name(output.name):
        return  # no record of defacer's (the output checks decide about replacing it), or this output's own
    others = sharing_outputs(output)
    # the record names one of them, or hides its name ('<output>': a DICOM folder named after the patient)
    if not (path in others or (path == "<output>" and others)):
        return
    owner = path if path in others else ", ".join(sorted(others)[:3])
    raise OutputError(f"The output '{output.name}' would share its provenance record '{record.name}' (and its QC folder) "
                      f"with '{owner}' beside it, which that record describes: writing it would replace that output's "
                      "record, --force or not. Give this output another name (e.g. "
                      f"'{image_stem(output.name, dicom=True)}_2{image_suffix(output.name)}').")
