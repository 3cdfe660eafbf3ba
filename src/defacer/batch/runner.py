"""Deface a whole dataset: :func:`run_batch` composes discovery, layout, manifest and engines.

Steps: find the scans in IN; check and prepare OUT (refusing to write into IN); lock OUT;
carry over non-image files and write ``dataset_description.json``; skip the scans the
manifest says are done and intact; run the rest on the chosen engine, recording each result
in the manifest as it arrives; write the summary (terminal table, HTML, compacted manifest).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from defacer._typing import PathLike
from defacer._version import __version__
from defacer.batch import engines
from defacer.batch.discover import Discovery, Scan, discover, image_stem
from defacer.batch.layout import (
    LAYOUTS,
    OTHERS_MODES,
    OutputLayout,
    carry_over,
    carry_over_targets,
    check_folders,
    check_state_dir,
    dataset_targets,
    defaced_sidecar,
    folded_clashes,
    prepare_output,
    remove_stale_temporaries,
    target_clashes,
    write_dataset_files,
)
from defacer.batch.manifest import (
    DONE,
    SKIPPED,
    Manifest,
    ScanRecord,
    batch_lock,
    is_up_to_date,
    options_fingerprint,
)
from defacer.batch.ownership import open_record
from defacer.batch.summary import (
    Counts,
    Progress,
    collected_warnings,
    count,
    print_table,
    verdict_of,
    write_html,
)
from defacer.batch.task import (
    DefaceFile,
    ScanTask,
    check_output_names,
    drop_labels_if_after_only,
    input_files,
    scan_seed,
)
from defacer.batch.workers import cap_jobs
from defacer.checks import DEFAULT_MAX_VOXELS
from defacer.errors import SYSTEM_ERRORS, DefacerError, InputImageError, OutputError
from defacer.files import label_map_in, link_outside, text_name
from defacer.labels import FEATURES
from defacer.options import DEFAULT_DEIDENTIFICATION, DEFAULT_OPTIONS, DefaceOptions, Deidentification
from defacer.phi.options import DeidOptions
from defacer.provenance import code_digest

log = logging.getLogger(__name__)

#: Exit status of a batch in which no scan failed but some had a requested feature not found
#: (the same as ``defacer deface``'s).
EXIT_FEATURES_MISSING = 4
#: Exit status of a batch in which nothing failed but some verification was inconclusive (no face found in
#: the original to test; the same as ``defacer verify``'s).
EXIT_VERIFY_INCONCLUSIVE = 5



@dataclass(frozen=True)
class BatchConfig:
    """Everything that defines a batch run.

    Parameters
    ----------
    in_root, out_root : path-like
        Input dataset and output folder (never the same, never nested).
    include, exclude : sequence of str
        Scan filters (see :mod:`defacer.batch.discover`).
    options : DefaceOptions
        What to distort and how (the same object ``defacer deface`` builds).  Its ``seed`` is the
        batch seed: each scan's seed derives from it and the scan's relative path.
    jobs : int
        Worker processes (1 = serial in one worker process, unless ``scheduler`` is set); more than this
        machine's CPU cores are capped to them, with a warning (:func:`defacer.batch.workers.cap_jobs`).
    scheduler : str or None
        ``"local"`` or a Dask scheduler address / scheduler file; ``None`` for no Dask.
    layout : {"mirror", "derivatives"}
        Output layout (see :mod:`defacer.batch.layout`).
    others : {"copy", "hardlink", "symlink", "skip"} or None
        What to do with non-image files; ``None``: copy for mirror, skip for derivatives and for a folder holding
        DICOM series (a DICOM export's other files often name the patient).
    labels_dir : path-like or None
        Folder of label maps mirroring IN (``<stem>.labels.nii.gz``) used instead of the detector.
    weights_path : path-like or None
        Detector weights (default: the shipped ones).
    verify : bool
        Run verification on every defaced scan; reports, pictures and the QC gallery go to
        ``OUT-qc`` beside OUT (never inside it), linked from the HTML summary.
    qc_after_only : bool
        With ``verify``: write no picture of the original faces, only after defacing.
    retry_stronger : bool
        Verify (as ``verify``), and deface again with the larger nose removal and eye cover every scan whose
        verification finds a face after defacing (:class:`~defacer.batch.task.ScanTask`); a rerun with it redoes
        the scans recorded with such a FAIL and not retried yet, and skips the others as usual.
    force : bool
        Allow a non-empty OUT that holds no batch manifest.
    redo : bool
        Deface every selected scan again even if the manifest says it is done.
    rehash : bool
        Check done scans by full sha256 instead of size and modification time.
    quiet : bool
        No progress bar and no summary table.
    deidentify : Deidentification or None
        How DICOM headers are de-identified (PS3.15 Annex E Basic Profile plus options, and the
        key); ``None`` keeps them as they are.  Without a key, a random one serves this run
        (pseudonyms consistent within the run; DICOM series are then redone on every run so they
        stay consistent with each other).
    allow_missing : bool
        Write scans in which a requested feature was not found (otherwise they are recorded as
        ``nothing-found`` or ``incomplete`` and nothing is written for them).
    max_voxels : int or None
        Refuse (record as failed) NIfTI/NRRD/MGH scans declaring more voxels than this
        (default :data:`defacer.checks.DEFAULT_MAX_VOXELS`); ``None``: no limit.
    allow_identifying_paths : bool
        Write de-identified DICOM series whose output folder names hold identifiers of their own headers
        (patient name, IDs, birth date, original UIDs), with a warning each; by default such a series is recorded
        as failed and nothing is written for it (:mod:`defacer.phi.paths`).
    """

    in_root: PathLike
    out_root: PathLike
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    options: DefaceOptions = DEFAULT_OPTIONS
    jobs: int = 1
    scheduler: str | None = None
    layout: str = "mirror"
    others: str | None = None
    labels_dir: PathLike | None = None
    weights_path: PathLike | None = None
    verify: bool = False
    qc_after_only: bool = False
    retry_stronger: bool = False
    force: bool = False
    redo: bool = False
    rehash: bool = False
    quiet: bool = False
    deidentify: Deidentification | None = DEFAULT_DEIDENTIFICATION
    allow_missing: bool = False
    max_voxels: int | None = DEFAULT_MAX_VOXELS
    allow_identifying_paths: bool = False

    def __post_init__(self) -> None:
        if self.retry_stronger and not self.verify:  # a retry is decided by the verification
            object.__setattr__(self, "verify", True)

    @property
    def features(self) -> tuple[str, ...]:
        """The features to distort (``options.features``)."""
        return self.options.features

    @property
    def seed(self) -> int:
        """The batch seed (``options.seed``)."""
        return self.options.seed


@dataclass
class BatchSummary:
    """The outcome of :func:`run_batch`.

    Attributes
    ----------
    records : list of ScanRecord
        One per selected scan (skipped ones with status ``"skipped"``).
    counts : Counts
        Tally by status.
    wall_s : float
        Seconds from start to end.
    manifest_path, html_path : Path
        Where the manifest and the HTML summary are.
    engine : str
        ``"serial"``, ``"processes"`` or ``"dask"``.
    notices : list of str
        The warnings of listing IN and carrying its other files (files left out, tables de-identified),
        also listed in the HTML summary.
    """

    records: list[ScanRecord]
    counts: Counts
    wall_s: float
    manifest_path: Path
    html_path: Path
    engine: str
    notices: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 when every scan was defaced (and passed verification, when on); 1 when some failed
        (or failed verification); else 4 when in some a requested feature was not found; else 5
        when some verification was inconclusive (no face found in the original to test)."""
        if self.counts.failed or self.counts.verify_failed:
            return 1
        if self.counts.nothing_found or self.counts.incomplete:
            return EXIT_FEATURES_MISSING
        return EXIT_VERIFY_INCONCLUSIVE if self.counts.verify_inconclusive else 0


def check_config(config: BatchConfig) -> None:
    """Validate option values with messages that say what is allowed.

    Raises
    ------
    ValueError
    DetectorError
        Scans are to be found by the detector on this machine and ``DEFACER_DETECTOR_BACKEND`` names no backend,
        or one that is not installed (:func:`defacer.detect.backend.chosen`).
    """
    if config.jobs < 1:
        raise ValueError(f"--jobs must be 1 or more, not {config.jobs}.")
    if config.layout not in LAYOUTS:
        raise ValueError(f"Unknown output layout {config.layout!r}: expected one of {', '.join(LAYOUTS)}.")
    if config.others is not None and config.others not in OTHERS_MODES:
        raise ValueError(f"Unknown --others {config.others!r}: expected one of {', '.join(OTHERS_MODES)}.")
    unknown = [f for f in config.features if f not in FEATURES]
    if unknown or not config.features:
        raise ValueError(f"Unknown features {unknown}: expected some of {', '.join(FEATURES)}.")
    if config.labels_dir is not None and not Path(config.labels_dir).is_dir():
        raise InputImageError(f"--labels-dir '{config.labels_dir}' is not a folder. Give the folder of label maps.")
    if config.labels_dir is None and config.scheduler in (None, "local"):
        from defacer.detect import backend

        # DEFACER_DETECTOR_BACKEND naming no backend, or one not installed here: said once, before OUT is touched
        # (it failed every scan, one by one, after the output folder had been set up). A cluster's workers have
        # their own environment and say it per scan.
        backend.chosen()


def labels_for(scan: Scan, labels_dir: Path | None) -> Path | None:
    """The label map of a scan in ``labels_dir``, or ``None``.

    Same relative folder and ``<stem>.labels.nii.gz`` (or another of :data:`defacer.files.LABEL_ENDINGS`:
    ``.labels.nii``, ``.labels.nrrd``, ``.labels.nhdr``, ``.labels.mgz``, ``.labels.mgh``); for a DICOM series folder ``<folder name>.labels.nii.gz`` beside where the
    folder would be (for a lone series given as IN: ``<labels_dir>/<folder name>.labels.nii.gz``).
    """
    if labels_dir is None:
        return None
    folder = labels_dir / scan.relpath.parent
    stem = image_stem(scan.relpath.name) if scan.kind == "file" else scan.path.name
    return label_map_in(folder, stem, within=labels_dir)


def linked_out_labels(labels: Path, labels_dir: Path) -> str:
    """Why a scan whose label map in ``--labels-dir`` is a symbolic link out of it is not defaced (it is not read).

    ``labels`` is :func:`labels_for`'s path (not resolved), ``labels_dir`` the resolved folder; the message names the
    map by its place in the folder, never where it leads (a private file's name).
    """
    where = labels.relative_to(labels_dir).as_posix() if labels.is_relative_to(labels_dir) else labels.name
    return (f"The label map '{text_name(where)}' in --labels-dir is a symbolic link to a file outside that folder "
            "(or lies in a folder linked from outside it): not read (expected the label maps inside --labels-dir; "
            "defacer reads only the files of the folders it is given). This scan was not defaced, nothing written "
            "for it; the other scans are defaced as usual. Copy the map into the folder (cp -L) to use it, or "
            "remove the link to deface the scan with the detector.")


#: Revision of the rules that de-identify a scan's JSON sidecar (:func:`defacer.phi.sidecar.scrub_sidecar`), part of
#: the fingerprint of every scan with a sidecar: raised whenever they learn to remove or mask more, so that the
#: rerun of a batch does again the outputs written by the earlier rules, whose sidecars may hold what the new ones
#: remove.  1: the Annex E actions on keys that are DICOM keywords (5d39c23, 2bc1661; recorded as ``true``); 2: keys
#: spelt otherwise (case, spaces, attribute names, DICOM-JSON tags) and the kept text masked of the patient's own
#: values (46ba2fd, 6ee9bd1, 1069093); 3: the same rules on objects and lists nested at any depth (HOSTILE5); 4: keys
#: the table does not list get the header's safety nets (PN and UR removed, DA/DT as Study Date; HOSTILE5); 5: DICOM-JSON
#: keys of private tags, and of unknown tags by their declared VR (UI removed; HOSTILE5); 6: the header's own safety-net rule
#: (defacer.phi.scrub.unlisted_net): keys holding the UIDs of original instances the table does not list removed.
SIDECAR_RULES_REVISION = 6
#: Revision of the rules that de-identify a DICOM series' headers (:class:`defacer.phi.scrub.Scrubber`), part of the
#: fingerprint of every de-identified DICOM series (absent before it existed): raised whenever they learn to remove
#: or replace more, so that the rerun of a batch redoes series written by the earlier rules.  1: unlisted UIDs that
#: name original instances (SOPInstanceUIDOfConcatenationSource...), unknown elements holding the patient's values,
#: unlisted web addresses and dates, burned-in flags read as coded strings (HOSTILE5).
DICOM_RULES_REVISION = 1


def _fingerprint(config: BatchConfig, scan: Scan, labels: Path | None, detector_id: str,
                 deidentify: Deidentification | None, network: dict[str, str] | None = None) -> str:
    """Digest of everything that shapes a scan's output, defacer's own code included
    (:func:`defacer.provenance.code_digest`), so a rerun by another code redoes the scan.  Options left at
    their defaults are not listed: an option added later does not change the fingerprint by existing.
    ``network``: the library that runs the detector's network and its version (:func:`_network`; its labels
    differ by a few voxels from the other's), for a scan the detector defaces."""
    from defacer.batch.manifest import sha256_file

    defaults = asdict(DEFAULT_OPTIONS)
    changed = {name: value for name, value in asdict(config.options).items()
               if name not in ("features", "seed") and value != defaults[name]}
    deid_key = deidentify.key if deidentify is not None else None
    fields: dict[str, Any] = {
        "version": __version__,
        # the code itself: the detector's rules, the distortions and the de-identification change between
        # releases (the version stays), and an output an earlier code wrote is done again
        "code": code_digest(),
        "features": list(config.features),
        "seed": config.seed,
        "layout": config.layout,
        "labels_sha256": sha256_file(labels) if labels is not None else None,
        "detector": None if labels is not None else detector_id,
        # the sidecar's detector.backend: a batch resumed under the other library (or another version) redoes
        # the scans the detector defaced, rather than mixing its outputs with the earlier library's
        "detector_backend": None if labels is not None else network,
        "options": changed,
        "deid_key_sha256": hashlib.sha256(deid_key).hexdigest() if scan.kind == "dicom" and deid_key else None,
    }
    if scan.kind == "dicom" and deidentify is not None:
        fields["dicom_rules"] = DICOM_RULES_REVISION
    if scan.sidecar is not None and deidentify is not None:
        # the JSON sidecar carried to OUT is de-identified by the profile (layout.defaced_sidecar): an output
        # written before that, or by rules that have since learnt more, is done again
        fields["sidecar_deidentified"] = SIDECAR_RULES_REVISION
    if (scan.kind == "dicom" or scan.sidecar is not None) and deidentify is not None \
            and deidentify.profile != DeidOptions():
        fields["deid_options"] = asdict(deidentify.profile)
    return options_fingerprint(fields)


def _detector_id(config: BatchConfig) -> str:
    """sha256 of the detector weights in use (the shipped ones by default), for the fingerprint."""
    from defacer.batch.manifest import sha256_file

    if config.weights_path is not None:
        path = Path(config.weights_path)
    else:
        try:
            from defacer.detect.model import default_weights_path
        except ImportError:
            return "none"
        path = default_weights_path()
    return sha256_file(path) if path.is_file() else f"missing:{path.name}"


def _network() -> dict[str, str]:
    """The library that the workers' detector will run its network with, and its version
    (:func:`defacer.detect.backend.planned`: nothing imported), for the fingerprint; where
    ``DEFACER_DETECTOR_BACKEND`` names none or a forced one is missing, its words (each scan the detector would
    deface then fails with them, in its worker)."""
    from defacer.detect import backend

    try:
        return backend.planned()
    except DefacerError as err:
        return {"error": str(err)}


def _threads_per_worker(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // jobs)


def plan(
    config: BatchConfig, discovery: Discovery, layout: OutputLayout, manifest: Manifest,
    deface: DefaceFile | None = None,
) -> tuple[list[ScanTask], list[ScanRecord]]:
    """Split the scans into tasks to run and records of scans already done.

    Returns
    -------
    (tasks, skipped) : tuple of lists
    """
    labels_dir = Path(config.labels_dir).resolve() if config.labels_dir is not None else None
    detector_id = _detector_id(config)
    network = _network()
    jobs = config.jobs
    threads = _threads_per_worker(jobs)
    deidentify = config.deidentify
    if deidentify is not None and any(scan.kind == "dicom" for scan in discovery.scans) and deidentify.key is None:
        deidentify = replace(deidentify, key=secrets.token_bytes(32), random_key=True)  # one key, every worker
        log.warning("No --key/--key-file: DICOM headers are de-identified with a random key, so pseudonyms are "
                    "consistent within this run only and every DICOM series is redone on the next run.")
    verify = config.verify
    tasks: list[ScanTask] = []
    skipped: list[ScanRecord] = []
    refused = _folded_refusals(layout, discovery)
    for scan in discovery.scans:
        labels = labels_for(scan, labels_dir)
        if labels is not None and labels_dir is not None and link_outside(labels, labels_dir) is not None:
            refused.setdefault(scan.key, linked_out_labels(labels, labels_dir))
            labels = None  # never read, not even hashed for the fingerprint
        fingerprint = _fingerprint(config, scan, labels, detector_id, deidentify, network)
        previous = manifest.get(scan.key)
        verified = not verify or (previous is not None and _qc_intact(previous.verify, layout.qc_dir)
                                  and not _retry_due(config, previous.verify))
        if scan.key not in refused and not config.redo and verified and is_up_to_date(
                previous, fingerprint=fingerprint, in_root=layout.in_root, out_root=layout.out_root,
                input_files=input_files(scan), rehash=config.rehash):
            assert previous is not None
            skipped.append(ScanRecord(**{**previous.__dict__, "status": SKIPPED}))
            continue
        seed = scan_seed(config.seed, scan.key)
        sidecar = layout.sidecar_path(scan)
        tasks.append(ScanTask(
            scan=scan, output=layout.output_path(scan), in_root=layout.in_root, out_root=layout.out_root,
            seed=seed, fingerprint=fingerprint, network=network if labels is None else None,
            options=replace(config.options, seed=seed),
            sidecar=sidecar,
            sidecar_data=defaced_sidecar(scan, layout, config.features, seed,
                                         deidentify.profile if deidentify is not None else None)
            if sidecar is not None else None,
            labels_path=labels, labels_root=labels_dir, weights_path=Path(config.weights_path) if config.weights_path else None,
            threads=threads, verify_dir=layout.verify_dir(scan) if verify else None,
            qc_root=layout.qc_dir if verify else None, qc_after_only=config.qc_after_only,
            retry_stronger=config.retry_stronger,
            deface=deface, deidentify=deidentify if scan.kind == "dicom" else None,
            allow_missing=config.allow_missing, max_voxels=config.max_voxels,
            allow_identifying_paths=config.allow_identifying_paths, refusal=refused.get(scan.key),
        ))
    return tasks, skipped


def _folded_refusals(layout: OutputLayout, discovery: Discovery) -> dict[str, str]:
    """``{scan key: why}`` for the scans not to deface because, on a case-insensitive disk (macOS, Windows, exFAT),
    their output would replace an earlier scan's (:func:`~defacer.batch.layout.folded_clashes`): the first in name
    order of each such group is defaced, the others are recorded as failed with this reason.  Refused on every disk:
    an OUT written on a case-sensitive one holds the same clash once copied to such a disk."""
    refusals = {}
    for key, (first, path) in folded_clashes(layout, discovery.scans, discovery.excluded_scans).items():
        where = path.relative_to(layout.out_root).as_posix() if path.is_relative_to(layout.out_root) else path.name
        refusals[key] = (
            f"'{key}' and '{first}' differ only in letter case (or Unicode form): on a case-insensitive disk "
            f"(macOS, Windows, exFAT) this scan's output '{where}' is the same file or folder as the output of "
            f"'{first}', and writing it would replace that one. Not defaced, nothing written for it ('{first}' is "
            "defaced as usual). Rename one of them in IN so that the names differ by more than letter case, or "
            "deface this one apart into another folder (defacer deface, or batch with --include)."
        )
    return refusals


def _retry_due(config: BatchConfig, verify: dict[str, Any] | None) -> bool:
    """Whether ``--retry-stronger`` redoes a scan recorded as done: its verification found a face after defacing,
    it was not retried yet, and the larger sizes would change something."""
    from defacer.options import stronger_options
    from defacer.verify.verdict import face_still_found

    return (config.retry_stronger and bool(verify) and not (verify or {}).get("attempts")
            and face_still_found(verify or {}) and stronger_options(config.options) is not None)


def _qc_intact(verify: dict[str, Any] | None, qc_dir: Path) -> bool:
    """Whether a record's verification is there to show: recorded, and its report, summary and pictures still in
    ``OUT-qc`` (a QC folder deleted or moved since would leave the gallery pointing at missing pictures).

    ``verify`` holds paths relative to ``qc_dir``: ``report_path``, ``summary_path``, and ``pictures`` (names
    inside ``folder``).
    """
    if not verify:
        return False
    recorded = [verify.get("report_path"), verify.get("summary_path")]
    folder = verify.get("folder")
    if folder:
        recorded += [f"{folder}/{name}" for name in (verify.get("pictures") or {}).values()]
    return all((qc_dir / path).is_file() for path in recorded if isinstance(path, str) and path)


def engine_name(config: BatchConfig) -> str:
    """Which engine a config runs on."""
    if config.scheduler:
        return "dask"
    return "processes" if config.jobs > 1 else "serial"


def _discover(config: BatchConfig) -> tuple[Discovery, OutputLayout]:
    """Check the config, find the scans, and build the output layout (writes nothing)."""
    check_config(config)
    discovery = discover(config.in_root, include=config.include, exclude=config.exclude)
    if config.layout == "derivatives" and discovery.layout != "bids":
        raise DefacerError(
            f"--derivatives needs a BIDS dataset, but '{config.in_root}' is not one (no dataset_description.json "
            "or sub-* folders). Drop --derivatives to mirror the folder instead."
        )
    if not discovery.scans:
        if discovery.excluded:
            raise DefacerError(
                f"The filters excluded all {len(discovery.excluded)} scans of '{config.in_root}' "
                f"(--include {list(config.include)}, --exclude {list(config.exclude)}). Check the patterns: "
                "KEY=VALUE on BIDS entities (suffix=T1w) or globs on the path relative to IN ('sub-01/*')."
            )
        raise InputImageError(
            f"No scans found in '{config.in_root}' (as a {discovery.layout} folder). Expected a BIDS dataset with "
            "images in sub-*/anat/, or NIfTI/NRRD/MGZ files, or folders of DICOM files."
        )
    layout = OutputLayout(in_root=discovery.root, out_root=Path(config.out_root).resolve(), layout=config.layout,
                          bids=discovery.layout == "bids")
    check_folders(layout.in_root, layout.out_root)
    if config.labels_dir is not None:  # an input too: 'batch ds labels --labels-dir labels --force' wrote into it
        check_folders(Path(config.labels_dir), layout.out_root)
    clashes = target_clashes(layout, discovery.scans)
    if clashes:
        listing = "\n  ".join(f"'{a}' and '{b}' both write '{path.relative_to(layout.out_root).as_posix()}'"
                              for a, b, path in clashes[:10])
        raise DefacerError(
            f"{len(clashes)} file(s) in the output would be written by two scans of '{config.in_root}', each "
            f"replacing the other's:\n  {listing}\nRename one of each pair in the input, or leave one out with "
            "--exclude (nothing was written)."
        )
    return discovery, layout


def _drop_stale_verifications(layout: OutputLayout, tasks: Sequence[ScanTask], records: Sequence[ScanRecord],
                              manifest: Manifest, *, title: str) -> None:
    """Without ``--verify``, remove the verification an earlier ``--verify`` run left in ``OUT-qc`` for each scan
    this run wrote again (another ``--features``, label map, code): its report said PASS and showed the replaced
    output.  Only the files the QC folder's ownership record lists go; the gallery is written again from the
    manifest, so it no longer shows their verdicts."""
    from defacer.verify.qc import GALLERY_NAME, held, holds_original_pictures, owned_files, report_targets

    qc_root = layout.qc_dir
    if qc_root.is_symlink() or not qc_root.is_dir():
        return
    written = {record.key for record in records if record.status == DONE}
    dropped = 0
    try:
        for task in tasks:
            if task.scan.key not in written:
                continue
            folder = layout.verify_dir(task.scan)
            labels = [f"labels{task.scan.extension}"] if task.scan.kind == "file" else []
            if not folder.is_dir() or folder.is_symlink():
                continue
            try:  # never under a 'defacer verify --out' writing there now (HOSTILE25): it holds the folder's lock
                with held(folder, what="rerun the batch"):
                    for path in owned_files(qc_root, report_targets(folder, *labels)):
                        path.unlink(missing_ok=True)
                        dropped += 1
                    if not any(folder.iterdir()):
                        folder.rmdir()
            except OutputError:
                log.warning("the earlier verification of '%s' in '%s' was not removed: another defacer run is "
                            "writing into that folder right now; it describes the replaced output until that run "
                            "ends (rerun with --verify)", text_name(task.scan.key), text_name(str(folder)))
        if dropped and owned_files(qc_root, [qc_root / GALLERY_NAME]):
            write_qc_gallery(sorted(manifest.records.values(), key=lambda r: r.key), qc_root, title=title,
                             after_only=not holds_original_pictures(qc_root))
    except OSError as err:
        log.warning("the verification of a scan written again could not be removed from '%s' (%s): it describes "
                    "the earlier output; remove it by hand or rerun with --verify", text_name(str(qc_root)), err)
        return
    if dropped:
        log.warning("removed %d file(s) of the earlier verification of the scans written again from '%s' (they "
                    "described the replaced outputs); rerun with --verify to verify them", dropped,
                    text_name(str(qc_root)))


class _RecordNotWritten(Exception):
    """The manifest refused a finished scan's record (a full disk, a lost mount): the batch stops."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _stopped_message(cause: OSError, layout: OutputLayout, key: str, to_do: int, not_done: int) -> str:
    """Why a batch stopped when a finished scan's record could not be written, what it left, and what to do."""
    what = f"{cause.strerror or type(cause).__name__}: {SYSTEM_ERRORS.get(cause.errno or 0, 'the system refused it')}"
    recorded = to_do - not_done - 1
    return (f"The batch stopped: the record of the scan '{text_name(key)}' could not be written to "
            f"'{text_name(str(layout.manifest_path))}' ({what}). {recorded} of the {to_do} scans "
            f"to do finished and are recorded; '{text_name(key)}' was written but is not recorded (the next run does "
            f"it again); {not_done} were not started. Free some space (or choose another output disk) and run the "
            "same command again: the recorded scans are kept, the others are done.")


@contextlib.contextmanager
def _stops_before_any_scan(layout: OutputLayout, writing: str, scans: int) -> Iterator[None]:
    """A refusal by the system (a full disk) inside the block stops the batch before its first scan, in words
    (:func:`_not_started_message`); ``writing`` names what was being written, quoted."""
    try:
        yield
    except OSError as err:
        if err.errno not in SYSTEM_ERRORS:
            raise
        raise OutputError(_not_started_message(err, layout, writing, scans)) from err


def _not_started_message(cause: OSError, layout: OutputLayout, writing: str, scans: int) -> str:
    """Why a batch stopped before its first scan when its manifest, ownership record or dataset files could not be
    written (a full disk), what earlier runs left, and what to do."""
    what = f"{cause.strerror or type(cause).__name__}: {SYSTEM_ERRORS.get(cause.errno or 0, 'the system refused it')}"
    earlier = sum(1 for _ in Manifest(layout.manifest_path, read_only=True)) if layout.manifest_path.is_file() else 0
    return (f"The batch stopped before defacing any scan: {writing} could not be written ({what}). "
            f"None of the {scans} scans found was started by this run and nothing was half-written; "
            f"{earlier} recorded by earlier runs are kept. Free some space (or choose another output disk) and run the "
            "same command again: the recorded scans are kept, the others are done.")


def _written_since(output: Path, since: float) -> bool:
    """Whether ``output`` (a scan's image, or its DICOM series folder) was put in place at or after ``since``
    (seconds since the epoch; a second's slack for coarse file times): written by this run."""
    try:
        return os.lstat(output).st_mtime >= since - 1.0
    except OSError:
        return False


def _not_done_note(total: int, not_done: Sequence[str], written: Sequence[str], running: Sequence[str]) -> str:
    """What an interrupted batch says of its scans: how many finished, and of those not done, which were stopped after
    their output was written (``written``), which may still be running on a Dask cluster (``running``), and that
    nothing was written for the others."""
    head = f"{total - len(not_done)} of the {total} scans to do finished; "
    if not written and not running:
        return head + f"{len(not_done)} not defaced (nothing written for them)"
    said = []
    if written:
        said.append(f"{len(written)} of them stopped after their output was written, before it was verified and "
                    f"recorded ({_listed(written)}): those files are not checked, do not share them (the same command "
                    "does them again)")
    if running:
        said.append(f"{len(running)} of them still running on the Dask cluster when the batch stopped waiting for "
                    f"them ({_listed(running)}): they may yet write their output into OUT and pictures into its QC "
                    "folder, not verified and not recorded; wait until the cluster's workers are idle, do not share "
                    "those files, and run the same command again (it does them again)")
    others = len(not_done) - len(written) - len(running)
    if others:  # "nothing was written for the other 0" was said where the cluster held every scan
        said.append(f"nothing was written for the other {others}")
    return head + f"{len(not_done)} not finished: " + "; ".join(said)


def _listed(keys: Sequence[str], most: int = 5) -> str:
    """Scan keys for a console line: the first ``most`` quoted, then how many more."""
    shown_keys = ", ".join(f"'{text_name(key)}'" for key in keys[:most])
    return shown_keys + (f" and {len(keys) - most} more" if len(keys) > most else "")


def _close_run(config: BatchConfig, discovery: Discovery, layout: OutputLayout, manifest: Manifest,
               tasks: Sequence[ScanTask], records: Sequence[ScanRecord], *, notices: Sequence[str],
               not_done: Sequence[str], start: float, unrecorded: Sequence[str], written: Sequence[str] = (),
               running: Sequence[str] = ()) -> tuple[float, Path, bool]:
    """What every batch run ends with, finished, interrupted or stopped: temporaries of stopped workers removed,
    stale verifications dropped, the manifest compacted, ``summary.html`` and the QC gallery written.

    ``unrecorded`` holds the scan whose record the disk refused (the batch stops): it leaves the manifest, and a
    refusal here (the same full disk) is a warning that never hides why the batch stopped.

    Returns
    -------
    (wall_s, html_path, unchanged) : tuple
        Seconds since ``start``; the summary page; whether it was kept from the run that did the work (nothing to do).
    """
    title = text_name(discovery.root.name)
    html_path = layout.state_dir / "summary.html"
    wall_s, unchanged = time.perf_counter() - start, False
    try:
        remove_stale_temporaries(layout.out_root)  # from workers stopped mid-scan
        if config.verify and layout.qc_dir.is_dir():
            # The QC folder too (a half-written picture or label map); with --qc-after-only the label map of a scan
            # whose worker was stopped before its report (Ctrl-C, SIGTERM, a dead worker) stayed there.
            remove_stale_temporaries(layout.qc_dir)
            for task in tasks:
                drop_labels_if_after_only(task)
        if not config.verify:
            _drop_stale_verifications(layout, tasks, records, manifest, title=f"defacer QC: {title}")
        if unrecorded:
            manifest.records.pop(unrecorded[0], None)  # its outputs are whole, but its record was not written
        manifest.compact()
        wall_s = time.perf_counter() - start
        # A resume that has nothing to do keeps the summary of the run that did the work.
        unchanged = not tasks and html_path.is_file()
        if not unchanged:
            html_path = write_html(records, html_path, out_root=layout.out_root, title=f"defacer batch: {title}",
                                   wall_s=wall_s, qc_root=layout.qc_dir, notices=notices, not_done=not_done,
                                   written=written, running=running)
        if config.verify and not (unchanged and (layout.qc_dir / "index.html").is_file()):
            write_qc_gallery(records, layout.qc_dir, title=f"defacer QC: {title}", after_only=config.qc_after_only)
    except OSError as err:
        if not unrecorded:
            raise
        log.warning("the batch's summary could not be written either (%s)", err.strerror or err)
    return wall_s, html_path, unchanged


def write_qc_gallery(records: Sequence[ScanRecord], qc_root: Path, *, title: str, after_only: bool) -> Path:
    """Write ``OUT-qc/index.html``: one row per scan with its pictures, verdict, features and report link."""
    from defacer.verify.qc import GalleryRow, write_gallery

    rows = []
    for record in records:
        verify = record.verify or {}
        verdict = verdict_of(record)
        features = (record.provenance or {}).get("features", {})
        found = [name for name, entry in features.items() if entry.get("found_voxels", 0) > 0]
        rows.append(GalleryRow(name=record.key, verdict=verdict, folder=verify.get("folder"),
                               pictures=dict(verify.get("pictures") or {}), features=found,
                               report=verify.get("report_path"), status=record.status,
                               note=record.error or "; ".join(record.warnings)))
    return write_gallery(qc_root, rows, title=title, after_only=after_only)


def _profile(config: BatchConfig) -> DeidOptions | None:
    """The run's header de-identification options (``None`` with ``--no-deidentify``), for carried JSON files."""
    return config.deidentify.profile if config.deidentify is not None else None


def _others_mode(config: BatchConfig, discovery: Discovery) -> str:
    """What happens to non-image files: ``--others``; else copy in the mirror layout and skip in derivatives, and
    skip in a folder holding DICOM series (:func:`holds_dicom_series`)."""
    if config.others:
        return config.others
    return "copy" if config.layout == "mirror" and not holds_dicom_series(discovery) else "skip"


def holds_dicom_series(discovery: Discovery) -> bool:
    """Whether IN is a folder (not BIDS) holding DICOM series: a DICOM export, whose other files (reports, key
    pictures, notes) often name the patient, while only the series' headers are de-identified."""
    return discovery.layout == "files" and any(scan.kind == "dicom" for scan in discovery.scans)


def _targets(config: BatchConfig, discovery: Discovery, layout: OutputLayout) -> list[Path]:
    """Every file (or DICOM series folder) in OUT the run may write: what :class:`~defacer.batch.ownership.OwnershipRecord` checks
    (not those of scans refused for a case-insensitive clash: they write nothing)."""
    refused = folded_clashes(layout, discovery.scans, discovery.excluded_scans)
    return [*(target for scan in discovery.scans if scan.key not in refused for target in layout.scan_targets(scan)),
            *carry_over_targets(layout, discovery.others, _others_mode(config, discovery),
                                clean_tables=config.deidentify is not None, profile=_profile(config),
                                scans=discovery.scans),
            *dataset_targets(layout)]


def _qc_targets(discovery: Discovery, layout: OutputLayout) -> list[Path]:
    """Every file ``--verify`` may write into ``OUT-qc``: its README and gallery, each scan's reports, pictures
    and label map (what :func:`defacer.verify.qc.claim` checks and records)."""
    from defacer.verify.qc import GALLERY_NAME, README_NAME, report_targets

    targets = [layout.qc_dir / README_NAME, layout.qc_dir / GALLERY_NAME]
    refused = folded_clashes(layout, discovery.scans, discovery.excluded_scans)
    for scan in discovery.scans:
        if scan.key in refused:
            continue
        labels = [f"labels{scan.extension}"] if scan.kind == "file" else []
        targets += report_targets(layout.verify_dir(scan), *labels)
    return targets


def _planned_action(task: ScanTask) -> str:
    """``"deface"``, or ``"refuse"`` for a scan the run would refuse: its output would replace another scan's on a
    case-insensitive disk (``task.refusal``), or a DICOM series with identifying output names
    (:func:`~defacer.batch.task.check_output_names`); the reason is logged as a warning."""
    from defacer.phi.paths import IdentifyingPathError

    if task.refusal is not None:
        log.warning("%s", task.refusal)
        return "refuse"
    try:
        check_output_names(task)
    except IdentifyingPathError as err:
        log.warning("%s", err)
        return "refuse"
    return "deface"


def describe_plan(config: BatchConfig) -> list[tuple[str, str, Path | None]]:
    """What a run would do, without writing anything: ``(action, scan key, output path)`` rows.

    Actions are ``"deface"``, ``"refuse"`` (a de-identified DICOM series whose output folder names hold its
    header identifiers: reads their headers; or a scan whose output differs from an earlier scan's only in letter
    case), ``"skip"`` (done by an earlier run and intact) and
    ``"exclude"`` (removed by the filters; neither defaced nor copied).

    Raises
    ------
    OutputError
        When the run would be refused: a file it would write is in the way (:meth:`~defacer.batch.ownership.OwnershipRecord.check`).
    """
    discovery, layout = _discover(config)
    check_state_dir(layout)
    open_record(layout).check(_targets(config, discovery, layout))
    if config.verify:
        from defacer.verify.qc import check_owned

        check_owned(layout.qc_dir, _qc_targets(discovery, layout))
    manifest = Manifest(layout.manifest_path, read_only=True)
    tasks, skipped = plan(config, discovery, layout, manifest)
    rows: list[tuple[str, str, Path | None]] = []
    for task in tasks:
        action = _planned_action(task)
        rows.append((action, task.scan.key, task.output if action == "deface" else None))
    rows += [("skip", r.key, None) for r in skipped]
    rows += [("exclude", str(rel), None) for rel in discovery.excluded]
    return sorted(rows, key=lambda row: row[1])


def run_batch(config: BatchConfig, *, deface: DefaceFile | None = None, stream: TextIO | None = None) -> BatchSummary:
    """Deface every selected scan of a dataset; resumable, parallel, never stopped by one bad scan.

    Parameters
    ----------
    config : BatchConfig
    deface : callable, optional
        Stand-in for :func:`defacer.route.deface_path` returning the provenance (module-level,
        so worker processes can import it).  Default: the pipeline.
    stream : file, optional
        Where progress and the summary go (default stderr).

    Returns
    -------
    BatchSummary
        Also written to ``OUT/.defacer/summary.html``; the manifest is compacted.

    Raises
    ------
    OutputError
        If OUT overlaps IN, is a non-empty folder of something else, or is locked by
        another batch.
    InputImageError
        If IN is not a folder.
    KeyboardInterrupt
        On Ctrl-C, after the finished scans are recorded and in-flight work is cancelled.
    """
    start = time.perf_counter()
    with collected_warnings("defacer.batch.discover") as notices:  # kept for the HTML summary
        discovery, layout = _discover(config)
    if config.scheduler in (None, "local"):  # workers on this machine; a cluster's are its own
        config = replace(config, jobs=cap_jobs(config.jobs))
    check_state_dir(layout)  # before the ownership record is read through it
    owned = open_record(layout)
    targets = _targets(config, discovery, layout)
    qc_targets = _qc_targets(discovery, layout) if config.verify else []
    if config.verify:
        from defacer.verify.qc import check_owned

        check_owned(layout.qc_dir, qc_targets)  # before anything is written, as OUT's own check
    if config.verify and config.labels_dir is not None:  # the QC folder never mixes with the label maps either
        check_folders(Path(config.labels_dir), layout.qc_dir)
    resuming = prepare_output(layout, force=config.force, owned=owned, targets=targets)
    if config.verify:
        check_folders(layout.in_root, layout.qc_dir)
        from defacer.verify.qc import claim, notice, write_readme

        claim(layout.qc_dir, qc_targets)  # recorded before anything is written there
        write_readme(layout.qc_dir, config.qc_after_only)
        if not config.quiet:
            print(notice(layout.qc_dir, config.qc_after_only), file=stream or sys.stderr)
    with batch_lock(layout.state_dir):
        scans = len(discovery.scans)
        with _stops_before_any_scan(layout, f"'{text_name(str(layout.manifest_path))}'", scans):
            manifest = Manifest(layout.manifest_path)
        with _stops_before_any_scan(layout, f"'{text_name(str(owned.path))}'", scans):
            owned.add(targets)  # before writing: a run killed after a write still owns the file
        if discovery.others and _others_mode(config, discovery) == "skip" and holds_dicom_series(discovery):
            log.warning("%d other file(s) of this DICOM export (reports, pictures, notes: they often name the patient, "
                        "and only the series' headers are de-identified) are not carried to the output; pass --others "
                        "copy to carry them as they are.", len(discovery.others))
        with collected_warnings("defacer.batch.layout") as carried:
            carry_over(layout, discovery.others, _others_mode(config, discovery),
                       clean_tables=config.deidentify is not None, profile=_profile(config), scans=discovery.scans)
            with _stops_before_any_scan(layout, f"the dataset files of '{text_name(str(layout.out_root))}' "
                                        "(dataset_description.json, .bidsignore)", scans):
                write_dataset_files(layout)
        notices = [*notices, *carried]
        tasks, skipped = plan(config, discovery, layout, manifest, deface)
        if resuming:
            log.info("resuming: %d scans already done, %d to do", len(skipped), len(tasks))
        if discovery.excluded:
            log.info("%d scans excluded by filters (not defaced, not copied)", len(discovery.excluded))
        records: list[ScanRecord] = list(skipped)
        progress = Progress(len(tasks), quiet=config.quiet, stream=stream)

        unrecorded: list[str] = []  # the scan whose record could not be written (a full disk): the batch stops

        def on_result(record: ScanRecord) -> None:
            # Listed before it is recorded: a scan in the manifest is never reported "not done" by an interrupt
            # landing between the two (one listed but not yet recorded is only done again by the rerun).
            records.append(record)
            try:
                manifest.append(record)
            except OSError as err:
                unrecorded.append(record.key)
                raise _RecordNotWritten(err) from err
            progress.advance(record)

        engine = engine_name(config)
        not_done: list[str] = []  # the scans an interruption (Ctrl-C, SIGTERM) left undone, for the summary
        written: list[str] = []  # those of them whose output this run had written (stopped while verifying...)
        running: list[str] = []  # those still running on a Dask cluster the batch stopped waiting for (Ctrl-C again)
        run_started = time.time()
        try:
            with progress:
                if engine == "dask":
                    engines.run_dask(tasks, on_result, scheduler=str(config.scheduler), jobs=config.jobs,
                                     threads=_threads_per_worker(config.jobs))
                elif engine == "processes":
                    engines.run_processes(tasks, on_result, jobs=config.jobs,
                                          threads=_threads_per_worker(config.jobs))
                else:
                    engines.run_serial(tasks, on_result)
        except KeyboardInterrupt as err:
            finished = {record.key for record in records}
            not_done = [task.scan.key for task in tasks if task.scan.key not in finished]
            # The scans a Dask cluster the batch does not own still ran when it stopped waiting for them (Ctrl-C
            # again): they may yet write; "nothing written for them" was said of them.
            running = [key for key in err.keys if key in not_done] if isinstance(err, engines.LeftRunning) else []
            # The other workers are stopped by now; a scan stopped while it was verified (or before its record) has
            # its output in OUT: "nothing written for them" was said beside it.
            written = [task.scan.key for task in tasks if task.scan.key in not_done and task.scan.key not in running
                       and _written_since(task.output, run_started)]
            err.add_note(_not_done_note(len(tasks), not_done, written, running))
            raise
        except _RecordNotWritten as err:
            finished = {record.key for record in records}
            not_done = [task.scan.key for task in tasks if task.scan.key not in finished]
            raise OutputError(_stopped_message(err.cause, layout, unrecorded[0], len(tasks), len(not_done))) from err.cause
        finally:
            wall_s, html_path, unchanged = _close_run(config, discovery, layout, manifest, tasks, records,
                                                      notices=notices, not_done=not_done, start=start,
                                                      unrecorded=unrecorded, written=written, running=running)
    summary = BatchSummary(records=sorted(records, key=lambda r: r.key), counts=count(records), wall_s=wall_s,
                           manifest_path=layout.manifest_path, html_path=html_path, engine=engine,
                           notices=list(notices))
    if not config.quiet:
        print_table(summary.records, wall_s=wall_s, stream=stream, html_path=html_path)
        if notices and not unchanged:
            print(f"{len(notices)} notice(s) while listing the input and copying its other files (files left out or "
                  f"changed): listed in {html_path}", file=stream or sys.stderr)
        if config.verify:
            print(f"QC gallery: {layout.qc_dir / 'index.html'}", file=stream or sys.stderr)
    return summary
