"""Atomic output: write into a private temporary folder beside the target, then rename.

An interrupted run leaves either the complete old state or the complete new files, never a
half-written output under the final name.  A run killed outright (SIGKILL, power loss) leaves
its temporary folder ``.defacer-tmp-*``; the next write into that folder removes it
(:func:`sweep_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from defacer._typing import PathLike
from defacer.errors import OutputError
from defacer.files import make_folders
from defacer.io.no_replace import rename_no_replace
from defacer.io.output_guard import (
    check_folder_usable,
    check_not_input,
    check_replaceable,
    foreign_owner_record,
    owner_record,
    remove_owned_folder,
    write_owner_record,
)


def check_output_path(path: PathLike, *, force: bool, inputs: Sequence[PathLike] = ()) -> Path:
    """Check that ``path`` may be written: touches no input, not existing unless ``force``, folder writable.

    ``inputs`` are expanded into every file they are made of (a ``.nhdr`` and its data file,
    every file of a DICOM folder; see :mod:`defacer.io.output_guard`).  With ``force`` an
    existing file may be replaced, an existing folder only when defacer wrote it.

    Raises
    ------
    OutputError
        With the reason and what to do.
    """
    target = Path(path)
    check_not_input([target], inputs)
    check_replaceable(target, force=force)
    check_folder_usable(target)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.exists():
        try:
            make_folders(folder)
        except OSError as err:
            raise OutputError(f"Cannot create the output folder '{folder}': {err.strerror}. Choose a writable place.") from err
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"The output folder '{folder}' is not writable. Choose a folder you can write to.")
    return target


#: Prefix of every temporary folder: ``.defacer-tmp-<host hash>-<pid>-<8 random characters>``.
TEMP_PREFIX = ".defacer-tmp-"
#: A temporary folder of a process on another machine, or of an older defacer that did not
#: record its process, is removed once it has not changed for this long.
STALE_AFTER_S = 30 * 60
#: A temporary folder whose process still seems alive (its pid may have been reused) is removed after this long.
ABANDONED_AFTER_S = 24 * 3600
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TEMP_NAME = re.compile(r"^\.defacer-tmp-(?:(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-)?[A-Za-z0-9_]{8}$")
#: Name of the temporary file :func:`atomic_file` writes beside its target: ``.defacer-tmp-<8 hex>-<name>``.
_TEMP_FILE_NAME = re.compile(r"^\.defacer-tmp-[0-9a-f]{8}-.")


def is_temporary(entry: os.DirEntry[str]) -> bool:
    """Whether ``entry`` is a temporary defacer made: a folder named as :func:`atomic_outputs` names them or a file
    named as :func:`atomic_file` names them, not a link, owned by this user (a look-alike such as a user's
    ``.defacer-tmp-notes.txt`` is not)."""
    pattern = _TEMP_NAME if entry.is_dir(follow_symlinks=False) else _TEMP_FILE_NAME
    if entry.is_symlink() or pattern.match(entry.name) is None:
        return False
    try:
        return entry.stat(follow_symlinks=False).st_uid == os.getuid()
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def sweep_stale_temporaries(folder: PathLike) -> list[Path]:
    """Remove the temporary folders a killed defacer left in ``folder`` (not below); return them.

    Only defacer's own are touched: folders (not links) owned by this user, named exactly as
    :func:`atomic_outputs` names them, and stale: made on this machine by a process that is no
    longer running, or unchanged for :data:`STALE_AFTER_S` (another machine, or an older
    defacer that did not record its process; :data:`ABANDONED_AFTER_S` when the recorded
    process seems alive).  A folder in use by a running defacer is never removed.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if st.st_uid != os.getuid():
            continue
        age = now - st.st_mtime
        pid = match.group("pid")
        if match.group("host") == _HOST and pid is not None:
            stale = int(pid) != os.getpid() and (not _pid_alive(int(pid)) or age > ABANDONED_AFTER_S)
        else:
            stale = age > STALE_AFTER_S
        if stale:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def _appeared(final: Path) -> OutputError:
    """The refusal of a final name that was free when the run checked it and is taken when it would rename onto it."""
    return OutputError(
        f"'{final}' appeared while defacer was writing it (another run writing the same output, or a file copied "
        "there meanwhile): it was not replaced, and this run's output under that name was not written. Pass --force "
        "to replace it, or choose another name."
    )


def _rename_no_replace(temp: Path, final: Path) -> None:
    """Rename ``temp`` onto ``final`` unless ``final`` exists, the check and the rename one step where the disk can.

    Linux's ``renameat2(RENAME_NOREPLACE)`` (:mod:`defacer.io.no_replace`) checks the name and renames under one
    lock, a file or a folder (a DICOM series).  Where the kernel or file system does not take it (exfat-fuse, some
    network shares, other systems), a file goes in place through a hard link, which fails on a taken name too; a
    disk that has neither (a FUSE exFAT or FAT disk) falls back to a look just before the rename (a window of
    microseconds), and a folder there is looked for, then renamed.

    Raises
    ------
    OutputError
        When ``final`` exists (:func:`_appeared`).
    """
    if os.path.lexists(final):
        raise _appeared(final)
    try:
        if rename_no_replace(temp, final):
            return
    except FileExistsError as err:
        raise _appeared(final) from err
    if temp.is_dir() and not temp.is_symlink():
        if os.path.lexists(final):
            raise _appeared(final)
        os.rename(temp, final)
        return
    try:
        os.link(temp, final, follow_symlinks=False)
    except FileExistsError as err:
        raise _appeared(final) from err
    except OSError:  # no hard links on this disk (EPERM, ENOTSUP, EMLINK...): the look is all there is
        if os.path.lexists(final):
            raise _appeared(final) from None
        os.replace(temp, final)
        return
    temp.unlink()


def _place_record(record: Path, final: Path, temp: Path) -> None:
    """Put a folder's ownership record beside ``final`` (just renamed from ``temp``), over a record of defacer's only.

    A record already there is one left by an earlier output under that name, moved or deleted since (the folder's
    name was free): it is replaced.  Anything else that took the name since the run checked it (a user's file, a
    link) is kept: the folder goes back into the temporary folder and the run is refused.

    Raises
    ------
    OutputError
        When the record's name holds something defacer did not write.
    """
    target = owner_record(final)
    try:
        if rename_no_replace(record, target):
            return
    except FileExistsError:
        pass
    foreign = foreign_owner_record(final)
    if foreign is None:
        os.replace(record, target)
        return
    os.rename(final, temp)  # this run's own folder, put in place an instant ago: back where the finally removes it
    raise OutputError(foreign)


@contextlib.contextmanager
def atomic_outputs(targets: Sequence[PathLike], *, replace: bool = True) -> Iterator[list[Path]]:
    """Yield temporary paths for ``targets``; rename them onto the targets when the block succeeds.

    The temporary files live in a hidden folder in the first target's folder (same file
    system, so the final rename is atomic per file).  On any exception nothing under the
    final names changes and the temporary folder is removed.  A target written as a folder
    gets an ownership record beside it (:func:`~defacer.io.output_guard.owner_record`); an existing folder
    under a target's name is replaced only when defacer wrote it, and removed file by file.

    Parameters
    ----------
    targets : sequence of path-like
        Final paths; their base names are kept for the temporary files (so that formats
        whose header names a detached data file stay consistent).
    replace : bool
        Replace what is under a final name (``--force``: checked before, by the caller).  ``False``: a name taken
        since the caller checked it (another run, a copy) is never replaced: :class:`OutputError`, and none of the
        targets is renamed when one is taken before the first rename.
    """
    finals = [Path(t) for t in targets]
    folder = finals[0].parent
    make_folders(folder)
    sweep_stale_temporaries(folder)
    try:
        tmpdir = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{_HOST}-{os.getpid()}-", dir=folder))
    except OSError as err:
        raise OutputError(f"Cannot write in the output folder '{folder}': {err.strerror}.") from err
    temps = [tmpdir / f.name for f in finals]
    try:
        yield temps
        for temp, final in zip(temps, finals, strict=True):  # before any rename: a folder's record name is free
            foreign = foreign_owner_record(final) if temp.is_dir() and not temp.is_symlink() else None
            if foreign:
                raise OutputError(foreign)
        if not replace:
            for temp, final in zip(temps, finals, strict=True):
                if temp.exists() and os.path.lexists(final):
                    raise _appeared(final)
        for number, (temp, final) in enumerate(zip(temps, finals, strict=True)):
            if not temp.exists():
                continue
            if not replace:
                make_folders(final.parent)
                if temp.is_dir() and not temp.is_symlink():
                    record = tmpdir / f".owner-{number}"
                    write_owner_record(temp, record)
                    # The folder first, then its record: a run that loses the name to another (a second run writing
                    # the same series) never touches the record, which is the winner's (HOSTILE16: the loser wrote
                    # its record over the winner's, then removed it).
                    _rename_no_replace(temp, final)
                    _place_record(record, final, temp)
                    continue
                _rename_no_replace(temp, final)
                continue
            if final.is_dir() and not final.is_symlink():
                remove_owned_folder(final)
            elif temp.is_dir() and (final.is_file() or final.is_symlink()):
                final.unlink()
            make_folders(final.parent)
            if temp.is_dir() and not temp.is_symlink():
                record = tmpdir / f".owner-{number}"
                write_owner_record(temp, record)
                os.replace(record, owner_record(final))
            os.replace(temp, final)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: PathLike, *, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write one file; rename it onto ``path`` when the block succeeds.

    The temporary file is named ``.defacer-tmp-<random>-<name>`` (same folder, so the rename is atomic, and a
    batch's sweep of ``.defacer-tmp-*`` removes one a killed run left); it keeps the target's name at the end,
    so writers that add or expect an ending (``.npz``, ``.onnx``) see it.  On any exception the temporary file
    is removed and ``path`` is left as it was.  It is created by the caller with the usual permissions.

    Parameters
    ----------
    path : path-like
        The final file; its folder is created if needed.
    durable : bool
        fsync the file before the rename (manifests and sidecars that must survive a power cut).
    """
    import secrets

    final = Path(path)
    make_folders(final.parent)
    temp = final.with_name(f"{TEMP_PREFIX}{secrets.token_hex(4)}-{final.name}")
    try:
        yield temp
        if durable:
            with temp.open("rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(temp, final)
    finally:
        temp.unlink(missing_ok=True)


def write_text_atomic(path: PathLike, text: str, *, durable: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_file`); return the path."""
    with atomic_file(path, durable=durable) as temp:
        temp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes_atomic(path: PathLike, data: bytes, *, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_file`); return the path."""
    with atomic_file(path, durable=durable) as temp:
        temp.write_bytes(data)
    return Path(path)


def copy_atomic(source: PathLike, target: PathLike) -> Path:
    """Copy ``source`` (contents, modes and times, as :func:`shutil.copy2`) to ``target`` atomically."""
    with atomic_file(target) as temp:
        shutil.copy2(source, temp)
    return Path(target)
