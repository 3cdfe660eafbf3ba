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


def check_output_path(path: PathLike, *, force: bool, inputs: Sequence[PathLike] = ()) -> Path:
    """Check that ``path`` may be written: not an input, not existing unless ``force``, folder writable.

    Raises
    ------
    OutputError
        With the reason and what to do.
    """
    target = Path(path)
    for source in inputs:
        if Path(source).exists() and target.exists() and os.path.samefile(source, target):
            raise OutputError(
                f"The output '{target}' is the input file itself. defacer never modifies its input: "
                "choose another output name."
            )
        if Path(source).resolve() == target.resolve():
            raise OutputError(
                f"The output '{target}' is the input file itself. defacer never modifies its input: "
                "choose another output name."
            )
    if target.exists() and not force:
        raise OutputError(f"The output '{target}' already exists. Pass --force to overwrite it, or choose another name.")
    if target.exists() and target.is_dir() and not force:
        raise OutputError(f"The output '{target}' is an existing folder. Pass --force or choose another name.")
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
    final names changes and the temporary folder is removed.

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
        for temp, final in zip(temps, finals, strict=True):
            if not temp.exists():
                continue
            if final.is_dir():
                shutil.rmtree(final)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp, final)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
