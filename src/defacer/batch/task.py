"""The work on one scan, as it runs inside a worker (or the main process when serial).

:func:`process_scan` takes a picklable :class:`ScanTask` and returns a
:class:`~defacer.batch.manifest.ScanRecord`; it never raises for a bad scan (the error goes into
the record) so one broken file never stops a batch.  The detector is loaded once per worker
process and kept in :data:`_DETECTORS`.

Every scan gets its own seed from the batch seed and its relative path
(:func:`scan_seed`), so the same scan gives the same bytes whichever engine, worker or order
ran it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from defacer.batch.discover import Scan, image_stem
from defacer.batch.layout import write_json_atomic
from defacer.batch.manifest import DONE, FAILED, INCOMPLETE, NOTHING_FOUND, ScanRecord, combined_sha256, stamp
from defacer.detect import Detector
from defacer.errors import (
    SYSTEM_ERRORS,
    DefacerError,
    FeaturesNotFoundError,
    InputImageError,
    OutputError,
    symlink_loop_message,
    system_error_message,
    thread_refused_message,
)
from defacer.files import files_under, make_folders
from defacer.io.output_guard import nrrd_data_files
from defacer.options import DEFAULT_OPTIONS, DefaceOptions, Deidentification

#: Signature of a stand-in for the per-scan defacing (:func:`defacer.route.deface_path`, returning the provenance).
DefaceFile = Callable[..., dict[str, Any]]

#: Detectors loaded in this process, by (weights path, threads).  One per worker process.
_DETECTORS: dict[tuple[str, int], Detector] = {}


@dataclass(frozen=True)
class ScanTask:
    """Everything a worker needs to deface one scan (picklable).

    Attributes
    ----------
    scan : Scan
        The input scan.
    output : Path
        Where the defaced image (or DICOM series folder) goes.
    in_root, out_root : Path
        Input and output folders (manifest paths are relative to them).
    seed : int
        The scan's own seed (see :func:`scan_seed`).
    fingerprint : str
        Digest of the output-shaping options, stored in the record.
    network : dict or None
        The library the batch planned the detector's network to run with, and its version
        (:func:`defacer.detect.backend.planned`, part of ``fingerprint``); where the worker's detector runs another
        (a worker with another install, an OpenVINO that failed to import), the record's fingerprint is left
        empty so that the next run does the scan again.  ``None``: not checked (labels given).
    options : DefaceOptions
        What to distort, with this scan's own ``seed`` (see :func:`scan_seed`).
    sidecar : Path or None
        Where to write the scan's JSON sidecar, and ``sidecar_data`` its content.
    labels_path : Path or None
        A label map for this scan (from ``--labels-dir``); otherwise the worker's detector.
    labels_root : Path or None
        The ``--labels-dir`` folder: its path is recorded as ``LABELS`` (as IN and OUT are).
    weights_path : Path or None
        Detector weights (``None``: the shipped ones).
    threads : int
        Threads the detector may use in this worker.
    verify_dir : Path or None
        Run verification and write its report and pictures here (in the QC folder beside OUT).
    qc_root : Path or None
        The QC folder (``OUT-qc``); report paths are recorded relative to it.
    qc_after_only : bool
        Write no picture of the original (after-defacing pictures only).
    retry_stronger : bool
        When the verification finds a face after defacing, deface the scan again with the larger nose removal
        and eye cover (:func:`defacer.options.stronger_options`) and verify that; ``verify["attempts"]`` of the
        record lists both.
    attempts : int
        How many times this scan has been tried, this one included.
    deface : callable or None
        Stand-in for :func:`defacer.route.deface_path` (tests, benchmarks), returning the
        provenance; must be a module-level function so it pickles.
    deidentify : Deidentification or None
        For DICOM series: how headers are de-identified (PS3.15 Annex E), with the batch's key,
        the same in every worker so pseudonyms agree across the batch; ``None`` leaves headers
        untouched (and is what other formats get).
    allow_missing : bool
        Write the scan even when a requested feature is not found (otherwise it is recorded
        as ``nothing-found`` or ``incomplete`` and nothing is written for it).
    max_voxels : int or None
        The loader's voxel limit (:func:`defacer.io.load_volume`); ``None``: no limit.
    allow_identifying_paths : bool
        Write a de-identified DICOM series even when the names of the folders it is written to hold identifiers
        of its own headers (a warning instead of a refusal; :func:`defacer.phi.paths.check_series_path`).
    refusal : str or None
        Why the scan is not to be defaced at all (its output would land on another scan's on a case-insensitive
        disk: :func:`defacer.batch.layout.folded_clashes`): recorded as its error, nothing read beyond its
        stamps, nothing written.
    stop_event : str or None
        Name of a Dask ``Event`` the batch sets when it is interrupted (a cluster it does not own: Dask cannot
        stop a running task); the scan looks at it between its steps and stops (:class:`ScanStopped`).
    """

    scan: Scan
    output: Path
    in_root: Path
    out_root: Path
    seed: int
    fingerprint: str = ""
    network: dict[str, str] | None = None
    options: DefaceOptions = DEFAULT_OPTIONS
    sidecar: Path | None = None
    sidecar_data: dict[str, Any] | None = None
    labels_path: Path | None = None
    labels_root: Path | None = None
    weights_path: Path | None = None
    threads: int = 1
    verify_dir: Path | None = None
    qc_root: Path | None = None
    qc_after_only: bool = False
    retry_stronger: bool = False
    attempts: int = 1
    deface: DefaceFile | None = None
    deidentify: Deidentification | None = None
    allow_missing: bool = False
    max_voxels: int | None = 512**3  # defacer.checks.DEFAULT_MAX_VOXELS
    allow_identifying_paths: bool = False
    refusal: str | None = None
    stop_event: str | None = None


def scan_seed(batch_seed: int, key: str) -> int:
    """The seed of one scan: the first 4 bytes of sha256(``"<batch_seed>:<key>"``), as an int."""
    digest = hashlib.sha256(f"{batch_seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def input_files(scan: Scan) -> list[Path]:
    """The files a scan reads: the image (plus a ``.nhdr``'s data file) or every file of a series."""
    if scan.kind == "dicom":
        return sorted(p for p in scan.path.iterdir() if p.is_file() and not p.name.startswith("."))
    return [scan.path, *[c for c in scan.companions if c.is_file()]]


def output_files(task: ScanTask) -> list[Path]:
    """Every file the scan wrote: image (and detached data), sidecars, provenance."""
    out = task.output
    if task.scan.kind == "dicom":
        files = sorted(p for p in files_under(out) if not p.name.startswith(".")) if out.is_dir() else []
        provenance = out.parent / f"{out.name}.defacer.json"
        return files + ([provenance] if provenance.is_file() else [])
    files = [out]
    if out.name.lower().endswith(".nhdr"):
        files += [p for p in nrrd_data_files(out) if p.is_file()]
    provenance = out.parent / f"{image_stem(out.name)}.defacer.json"
    if provenance.is_file():
        files.append(provenance)
    if task.sidecar is not None and task.sidecar.is_file():
        files.append(task.sidecar)
    return files


def init_worker(threads: int) -> None:
    """Process-pool initializer: ignore Ctrl-C (the main process handles it).

    The math libraries' thread counts come from the environment the worker was spawned
    with (see :data:`defacer.batch.engines.SINGLE_THREADED_ENV`); ``threads`` is what the
    detector may use.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def worker_detector(weights_path: Path | None, threads: int) -> Detector:
    """The detector of this worker process, loaded on first use and then reused."""
    cache_key = (str(weights_path or ""), threads)
    if cache_key not in _DETECTORS:
        from defacer.pipeline import load_detector

        _DETECTORS[cache_key] = load_detector(weights_path=weights_path, threads=threads)
    return _DETECTORS[cache_key]


def _check_network(task: ScanTask, record: ScanRecord) -> None:
    """Where this worker's detector ran its network with another library or version than the batch planned
    (``task.network``), say so (a warning in the record) and leave the record's fingerprint empty: the scan is done
    again on the next run rather than counted as done with the planned library."""
    if task.network is None or task.labels_path is not None or task.deface is not None:
        return
    from defacer.detect import backend

    detector = _DETECTORS.get((str(task.weights_path or ""), task.threads))
    ran = backend.ran(detector) if detector is not None else None
    if ran is not None and ran != task.network:
        record.fingerprint = ""
        logging.getLogger("defacer.batch").warning(
            "The detector's network ran with %s %s in this worker, not %s %s as the batch planned (another install "
            "here, or OpenVINO failed to import): the scan is done again on the next run.",
            ran["name"], ran["version"], task.network.get("name", "?"), task.network.get("version", "?"))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _mask_path(task: ScanTask) -> Path | None:
    """Where the detected label map goes for verification (same format as the scan), or ``None``."""
    if task.verify_dir is None or task.scan.kind != "file":
        return None
    return task.verify_dir / f"labels{task.scan.extension}"


def drop_labels_if_after_only(task: ScanTask) -> None:
    """With ``qc_after_only``, remove the label map kept for the report: it holds the original's nose and ear
    shapes (an ear can identify a person), and the QC folder is to hold nothing of the original then.  The worker
    does it once the report is written; the runner again at the run's end for every task (a worker stopped by
    Ctrl-C or SIGTERM, or one that died, never got there)."""
    mask_path = _mask_path(task)
    if task.qc_after_only and mask_path is not None:
        mask_path.unlink(missing_ok=True)


def _deface(task: ScanTask) -> dict[str, Any]:
    """Deface the scan through :func:`defacer.route.deface_path` (or the task's stand-in); its provenance."""
    mask_path = _mask_path(task)
    if mask_path is not None:
        make_folders(mask_path.parent)
    if task.deface is not None:
        return task.deface(task.scan.path, task.output, options=task.options, labels_path=task.labels_path,
                           force=True, mask_path=mask_path)
    from defacer.route import deface_path

    detector = None if task.labels_path is not None else worker_detector(task.weights_path, task.threads)
    return deface_path(
        task.scan.path, task.output, options=task.options, deidentify=task.deidentify, detector=detector,
        labels_path=task.labels_path, force=True, mask_path=mask_path, allow_missing=task.allow_missing,
        max_voxels=task.max_voxels,
    ).provenance


class ScanStopped(DefacerError):
    """The batch that sent this scan was interrupted (it set the task's :attr:`ScanTask.stop_event`)."""


def _stop_if_asked(task: ScanTask, before: str) -> None:
    """Raise :class:`ScanStopped` when the batch that sent ``task`` to a Dask cluster has been interrupted.

    Dask cannot stop a task a worker runs: a scan of a batch stopped by Ctrl-C or SIGTERM went on and wrote its
    output, report and pictures into OUT and OUT-qc after the batch had ended and released its lock (HOSTILE18,
    HOSTILE25).  The batch now sets the Event named :attr:`ScanTask.stop_event` and waits; each scan looks at it
    between its steps (``before``: the step it would start).  An Event that cannot be read (the scheduler gone)
    counts as set: nobody waits for the scan any more.
    """
    if task.stop_event is None:
        return
    try:
        from distributed import Event

        stop = bool(Event(task.stop_event).is_set())
    except Exception as err:  # no scheduler, no client: nobody waits for this scan any more
        raise ScanStopped(f"The batch's Dask scheduler could not be asked whether the batch goes on "
                          f"({type(err).__name__}): this scan stopped before {before}. Run the batch again.") from err
    if stop:
        raise ScanStopped(f"The batch was interrupted (Ctrl-C or SIGTERM): this scan stopped before {before}.")


def _verify(task: ScanTask, provenance: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`defacer.verify.verify_pair` on the scan and its output; a short outcome for the manifest."""
    from defacer.io import load_volume
    from defacer.verify import verify_pair

    verify_dir = task.verify_dir if task.verify_dir is not None else task.out_root
    mask_path = _mask_path(task)
    labels = load_volume(mask_path, strict=False) if mask_path is not None and mask_path.is_file() else None
    result = verify_pair(load_volume(task.scan.path, max_voxels=task.max_voxels),
                         load_volume(task.output, max_voxels=task.max_voxels), verify_dir, labels=labels,
                         provenance=provenance, title=f"defacer verify: {task.scan.key}",
                         after_only=task.qc_after_only)
    _stop_if_asked(task, "writing its verification pictures")
    from defacer.verify.qc import write_pictures

    pictures = write_pictures(result.renders, verify_dir, task.qc_after_only)
    # Relative to the QC folder: the manifest never records where the user's files are.
    base = (task.qc_root or verify_dir.parent).resolve()

    def rel(path: Path) -> str:
        return Path(path).resolve().relative_to(base).as_posix()

    return {"passed": bool(result.passed), "verdict": result.verdict,
            "face_found_after": list(result.summary.get("face_found_after") or []),
            "brain_untouched": bool(result.summary.get("brain_untouched", True)),
            "report_path": rel(result.report_path), "summary_path": rel(result.summary_path),
            "folder": rel(verify_dir), "pictures": pictures}


def _verify_with_retry(task: ScanTask, record: ScanRecord) -> None:
    """Verify the defaced scan into ``record.verify``; with ``task.retry_stronger`` and a face found after
    defacing, deface it again one step stronger (:func:`defacer.options.stronger_options`: the larger sizes, then
    the whole face) and verify that, while a face is found and a step is left (``record.provenance`` and
    ``record.verify`` are then the last attempt's, ``record.verify["attempts"]`` lists them all)."""
    from defacer.options import stronger_options
    from defacer.verify.verdict import attempt_record, face_still_found

    _stop_if_asked(task, "its verification")
    verify = _verify(task, record.provenance)
    attempts: list[dict[str, Any]] = []
    stronger = stronger_options(task.options) if task.retry_stronger else None
    while stronger is not None and face_still_found(verify):
        attempts.append(attempt_record(record.provenance.get("options") or asdict(task.options), verify))
        task = replace(task, options=stronger)
        _stop_if_asked(task, "defacing it again more strongly")
        record.provenance = dict(_deface(task) or {})
        _stop_if_asked(task, "verifying it again")
        verify = _verify(task, record.provenance)
        stronger = stronger_options(task.options)
    if attempts:
        verify["attempts"] = [*attempts, attempt_record(record.provenance.get("options") or asdict(task.options),
                                                         verify)]
    record.verify = verify


class _Collect(logging.Handler):
    """Keeps the warnings logged while one scan runs (they go into its record, not the terminal)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _collect_warnings() -> Iterator[list[str]]:
    logger = logging.getLogger("defacer")
    handler = _Collect()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def process_scan(task: ScanTask) -> ScanRecord:
    """Deface one scan and return its record; errors are recorded, not raised.

    ``KeyboardInterrupt`` still propagates (Ctrl-C stops the batch).  Outputs are written
    atomically by the pipeline, so a failed or interrupted scan leaves no partial output.
    """
    record = ScanRecord(
        key=task.scan.key, status=FAILED, seed=task.seed, fingerprint=task.fingerprint,
        started=_now(), worker=f"{socket.gethostname()}:{os.getpid()}", attempts=task.attempts,
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    with _collect_warnings() as warnings:
        _run(task, record)
    record.warnings = [_without_roots(w, task) for w in dict.fromkeys(warnings)]
    if record.error:
        record.error = _without_roots(record.error, task)
    record.timings["total"] = time.perf_counter() - start
    record.timings["cpu"] = time.process_time() - cpu_start
    record.finished = _now()
    return record


def _without_roots(message: str, task: ScanTask) -> str:
    """``message`` with IN, OUT and ``--labels-dir``'s absolute paths written ``IN``/``OUT``/``LABELS``: the
    manifest never records where the user's files are (the folders above them can name the patient or the study;
    a label map's error named its whole path)."""
    roots = [(task.in_root, "IN"), (task.out_root, "OUT")]
    if task.labels_root is not None:
        roots.append((task.labels_root, "LABELS"))
    forms = {(form, name) for root, name in roots
             for form in (str(root.resolve()), str(root)) if form not in (".", "/")}
    # Longest first: where OUT's path begins with IN's ('data' and 'data-out'), IN's replaced the start of OUT's and
    # an error about an output read 'IN-out/...', as if defacer wrote into its input.
    for form, name in sorted(forms, key=lambda pair: (-len(pair[0]), pair)):
        message = message.replace(form, name)
    return message


def check_output_names(task: ScanTask) -> None:
    """Refuse a de-identified DICOM series whose output folders are named after its own headers (the patient's
    name, IDs, birth date, original UIDs): the names would undo the de-identification. Other scans have no
    header to compare with, and a series written with its headers as they are (no de-identification) keeps them.

    Raises
    ------
    defacer.phi.paths.IdentifyingPathError
        Unless the task allows such names (then a warning is logged).
    """
    if task.scan.kind != "dicom" or task.deidentify is None:
        return
    from defacer.phi.paths import check_series_path

    relpath = task.output.relative_to(task.out_root).as_posix()
    check_series_path(relpath, input_files(task.scan), allow=task.allow_identifying_paths,
                      retain_uids=task.deidentify.profile.retain_uids)


@contextlib.contextmanager
def _scan_qc_held(task: ScanTask) -> Iterator[None]:
    """With ``--verify``, hold the scan's QC folder (``OUT-qc/<scan>/``) locked while the scan is defaced and
    verified (:func:`defacer.verify.qc.held`, the lock ``deface --verify`` and ``defacer verify`` take).

    The batch's own lock covers OUT only: a ``defacer verify ... --out OUT-qc/<scan>`` run by hand meanwhile wrote
    into the same folder as the batch's worker, one's report and pictures over the other's (HOSTILE25).  Now
    whichever comes second is refused before it writes anything there; for the batch, that scan fails in words
    (nothing written for it) and is done again by the next run.
    """
    if task.verify_dir is None:
        yield
        return
    from defacer.verify.qc import held

    with held(task.verify_dir, what="run the batch again then (this scan is done again)",
              nothing="Nothing was written for this scan; the other scans are defaced as usual."):
        yield


def _run(task: ScanTask, record: ScanRecord) -> None:
    """Fill ``record`` with the outcome of defacing the scan (status, files, provenance or error)."""
    start = time.perf_counter()
    try:
        if task.scan.path.is_symlink() and not task.scan.path.exists():
            raise InputImageError(
                f"'{task.scan.path}' is a broken symbolic link (in a DataLad dataset: a file whose content was "
                "not fetched). Run 'datalad get' on it, or exclude it with --exclude."
            )
        record.inputs = [stamp(p, task.in_root) for p in input_files(task.scan)]
        record.input_sha256 = combined_sha256(record.inputs)
        record.timings["hash"] = time.perf_counter() - start
        if task.refusal is not None:
            raise OutputError(task.refusal)
        check_output_names(task)
        _stop_if_asked(task, "it was defaced (nothing written for it)")
        with _scan_qc_held(task):
            t0 = time.perf_counter()
            provenance = _deface(task)
            record.provenance = dict(provenance or {})
            record.timings["deface"] = time.perf_counter() - t0
            _stop_if_asked(task, "its sidecar and verification, its output written")
            if task.sidecar is not None and task.sidecar_data is not None:
                write_json_atomic(task.sidecar, task.sidecar_data)
            if task.verify_dir is not None:
                t0 = time.perf_counter()
                try:
                    _verify_with_retry(task, record)
                finally:
                    drop_labels_if_after_only(task)
                record.timings["verify"] = time.perf_counter() - t0
        record.outputs = [stamp(p, task.out_root) for p in output_files(task)]
        record.status = DONE
        _check_network(task, record)
    except FeaturesNotFoundError as err:
        record.status = NOTHING_FOUND if err.nothing_found else INCOMPLETE
        record.error, record.error_type = str(err), type(err).__name__
        record.provenance = {"features": err.provenance.get("features", {})}
    except DefacerError as err:
        record.error, record.error_type = str(err), type(err).__name__
    except OSError as err:  # a full disk, a read-only or forbidden place: in words, not as a bug
        record.error_type = type(err).__name__
        if err.errno in SYSTEM_ERRORS:
            record.error = system_error_message(err)
        else:
            record.error = _unexpected(err)
    except (Exception, MemoryError) as err:  # noqa: BLE001 - one bad scan must never stop the batch
        record.error_type = type(err).__name__
        record.error = symlink_loop_message(err) or thread_refused_message(err) or _unexpected(err)


def _unexpected(err: BaseException) -> str:
    """An unexpected error with the file and line it came from (for the report of a bug)."""
    frames = traceback.extract_tb(err.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(err).__name__}: {err}{where}"


def failed_record(task: ScanTask, message: str, error_type: str) -> ScanRecord:
    """A record for a scan whose worker never returned (killed, lost)."""
    return ScanRecord(
        key=task.scan.key, status=FAILED, seed=task.seed, fingerprint=task.fingerprint,
        error=message, error_type=error_type, started="", finished=_now(), attempts=task.attempts,
    )


