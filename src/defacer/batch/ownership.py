"""Which files in a batch's output folder are defacer's: the ownership record ``OUT/.defacer/owned.jsonl``.

Before a batch writes anything, every file it would write into OUT (each scan's output,
detached data, JSON sidecar and provenance, the carried-over files, the BIDS dataset files) is
checked (:meth:`OwnershipRecord.check`): one that already exists must be named in the record,
or be a DICOM output folder whose own record lists all it holds
(:func:`defacer.io.output_guard.foreign_entries`).  Anything else is refused, ``--force`` or
not: ``--force`` lets a batch write into a folder that holds other files, never over them.
Once the check has passed, the names are added to the record (:meth:`OwnershipRecord.add`),
before the files are written, so a run killed between writing a file and recording it still
owns it on the next run.  Ownership is by name: a file the batch owns is replaced even if it was
damaged since (the next run redoes it).

The record is JSON Lines, one ``{"path": name relative to OUT, POSIX}`` per line; a line cut
short by a killed run is ignored, and so is a line longer than any defacer writes
(:data:`MAX_LINE_BYTES`; skipped unread, with a warning: its name is not counted as defacer's), and every line past
:data:`MAX_RECORD_LINES` lines or :data:`MAX_RECORD_BYTES` bytes (not read, with a warning).
A batch output written before the record existed (a manifest but no record) is credited with the outputs its manifest lists and, for BIDS, its
``dataset_description.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from defacer.batch.layout import OutputLayout
from defacer.batch.manifest import Manifest, bounded_lines, ends_with_newline
from defacer.errors import OutputError, shown
from defacer.files import make_folders
from defacer.io.output_guard import foreign_entries, listed_name, true_path

logger = logging.getLogger(__name__)

#: Name of the record in the batch's state folder (``OUT/.defacer``).
RECORD_NAME = "owned.jsonl"
#: Longest line of the record read (bytes, its line feed included).  defacer writes ``{"path": name}`` with the name
#: ASCII-escaped (at most 6 bytes per byte of a name; a path of a few kilobytes); a longer line is no line of
#: defacer's and is skipped unread (it was read whole: a multi-gigabyte line filled memory).
MAX_LINE_BYTES = 1024 * 1024
#: Most lines of the record read, and most bytes (HOSTILE22).  A batch records a few names a scan (output, sidecar,
#: provenance, carried files): a million lines is a dataset of some 250,000 scans.  A record beyond either bound
#: (a damaged or hostile one: millions of names, or duplicates) is read up to it and no further, with a warning:
#: the names past the bound do not count as defacer's, so the files they name are refused, never replaced; without
#: the bound every name was held in memory and read each run (5 million names: +588 MB and 13 s of CPU; now +124 MB,
#: 3.1 s; docs/security.md).
MAX_RECORD_LINES = 1_000_000
MAX_RECORD_BYTES = 256 * 1024 * 1024
#: Most offending names quoted in a refusal.
_NAMES_SHOWN = 5


def quoted_names(names: Sequence[object]) -> str:
    """The first few of ``names`` quoted, and how many more there are (for a refusal message)."""
    shown = ", ".join(f"'{n}'" for n in names[:_NAMES_SHOWN])
    return shown + (f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else "")


class OwnershipRecord:
    """The names of the files a batch writes into its output folder.

    Parameters
    ----------
    path : Path
        The record, ``OUT/.defacer/owned.jsonl``; read if it exists (never created here).
    out_root : Path
        The batch's output folder; names in the record are relative to it.
    """

    def __init__(self, path: Path, out_root: Path) -> None:
        self.path = path
        self.out_root = out_root
        self.names: set[str] = set()
        self._unsaved: set[str] = set()
        if path.is_file() and not path.is_symlink():
            self._read()

    def _read(self) -> None:
        long_lines = lines = 0
        with self.path.open("rb") as handle:  # lines decoded one by one: a damaged byte loses its line only
            for line in _bounded_lines(handle):
                lines += 1
                if lines > MAX_RECORD_LINES or handle.tell() > MAX_RECORD_BYTES:
                    self._warn_too_long()
                    break
                if line is None:
                    long_lines += 1
                    continue
                try:
                    self.names.add(str(json.loads(line)["path"]))
                except (ValueError, KeyError, TypeError, RecursionError):  # UnicodeDecodeError is a ValueError
                    continue  # a line cut short by a killed run, or damaged: its name is not counted as defacer's
        if long_lines:
            logger.warning(
                "The batch's ownership record '%s' has %d line(s) longer than any defacer writes (expected at most "
                "%d MiB a line, found more): not read, so no file named there counts as defacer's and this batch "
                "will refuse, not replace, such a file in the output folder. If that record was damaged, move the "
                "output folder's files away or choose another output folder.", shown(self.path), long_lines,
                MAX_LINE_BYTES // (1024 * 1024))

    def _warn_too_long(self) -> None:
        logger.warning(
            "The batch's ownership record '%s' is longer than any defacer writes (expected at most %d lines and %d MiB, "
            "found more): read up to there only, so no file named further on counts as defacer's and this batch will "
            "refuse, not replace, such a file in the output folder. If the record was damaged, move the output "
            "folder's files away or choose another output folder; a dataset this large is best split into several "
            "batches (--include).", shown(self.path), MAX_RECORD_LINES, MAX_RECORD_BYTES // (1024 * 1024))

    def credit(self, names: Iterable[str]) -> None:
        """Count ``names`` (relative to OUT) as defacer's; saved by the next :meth:`add`.

        For a batch output written before the record existed: what its manifest lists.
        """
        fresh = set(names) - self.names
        self.names |= fresh
        self._unsaved |= fresh

    def _name(self, path: Path) -> str:
        return path.relative_to(self.out_root).as_posix()

    def _listed_name(self, path: Path) -> str:
        """``path``'s name relative to OUT as the disk lists it: on a case-insensitive disk (macOS, Windows, exFAT)
        ``sub-01/ANAT/x.json`` opens the ``sub-01/anat/x.json`` an earlier run wrote and recorded.  Each existing part
        takes the spelling its folder lists (:func:`~defacer.io.output_guard.true_path`; the last part is matched
        in its folder's listing, never followed as a link); on a case-sensitive disk this is :meth:`_name`."""
        parent = true_path(path.parent)
        name = listed_name(parent, path.name) or path.name
        try:
            return (parent / name).relative_to(true_path(self.out_root)).as_posix()
        except ValueError:
            return self._name(path)

    def _through_link(self, target: Path) -> bool:
        """Whether a folder between OUT and ``target`` is a symbolic link."""
        folder = self.out_root
        for part in Path(self._name(target)).parts[:-1]:
            folder = folder / part
            if folder.is_symlink():
                return True
        return False

    def foreign(self, targets: Iterable[Path]) -> list[Path]:
        """The targets (paths in OUT) that exist and are not defacer's, in the order given.

        A file (or symbolic link) is defacer's when the record names it; a folder (a DICOM
        series output) when its own ownership record lists everything in it.  A target reached
        through a symbolic link to a folder (``OUT/sub-01 -> elsewhere``) is never defacer's:
        writing it would write outside OUT.
        """
        found = []
        for target in targets:
            if self._through_link(target):
                found.append(target)
                continue
            if not target.exists() and not target.is_symlink():
                continue
            if target.is_dir() and not target.is_symlink():
                try:
                    if foreign_entries(target):
                        found.append(target)
                except OutputError:  # its ownership record is too large to read: not defacer's
                    found.append(target)
            elif self._name(target) not in self.names and self._listed_name(target) not in self.names:
                found.append(target)  # names compared as the disk lists them (one file under two spellings)
        return found

    def check(self, targets: Iterable[Path]) -> None:
        """Refuse when any file the batch would write exists and is not defacer's.

        Raises
        ------
        OutputError
            Naming the files in the way and what to do.
        """
        foreign = self.foreign(targets)
        if not foreign:
            return
        raise OutputError(
            f"The output folder '{self.out_root}' holds files defacer did not write where this batch would write its "
            f"outputs: {quoted_names([self._name(p) for p in foreign])}. defacer never replaces them, --force or not (--force only lets a batch write "
            "beside other files, and replace what an earlier batch wrote), and never writes through a folder that is a "
            "symbolic link to elsewhere. Move those files or links away or choose another output folder."
        )

    def add(self, targets: Iterable[Path]) -> None:
        """Name ``targets`` (paths in OUT, checked by :meth:`check`) as defacer's, durably (appended, fsynced)."""
        self._unsaved |= {self._listed_name(p) for p in targets} - self.names  # as the disk spells them
        if not self._unsaved:
            return
        # ASCII escapes: a name that is not UTF-8 (kept by Python as lone surrogates) is written as '\\udce9' and read
        # back as the same name; written as it is, it could not be encoded and the run stopped.
        lines = "".join(json.dumps({"path": name}) + "\n" for name in sorted(self._unsaved))
        make_folders(self.path.parent)
        if self.path.is_file() and self.path.stat().st_size and not ends_with_newline(self.path):
            lines = "\n" + lines  # after a line cut short by a killed run
        _append_whole(self.path, lines.encode("ascii"))
        self.names |= self._unsaved
        self._unsaved = set()


def _bounded_lines(handle: BinaryIO) -> Iterator[bytes | None]:
    """The lines of a binary file open for reading, each at most :data:`MAX_LINE_BYTES` long; ``None`` for a longer
    line, which is skipped in chunks without being held in memory (:func:`~defacer.batch.manifest.bounded_lines`)."""
    return bounded_lines(handle, MAX_LINE_BYTES)


def _append_whole(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` (created if absent), fsynced; on a refusal (a full disk, a lost mount) the file is
    cut back to its size before (best effort), so no line is left half-written, and the error is raised."""
    handle = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(handle).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(handle, view):]
            os.fsync(handle)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(handle, size)
            raise
    finally:
        os.close(handle)


def open_record(layout: OutputLayout) -> OwnershipRecord:
    """The ownership record of a batch output (read only until :meth:`OwnershipRecord.add`).

    A batch output written before the record existed (it has a manifest but no record) is
    credited with every output its manifest lists and, for BIDS, its ``dataset_description.json``.
    """
    record = OwnershipRecord(layout.state_dir / RECORD_NAME, layout.out_root)
    if record.path.exists() or record.path.is_symlink() or not layout.manifest_path.is_file():
        return record
    record.credit(item.path for scan in Manifest(layout.manifest_path, read_only=True) for item in scan.outputs)
    if layout.bids and (layout.out_root / "dataset_description.json").is_file():
        record.credit(["dataset_description.json"])
    return record
