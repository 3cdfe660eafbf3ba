"""Header-only de-identification of DICOM files (``defacer anonymize``): pixels untouched.

Every file under the input is read, scrubbed by a :class:`~defacer.phi.scrub.Scrubber`
(PS3.15 Annex E) and written into a new folder that appears atomically, one subfolder per
series, with names that carry no PHI; optionally in several processes, with the same output.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from defacer._typing import PathLike
from defacer.errors import DicomSeriesError, OutputError, shown
from defacer.io import dicom_files
from defacer.io.atomic import atomic_outputs, check_output_path
from defacer.io.dicom_files import (
    INCOMPLETE_INSTANCE,
    check_output_folder,
    collect_identifying,
    dcmread_any,
    header_of_a_large_file,
    input_files,
    pixel_data_problem,
    refuse_one_instance_twice,
    unreadable_reason,
    write_instance,
)
from defacer.io.dicom_vr_notice import collected_vr_notices, say_vr_notices

if TYPE_CHECKING:
    from defacer.phi.scrub import Scrubber

logger = logging.getLogger(__name__)


#: What :func:`_anonymize_chunk` says of one file: ``(index, SeriesInstanceUID or None, why skipped, SOPInstanceUID)``
#: (the two UIDs the input's own, ``None`` and a reason where the file was skipped, ``""`` where it holds no UID; a
#: file held out with its series (:func:`held_out`) keeps its SOPInstanceUID, so that one file twice is named there too).
Outcome = tuple[int, str | None, str, str]

#: How the reason given to a file that is not written because its series is held out starts (:func:`held_out`).
NOT_WRITTEN = "not written: "


def held_out(why: str) -> bool:
    """Whether a skipped file's reason (``anonymize_files``' second list) says it was left out with its series,
    which holds a file too large to read: the input was not de-identified whole (``anonymize`` exits 1)."""
    return why.startswith(NOT_WRITTEN)


def _series_of_large_files(files: Sequence[Path]) -> dict[Path, tuple[str, str]]:
    """The files over :data:`~defacer.io.dicom_files.MAX_FILE_BYTES` whose header alone (read bounded, up to the
    pixel data: :func:`~defacer.io.dicom_files.header_of_a_large_file`) names their series, and that series'
    SeriesInstanceUID with the file's SOPInstanceUID (``""`` where it has none).  Such a file cannot be read to be
    written; its series is held out whole (an instance would be missing from it) and the input's other series are
    written.  A large file whose header does not tell its series is not listed: it refuses the whole input as a
    damaged one does."""
    found: dict[Path, tuple[str, str]] = {}
    for file in files:
        try:
            if os.stat(file).st_size <= dicom_files.MAX_FILE_BYTES:
                continue
        except OSError:
            continue  # judged when it is read
        header = header_of_a_large_file(file)
        if header is not None:
            found[file] = (str(header.SeriesInstanceUID), str(header.get("SOPInstanceUID", "")))
    return found


def _anonymize_chunk(
    files: Sequence[Path], first: int, folder: Path, deid: Scrubber, large: Mapping[Path, tuple[str, str]] | None = None
) -> tuple[list[Outcome], dict[str, Any] | None]:
    """De-identify ``files`` into ``folder/<index>.dcm``; per file an :data:`Outcome`.  ``large``: the files too
    large to read whose series is known (:func:`_series_of_large_files`): they and every other file of their
    series are neither scrubbed nor written (given a reason that :func:`held_out` knows)."""
    from pydicom.errors import InvalidDicomError

    large = large or {}
    held = {uid: file for file, (uid, _) in large.items()}
    results: list[Outcome] = []
    for index, file in enumerate(files, start=first):
        if file in large:
            try:
                dcmread_any(file)  # refused from its size, before a byte is read: its reason in the reader's words
                why = "too large DICOM file"
            except InvalidDicomError as err:
                why = str(err).removeprefix("damaged or ")
            results.append((index, None, f"{NOT_WRITTEN}{why}", large[file][1]))
            continue
        try:
            ds = dcmread_any(file)
        except InvalidDicomError as err:
            text = str(err)
            results.append((index, None, text if text.startswith("damaged") else unreadable_reason(file), ""))
            continue
        except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            results.append((index, None, f"damaged or truncated DICOM file ({type(err).__name__})", ""))
            continue
        if "SOPClassUID" not in ds and "SeriesInstanceUID" not in ds:
            meta = getattr(ds, "file_meta", None)
            if meta is not None and "MediaStorageSOPClassUID" in meta and "DirectoryRecordSequence" not in ds:
                results.append((index, None, INCOMPLETE_INSTANCE, ""))
            else:
                results.append((index, None, "not a DICOM instance (e.g. DICOMDIR)", ""))
            continue
        problem = pixel_data_problem(ds)
        if problem:
            results.append((index, None, f"damaged or truncated DICOM file ({problem})", ""))
            continue
        uid, instance = str(ds.get("SeriesInstanceUID", "")), str(ds.get("SOPInstanceUID", ""))
        if uid in held:
            why = (f"{NOT_WRITTEN}its series holds '{shown(held[uid])}', a file too large to read, and would be "
                   "written with that instance missing")
            results.append((index, None, why, instance))
            continue
        deid.scrub(ds, source=str(file))
        write_instance(ds, folder / f"{index:07d}.dcm", source=file)
        results.append((index, uid, "", instance))
    return results, (deid.mapping.as_dict() if deid.record_mapping else None)


#: A log record of defacer's handed back by a worker: ``(logger name, level, message)``.
WorkerLog = tuple[str, int, str]


class _Keep(logging.Handler):
    """Keeps the records it is given as :data:`WorkerLog` (a worker's, for the main process to say)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.kept: list[WorkerLog] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.kept.append((record.name, record.levelno, record.getMessage()))


def _anonymize_chunk_in_worker(
    files: Sequence[Path], first: int, folder: Path, deid: Scrubber, large: Mapping[Path, tuple[str, str]]
) -> tuple[list[Outcome], dict[str, Any] | None, list[tuple[str | None, str]], list[WorkerLog]]:
    """:func:`_anonymize_chunk` in a worker process, its "VR lookup failed" notices and defacer's own warnings handed
    back instead of said: each chunk has its own copy of the scrubber, whose "said once per run" notices (an age over
    89, an age that is no age, UIDs holding dates) were said once per chunk (HOSTILE22: three times with two workers,
    40 files); the main process says each once (:func:`_say_worker_logs`)."""
    package = logging.getLogger("defacer")
    keep, propagate = _Keep(), package.propagate
    package.addHandler(keep)
    package.propagate = False
    try:
        with collected_vr_notices() as notices:
            results, mapping = _anonymize_chunk(files, first, folder, deid, large)
    finally:
        package.removeHandler(keep)
        package.propagate = propagate
    return results, mapping, notices, keep.kept


def _say_worker_logs(records: Sequence[WorkerLog], said: set[WorkerLog]) -> None:
    """Say the workers' records here, each distinct one once in the run (``said`` holds those already said)."""
    for record in records:
        if record not in said:
            said.add(record)
            name, level, message = record
            logging.getLogger(name).log(level, "%s", message)


def anonymize_files(
    in_path: PathLike | Sequence[PathLike], out_dir: PathLike, deid: Scrubber, *, force: bool = False, jobs: int = 1
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """De-identify the headers of every DICOM file under ``in_path`` (pixels untouched).

    Output layout: ``out_dir/S001/IM00001.dcm``..., one folder per SeriesInstanceUID in order
    of first appearance (sorted input paths), files in input order: names carry no PHI and
    are the same on every run, whatever ``jobs``.  Documents, pictures and DICOMDIRs are not
    copied and are returned as skipped; a file that may be a damaged instance refuses the
    whole input (nothing is written).  A file too large to read (over
    :data:`~defacer.io.dicom_files.MAX_FILE_BYTES`) whose header alone names its series holds
    that series out: none of its files is written (nor scrubbed, nor in the mapping), each is
    returned as skipped with a reason :func:`held_out` knows, and the other series are written
    (one such file used to refuse the whole input); when nothing else is left, the input is
    refused.

    Parameters
    ----------
    in_path : path-like or sequence of path-like
        A folder (searched recursively), a file, or a list of files.
    out_dir : path-like
        New output folder (appears atomically).
    deid : Scrubber
        The de-identification to apply; its mapping is filled when it records one.
    force : bool
        Replace an existing output folder.
    jobs : int
        Worker processes (1: in this process).  Output is identical for any value.

    Returns
    -------
    written, skipped : list of Path, list of (Path, reason)

    Raises
    ------
    OutputError
        Output exists without ``force`` or overlaps the input.
    DicomSeriesError
        No DICOM file found; a file that may be a damaged instance (random bytes, truncated);
        an instance with burned-in text without opt-in; no series left to write beside those
        held out (nothing is written).
    """
    files = input_files(in_path, warn_linked_folders=True)
    out = Path(out_dir)
    root = Path(in_path) if isinstance(in_path, str | os.PathLike) and Path(in_path).is_dir() else None
    check_output_folder(out, root, files, force)
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}.")
    large = _series_of_large_files(files)
    skipped: list[tuple[Path, str]] = []
    written: list[Path] = []
    with atomic_outputs([out], replace=force) as temps:
        folder = temps[0]
        work = folder / ".work"
        work.mkdir(parents=True)
        if deid.cleans_text:
            collect_identifying(files, deid)
        if jobs == 1 or len(files) < 2 * jobs:
            outcomes, _ = _anonymize_chunk(files, 0, work, deid, large)
        else:
            outcomes = _anonymize_parallel(files, work, deid, jobs, large)
        damaged = [(files[index], why) for index, uid, why, _ in sorted(outcomes)
                   if uid is None and why.startswith("damaged")]
        if damaged:
            listing = "\n  ".join(f"{shown(p)}: {shown(why)}" for p, why in damaged[:10])
            raise DicomSeriesError(
                f"{len(damaged)} file(s) in '{in_path}' cannot be read as DICOM, so a series would be written with "
                f"missing instances:\n  {listing}\nRe-export them, or move them out of the input (nothing was written)."
            )
        _refuse_one_instance_twice(files, outcomes, in_path, large)
        series_index: dict[str, int] = {}
        counts: dict[int, int] = defaultdict(int)
        for index, uid, why, _ in sorted(outcomes):
            if uid is None:
                skipped.append((files[index], why))
                continue
            number = series_index.setdefault(uid, len(series_index) + 1)
            counts[number] += 1
            name = Path(f"S{number:03d}") / f"IM{counts[number]:05d}.dcm"
            (folder / name).parent.mkdir(exist_ok=True)
            os.replace(work / f"{index:07d}.dcm", folder / name)
            written.append(out / name)
        work.rmdir()
        if not written and large:
            listing = "\n  ".join(f"{shown(p)}: {shown(why.removeprefix(NOT_WRITTEN))}"
                                  for p, why in skipped if p in large)
            raise DicomSeriesError(
                f"{len(large)} DICOM file(s) in '{in_path}' cannot be read, and no series without them is left to "
                f"write:\n  {listing}\nRe-export them, or move them out of the input (nothing was written).")
        if not written:
            raise DicomSeriesError(f"No DICOM instance found in '{in_path}'; {len(skipped)} file(s) skipped.")
    for file, why in skipped:
        logger.warning("skipped '%s': %s", file, why)
    return written, skipped


def _refuse_one_instance_twice(files: Sequence[Path], outcomes: Sequence[Outcome],
                               in_path: PathLike | Sequence[PathLike], large: Mapping[Path, tuple[str, str]]) -> None:
    """Refuse an input that holds one DICOM instance (SOP Instance UID) in two files: one file twice (a copy beside
    it, a hard or symbolic link to it), or two different files (a re-export with an edited header beside the first
    export, another file given the instance's UID).  Each would be written: two output files of one SOP Instance UID,
    of which an archive keeps one (losing the other without a word) or refuses the series.

    The files of a series held out (it holds a file too large to read, ``large``) are compared too, the large file by
    the SOPInstanceUID of its header: one file linked twice there was listed as two files held out with their series,
    and named "one file twice" only once the large file was dealt with.  Two large files of one instance are one file
    twice where they are one file (a link); otherwise neither is read to compare them (both are held out, unread).

    Only files of one SOP Instance UID are compared (:func:`defacer.io.dicom_files.same_file`): no file is read again
    unless it repeats an instance.

    Raises
    ------
    DicomSeriesError
        Naming the two files, in ``deface``'s words (:func:`defacer.io.dicom_geometry.read_dicom_volume`).
    """
    source = shown(in_path) if isinstance(in_path, str | os.PathLike) else f"the {len(files)} files given"
    instances: list[tuple[int, str]] = []
    first_large: dict[str, Path] = {}
    for index, uid, why, instance in sorted(outcomes):
        if uid is None and not held_out(why):
            continue  # skipped (no instance, not DICOM): never written
        file = files[index]
        if file in large and instance:
            other = first_large.setdefault(instance, file)
            if other != file and not _one_file(other, file):
                continue  # two large files, not one: not read to be compared
        instances.append((index, instance))
    refuse_one_instance_twice(source, files, instances)


def _one_file(first: Path, second: Path) -> bool:
    """Whether two paths name one file (a hard or symbolic link), from their inodes alone (nothing read)."""
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False


def _anonymize_parallel(files: list[Path], work: Path, deid: Scrubber, jobs: int,
                        large: Mapping[Path, tuple[str, str]]) -> list[Outcome]:
    from concurrent.futures import ProcessPoolExecutor

    size = max(16, -(-len(files) // (jobs * 4)))
    outcomes: list[Outcome] = []
    said: set[WorkerLog] = set()
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_anonymize_chunk_in_worker, files[i:i + size], i, work, deid, large)
                   for i in range(0, len(files), size)]
        for future in futures:
            results, mapping, notices, records = future.result()
            say_vr_notices(notices)  # once in all, not once per worker
            _say_worker_logs(records, said)
            outcomes.extend(results)
            if mapping is not None:
                deid.mapping.uids.update(mapping["uids"])
                for patient, entry in mapping["patients"].items():
                    deid.mapping.patients.setdefault(patient, {}).update(entry)
    return outcomes


def write_deid_mapping(mapping: dict[str, Any], path: PathLike, *, out_dir: PathLike, force: bool = False) -> Path:
    """Write the original → new identifier map as JSON, never inside the output folder.

    The map re-identifies the data: keep it apart from the de-identified output.

    Raises
    ------
    OutputError
        If ``path`` lies inside ``out_dir``, or exists without ``force``.
    """
    import json

    target = Path(path)
    if target.resolve().is_relative_to(Path(out_dir).resolve()):
        raise OutputError(
            f"The mapping file '{target}' would be inside the de-identified output '{out_dir}', where it would "
            "re-identify the data. Write it somewhere else (it is only written where you ask)."
        )
    check_output_path(target, force=force)
    with atomic_outputs([target], replace=force) as (temp,):
        temp.write_text(json.dumps(mapping, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.chmod(temp, 0o600)
    return target
