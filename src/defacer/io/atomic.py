"""Atomic output: write into a private temporary folder beside the target, then rename.

An interrupted run leaves either the complete old state or the complete new files, never a
half-written output under the final name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from defacer._typing import PathLike
from defacer.errors import OutputError
from defacer.io.output_guard import (
    check_not_input,
    check_replaceable,
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
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.exists():
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"Cannot create the output folder '{folder}': {err.strerror}. Choose a writable place.") from err
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"The output folder '{folder}' is not writable. Choose a folder you can write to.")
    return target


@contextlib.contextmanager
def atomic_outputs(targets: Sequence[PathLike]) -> Iterator[list[Path]]:
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
    """
    finals = [Path(t) for t in targets]
    folder = finals[0].parent
    folder.mkdir(parents=True, exist_ok=True)
    try:
        tmpdir = Path(tempfile.mkdtemp(prefix=".defacer-tmp-", dir=folder))
    except OSError as err:
        raise OutputError(f"Cannot write in the output folder '{folder}': {err.strerror}.") from err
    temps = [tmpdir / f.name for f in finals]
    try:
        yield temps
        for number, (temp, final) in enumerate(zip(temps, finals, strict=True)):
            if not temp.exists():
                continue
            if final.is_dir() and not final.is_symlink():
                remove_owned_folder(final)
            elif temp.is_dir() and (final.is_file() or final.is_symlink()):
                final.unlink()
            final.parent.mkdir(parents=True, exist_ok=True)
            if temp.is_dir() and not temp.is_symlink():
                record = tmpdir / f".owner-{number}"
                write_owner_record(temp, record)
                os.replace(record, owner_record(final))
            os.replace(temp, final)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
