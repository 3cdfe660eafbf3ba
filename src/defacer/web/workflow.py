"""The steps a session goes through: receive, load, detect, deface, verify.

Plain functions on a :class:`~defacer.web.sessions.Session`; they know nothing about HTTP.
They call only the library's public API (:mod:`defacer.io`, :mod:`defacer.pipeline`,
:mod:`defacer.verify`), and every path they touch is chosen here, inside the session's
private folder.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from defacer.checks import BYTES_PER_VOXEL
from defacer.detect import Detector
from defacer.errors import (
    DefacerError,
    DetectorError,
    DicomSeriesError,
    InputImageError,
    SeveralSeriesError,
    TooManyVoxelsError,
)
from defacer.files import files_under
from defacer.io.atomic import atomic_file, write_text_atomic
from defacer.labels import FEATURE_LABELS, FEATURES
from defacer.volume import Volume, canonical_reorientation
from defacer.web.sessions import Session, SessionBusy, StoredFile
from defacer.web.settings import WebSettings
from defacer.web.uploads import (
    SNIFF_BYTES,
    STORED_NAMES,
    UnsupportedUpload,
    UploadTooLarge,
    check_nrrd_upload,
    extract_zip,
    human_bytes,
    misnamed_note,
    prepare_nhdr_upload,
    sniff,
)

if TYPE_CHECKING:
    from defacer.options import DefaceOptions

log = logging.getLogger(__name__)

#: Kinds of upload that are one whole scan (or label map) in one file.
SINGLE_FILE_KINDS = ("nifti", "nifti-gz", "nrrd", "mgh", "mgz")

#: File endings of each volume format, for download names (a ``.nhdr`` and its data file are downloaded zipped).
FORMAT_SUFFIX = {"nifti-gz": ".nii.gz", "nifti": ".nii", "nrrd": ".nrrd", "nhdr": ".nhdr", "mgz": ".mgz",
                 "mgh": ".mgh"}

#: ``session.state`` key of the name the data file of an uploaded ``.nhdr`` must have.
NHDR_EXPECTS = "nhdr_data_name"

ProgressCallback = Callable[[str, float], None]


def _limit_message(total: int, limit: int) -> str:
    """Say by how much an upload breaks the limit, in exact bytes (rounded sizes can read as equal)."""
    return (
        f"The upload is larger than the limit of this server: {total:,} bytes ({human_bytes(total)}) received or "
        f"announced, {total - limit:,} bytes more than the limit of {limit:,} bytes ({human_bytes(limit)}). Upload a "
        "single series, or restart the server with a larger --max-upload-mb."
    )


def check_announced_size(session: Session, announced: int | None, settings: WebSettings) -> None:
    """Refuse an upload whose ``Content-Length`` already breaks the limit, before reading it."""
    if announced is not None and session.uploaded_bytes + announced > settings.max_upload_bytes:
        raise UploadTooLarge(_limit_message(session.uploaded_bytes + announced, settings.max_upload_bytes))


def _target_for(session: Session, role: str, kind: str, settings: WebSettings) -> Path:
    if session.job.state in ("queued", "running") or "volume" in session.state:
        raise SessionBusy("This scan is already loaded; upload files into a new work area (start over) instead.")
    # 'uploading' is set before this check and 'load' checks it once it holds the lock: one of the two sees the other
    if not session.lock.acquire(blocking=False):  # held by a step (load, detect, deface) in a worker thread
        raise SessionBusy("This work area's scan is being read right now; upload every file first, then load "
                          "(the page does), or start over.")
    session.lock.release()
    if role == "labels":
        if kind not in SINGLE_FILE_KINDS:
            raise UnsupportedUpload("A label map must be one NIfTI, NRRD or MGZ file on the scan's grid.")
        if session.label_files:
            raise UnsupportedUpload("A label map was already uploaded for this scan; start over to change it.")
        return session.path("labels" + FORMAT_SUFFIX[kind])
    kinds = {f.kind for f in session.scan_files}
    if kind == "nhdr-data":
        return session.path(STORED_NAMES[kind])
    if kind in SINGLE_FILE_KINDS or kind in ("zip", "nhdr"):
        if session.scan_files:
            raise UnsupportedUpload(
                "Upload one scan at a time: a single NIfTI/NRRD/MGZ file, one .zip of a DICOM series, or the "
                "DICOM files of one series. Start over and choose only the files of one scan."
            )
        return session.path(STORED_NAMES[kind])
    if kinds - {"dicom"}:
        raise UnsupportedUpload("DICOM files cannot be mixed with other files. Start over and choose one series.")
    if len(session.scan_files) >= settings.max_files:
        raise UploadTooLarge(f"A series may have at most {settings.max_files} files on this server.")
    folder = session.path("dicom")
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder / f"{len(session.scan_files) + 1:05d}.dcm"


async def receive_upload(
    session: Session,
    role: str,
    display_name: str,
    chunks: AsyncIterator[bytes],
    settings: WebSettings,
) -> StoredFile:
    """Stream one uploaded file into the work area, checking its type from the first bytes.

    Parameters
    ----------
    session : Session
    role : {"scan", "labels"}
        A scan file (or one of a DICOM series) or a label map.
    display_name : str
        The browser's name for the file: a type hint and a label, never a path.
    chunks : async iterator of bytes
        The request body.
    settings : WebSettings
        Upload limits.

    Returns
    -------
    StoredFile

    Raises
    ------
    UnsupportedUpload, UploadTooLarge
        Nothing is left on disk when these are raised.
    SessionBusy
        When another file is being received into the same work area (uploads of one work area go one
        after another: the stored names and the size limit count the files already stored).
    """
    # Checked and set before the first await: on the event loop no other upload can run in between.
    if session.uploading:
        raise SessionBusy("Another file is being uploaded into this work area right now. Upload the files one "
                          "after another (the page does), or start over.")
    session.uploading = True
    try:
        return await _receive(session, role, display_name, chunks, settings)
    finally:
        session.uploading = False


async def _receive(
    session: Session,
    role: str,
    display_name: str,
    chunks: AsyncIterator[bytes],
    settings: WebSettings,
) -> StoredFile:
    """Body of :func:`receive_upload` (the work area takes no other upload meanwhile)."""
    head = b""
    target: Path | None = None
    handle: BinaryIO | None = None
    size = 0
    kind = ""
    try:
        async for chunk in chunks:
            if not chunk:
                continue
            size += len(chunk)
            if session.uploaded_bytes + size > settings.max_upload_bytes:
                raise UploadTooLarge(_limit_message(session.uploaded_bytes + size, settings.max_upload_bytes))
            if handle is None:
                head += chunk
                if len(head) < SNIFF_BYTES:
                    continue
                kind = _kind_of(session, role, head, display_name)
                handle, target = _create(_target_for(session, role, kind, settings))
                handle.write(head)
            else:
                handle.write(chunk)
        if handle is None:  # short file: sniff what there is
            kind = _kind_of(session, role, head, display_name)
            handle, target = _create(_target_for(session, role, kind, settings))
            handle.write(head)
        handle.close()
        if kind == "nrrd" and target is not None:
            check_nrrd_upload(target)  # the whole header, not only the first chunk
        if kind == "nhdr" and target is not None:
            session.state[NHDR_EXPECTS] = prepare_nhdr_upload(target)
    except BaseException:
        if handle is not None:
            handle.close()
        if target is not None:
            target.unlink(missing_ok=True)
        raise
    assert target is not None
    stored = StoredFile(path=target, kind=kind, display_name=_display(display_name), size=size)
    session.uploaded_bytes += size
    (session.label_files if role == "labels" else session.scan_files).append(stored)
    return stored


def _create(path: Path) -> tuple[BinaryIO, Path]:
    """Open a new file for writing; never an existing one (so a failed upload only ever removes its own file)."""
    return path.open("xb"), path


def _kind_of(session: Session, role: str, head: bytes, display_name: str) -> str:
    """The kind of an upload: the data file a stored ``.nhdr`` header named (by its file name), else sniffed."""
    expected = session.state.get(NHDR_EXPECTS)
    if (role == "scan" and expected is not None and _display(display_name) == expected
            and [f.kind for f in session.scan_files] == ["nhdr"]):
        return "nhdr-data"
    return sniff(head, display_name)


def _display(name: str) -> str:
    """A harmless label for the user's file name (no folders, no control characters, bounded)."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = "".join(ch for ch in base if ch.isprintable())[:120]
    return base or "uploaded file"


def download_stem(display_name: str) -> str:
    """File-name stem for downloads, derived from the user's own file name."""
    stem = display_name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mgz", ".mgh", ".zip", ".dcm"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:80]
    return stem or "scan"


def _scan_source(session: Session, settings: WebSettings) -> tuple[Path, str]:
    files = session.scan_files
    if not files:
        raise InputImageError("No scan was uploaded. Choose a scan file (or a DICOM series) first.")
    kinds = {f.kind for f in files}
    if kinds == {"zip"}:
        folder = session.path("dicom")
        if not folder.exists():
            extract_zip(files[0].path, folder, max_bytes=settings.max_upload_bytes, max_files=settings.max_files)
        return folder, "dicom"
    if kinds == {"dicom"}:
        return session.path("dicom"), "dicom"
    if "nhdr" in kinds:
        if kinds != {"nhdr", "nhdr-data"}:
            raise InputImageError(
                f"The .nhdr header keeps its voxels in the file '{session.state.get(NHDR_EXPECTS, '?')}', which was "
                "not uploaded with it. Choose the header and its data file together (both at once)."
            )
        return next(f.path for f in files if f.kind == "nhdr"), "nhdr"
    return files[0].path, files[0].kind


def write_view_copy(volume: Volume, path: Path) -> None:
    """Write a NIfTI copy of ``volume`` (stored values plus scaling, own affine) for the page's viewer."""
    import nibabel as nib

    raw = volume.raw
    if raw.dtype == np.bool_ or raw.dtype.kind not in "iuf":
        raw = volume.values(np.float32)
    image = nib.Nifti1Image(np.asarray(raw), volume.affine)
    if raw is volume.raw and (volume.slope != 1.0 or volume.inter != 0.0):
        image.header.set_slope_inter(volume.slope, volume.inter)
    image.header.set_xyzt_units("mm")
    image.set_qform(volume.affine, code=1)
    image.set_sform(volume.affine, code=1)
    with atomic_file(path) as tmp:
        nib.save(image, str(tmp))


def _load_upload(source: Path, kind: str) -> Volume:
    """:func:`defacer.io.load_volume` of the uploaded scan, with the refusals worded for the page (the command
    line's words name options a web user cannot give).

    Raises
    ------
    DicomSeriesError, InputImageError
        Several series uploaded as one; a volume above the server's voxel limit.
    """
    from defacer.io import load_volume

    try:
        return load_volume(source, data_files=_data_files(kind))
    except SeveralSeriesError as err:
        raise DicomSeriesError(f"The uploaded files hold {err.count} image series; this page defaces one series at a "
                               "time. Start over and upload the files of one series (or a zip of one series "
                               "folder).") from err
    except TooManyVoxelsError as err:
        raise InputImageError(f"The scan declares {err.count:,} voxels, more than this server accepts ({err.limit:,}: "
                              f"defacing needs about {BYTES_PER_VOXEL} bytes of memory per voxel). Deface such a scan with the "
                              "command line: defacer deface IN OUT --max-voxels N.") from err


def load_scan(session: Session, settings: WebSettings) -> dict[str, Any]:
    """Read the uploaded scan (and label map), write the viewer copy, and describe the scan.

    Returns
    -------
    dict
        ``format``, ``shape``, ``spacing_mm``, ``axcodes``, ``files``, ``name``,
        ``labels_uploaded``.
    """

    with session.lock:
        if "volume" in session.state:
            info: dict[str, Any] = session.state["info"]
            return info
        if session.uploading:  # a file still streaming in would be missed, or read half-written
            raise SessionBusy("A file is still being uploaded into this work area; load once every upload has "
                              "finished (the page does).")
        source, kind = _scan_source(session, settings)
        if kind == "dicom":
            try:
                import defacer.io.dicom_series  # noqa: F401
            except ModuleNotFoundError as err:
                raise DicomSeriesError(
                    "DICOM series cannot be read by this installation of defacer (its DICOM module is missing). "
                    "Convert the series to NIfTI (e.g. with dcm2niix) and upload that."
                ) from err
        # Only the uploaded files themselves may be read: a NRRD naming any other data file is refused; a .nhdr
        # was rewritten at upload to name its own uploaded data file (web.uploads.prepare_nhdr_upload).
        volume = _load_upload(source, kind)
        label_detector = None
        if session.label_files:
            from defacer.detect.label_file import LabelFileDetector

            label_detector = LabelFileDetector(session.label_files[0].path, data_files="none")
            label_detector.name = "label map uploaded with the scan"  # no user file name: it goes into provenance
        view = session.path("view")
        view.mkdir(mode=0o700, exist_ok=True)
        write_view_copy(volume, view / "scan.nii.gz")
        first = session.scan_files[0]
        name = first.display_name if len(session.scan_files) == 1 or kind == "nhdr" else \
            f"{len(session.scan_files)} DICOM files"
        info = {
            "name": name,
            "format": volume.format,
            "upload_kind": kind,
            "shape": list(volume.shape),
            "spacing_mm": [round(s, 4) for s in volume.spacing],
            "axcodes": volume.axcodes,
            "files": len(session.scan_files),
            "labels_uploaded": label_detector is not None,
            "warnings": input_warnings(volume, session, source, name),
        }
        if len(session.scan_files) == 1 and (note := misnamed_note(first.display_name, kind)) is not None:
            info["warnings"].insert(0, note)
        session.state.update(volume=volume, kind=kind, info=info, label_detector=label_detector, source=source)
        log.info("work area %s…: scan loaded (%s, %d file(s))", session.id[:6], volume.format, len(session.scan_files))
        return info


def _data_files(kind: str) -> str:
    """Which detached data files reading the upload may open: only a rewritten ``.nhdr``'s own, beside it."""
    return "beside" if kind == "nhdr" else "none"


def input_warnings(volume: Volume, session: Session, source: Path, name: str) -> list[str]:
    """What the reader had to assume about the scan (e.g. an invalid voxel size; also in the provenance), for the
    page: the reader names the file or folder it read (a DICOM series' uneven spacing names its folder), which is a
    path in the server's work area; the page gets ``name``, the name the user knows, instead."""
    shown = []
    for warning in volume.extra.get("warnings", []):
        text = str(warning)
        for path in (str(source.resolve()), str(source)):
            text = text.replace(path, name)
        shown.append(session.hide_paths(text))
    return shown


class FixedLabels:
    """A detector that returns labels found earlier, so defacing reuses the shown overlay exactly.

    ``backend``, ``backend_version``: the library that ran the network that found them and its version (the ONNX
    detector's :attr:`~defacer.detect.model.OnnxDetector.backend`), recorded in the provenance as the command line
    records it; ``None`` for an uploaded label map.
    """

    def __init__(self, labels_ras: np.ndarray, name: str, weights_sha256: str | None, backend: str | None = None,
                 backend_version: str = "") -> None:
        self.labels_ras = labels_ras
        self.name = name
        self.weights_sha256 = weights_sha256
        self.backend = backend
        self.backend_version = backend_version

    def predict(self, image_ras: np.ndarray, ras_affine: np.ndarray) -> np.ndarray:
        if image_ras.shape != self.labels_ras.shape:
            raise DefacerError("internal error: stored labels do not fit the scan")
        return self.labels_ras


def _feature_summary(labels: np.ndarray, volume: Volume) -> dict[str, dict[str, Any]]:
    from scipy import ndimage

    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    summary = {}
    for name in FEATURES:
        mask = labels == FEATURE_LABELS[name]
        count = int(np.count_nonzero(mask))
        components = int(ndimage.label(mask)[1]) if count else 0
        summary[name] = {"voxels": count, "components": components, "volume_ml": round(count * voxel_ml, 2)}
    return summary


def detect(session: Session, default_detector: Callable[[], Detector]) -> dict[str, Any]:
    """Find the eyes, nose and ears (uploaded label map, else the default detector) and write the overlay.

    Returns
    -------
    dict
        ``detector``, ``features`` (voxels, components, volume_ml per feature), ``warnings``.
    """
    from defacer.io import save_label_map

    with session.lock:
        if "volume" not in session.state:
            raise InputImageError("Load the scan before detecting its features.")
        if "detection" in session.state:
            done: dict[str, Any] = session.state["detection"]
            return done
        volume: Volume = session.state["volume"]
        detector = session.state.get("label_detector")
        if detector is None:
            try:
                detector = default_detector()
            except DetectorError as err:
                raise DetectorError(
                    f"{err} On this page: start over and add a label map (0 background, 1 eyes, 2 nose, 3 ears, on "
                    "the scan's grid) with the scan."
                ) from err
        reorientation = canonical_reorientation(volume.affine, volume.shape)
        image = reorientation.values_to_ras(volume, np.float32)
        labels_ras = np.asarray(detector.predict(image, reorientation.ras_affine), dtype=np.uint8)
        labels = reorientation.from_ras(labels_ras)
        save_label_map(labels, volume, session.path("view", "labels.nii.gz"), force=True)
        features = _feature_summary(labels, volume)
        noise = getattr(detector, "last_noise", None)  # the scan read as noise: the detector did not look
        warnings = list(session.state["info"]["warnings"]) + ([noise] if isinstance(noise, str) else []) + [
            f"No {name} found: nothing will be distorted for them." for name, f in features.items() if f["voxels"] == 0]
        shown = (f"the uploaded label map {session.label_files[0].display_name}" if session.label_files
                 else detector.name)
        detection = {"detector": shown, "features": features, "warnings": warnings}
        session.state.update(labels_ras=labels_ras, labels=labels, detection=detection,
                             detector_id=(detector.name, detector.weights_sha256),
                             detector_backend=_backend_of(detector))
        return detection


def _backend_of(detector: Detector) -> tuple[str, str] | None:
    """The library that ran ``detector``'s network and its version (OpenVINO or onnxruntime:
    :mod:`defacer.detect.backend`), or ``None`` for a detector without a network (an uploaded label map)."""
    network = getattr(detector, "backend", None)
    return (network, str(getattr(detector, "backend_version", "") or "")) if isinstance(network, str) else None


def _inputs_sha256(session: Session, sha256_of: Callable[[Path], str]) -> str:
    """sha256 of the uploaded scan file, or of the upload-ordered list of file digests of a series."""
    if len(session.scan_files) == 1:
        return sha256_of(session.scan_files[0].path)
    import hashlib

    digest = hashlib.sha256()
    for stored in session.scan_files:
        digest.update(bytes.fromhex(sha256_of(stored.path)))
    return digest.hexdigest()


def _zip_files(files: list[Path], archive: Path) -> None:
    """Zip files by their base names (a ``.nhdr`` names its data file by base name, so the pair stays readable)."""
    with atomic_file(archive) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED,
                                                      compresslevel=1) as handle:
        for path in files:
            handle.write(path, arcname=path.name)


#: Said in the provenance of a DICOM series whose zip was named after its patient (no name quoted).
RENAMED_DOWNLOADS = ("the uploaded zip's name holds identifiers of its own DICOM headers (a name, an ID, the birth "
                     "date or an original UID), which the de-identified headers no longer hold: the downloads are "
                     "named 'dicom_series_...' instead")
#: Most files of an uploaded series whose identifying header attributes are read to judge the zip's name.
NAME_CHECK_FILES = 64


def _names_the_patient(source: Path, stem: str) -> bool:
    """Whether ``stem`` (from the uploaded zip's name) holds identifiers of the series' own headers
    (:mod:`defacer.phi.paths`: names, IDs, the birth date, original UIDs), read from up to
    :data:`NAME_CHECK_FILES` of its files."""
    from defacer.phi.paths import header_identifiers

    files = sorted(p for p in files_under(source) if not p.is_symlink())[:NAME_CHECK_FILES]
    return bool(header_identifiers(files).found_in(stem))


def _zip_folder(folder: Path, archive: Path) -> None:
    with atomic_file(archive) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED,
                                                      compresslevel=1) as handle:
        for path in sorted(files_under(folder)):
            handle.write(path, arcname=str(path.relative_to(folder)))


def deface_session(
    session: Session,
    features: tuple[str, ...],
    seed: int,
    progress: ProgressCallback,
    retry_stronger: bool = False,
) -> dict[str, Any]:
    """Deface the loaded scan with the detected labels, write the downloads and verify.

    Parameters
    ----------
    session : Session
        Loaded and detected.
    features : tuple of str
        Features to distort (subset of :data:`defacer.labels.FEATURES`).
    seed : int
        Seed of the random distortions (recorded in the provenance).
    progress : callable
        ``progress(stage_text, fraction)``.
    retry_stronger : bool
        While the verification finds a face after defacing with the brain region untouched
        (:func:`defacer.verify.verdict.face_still_found`) and :func:`defacer.options.stronger_options`
        gives a next step (the larger nose removal and eye cover, then the whole face as well), deface the
        original again with that step and verify that, as ``defacer deface --retry-stronger``: the
        downloads, views and provenance are then the last attempt's, and the provenance's
        ``verification.attempts`` records every attempt.

    Returns
    -------
    dict
        ``voxels_changed``, ``features``, ``warnings``, ``downloads`` (kind -> file name) and
        ``verification``; after a retry also ``attempts``
        (:func:`defacer.verify.verdict.attempt_record` of each, the first one first).
    """
    from defacer.options import DefaceOptions, stronger_options

    with session.lock:
        if "labels_ras" not in session.state:
            raise InputImageError("Detect the features before defacing.")
        options = DefaceOptions(features=features, seed=seed)
        provenance = _deface_and_write(session, options, progress)
        progress("Verifying the result", 0.7)
        verification = verify_session(session)
        stronger = stronger_options(options) if retry_stronger else None
        # verified (a summary: the verify extra is installed), a face found and a step left: one step stronger
        while stronger is not None and verification.get("summary"):
            retried = _retry_if_face_found(session, stronger, provenance, verification, progress)
            if retried is None:
                break
            provenance, verification = retried
            stronger = stronger_options(stronger)
        answer = {
            "voxels_changed": provenance.get("voxels_changed", {}),
            "features": list(features),
            "warnings": list(provenance.get("warnings", [])),
            "downloads": {k: v[1] for k, v in session.state["downloads"].items()},
            "verification": verification,
        }
        if "attempts" in verification:
            answer["attempts"] = verification["attempts"]
        return answer


def _retry_if_face_found(session: Session, stronger: DefaceOptions, provenance: dict[str, Any],
                         verification: dict[str, Any], progress: ProgressCallback
                         ) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """One step of the retry of :func:`deface_session`: when ``verification`` found a face after defacing (and
    the brain region is untouched), deface the original again with ``stronger`` and verify that; return the new
    provenance and verification, or ``None`` when no retry was due.  The attempt just verified is added to
    ``session.state["earlier_attempts"]``, so that the new verification lists every attempt.  The caller holds
    ``session.lock``."""
    from defacer.verify.verdict import attempt_record, face_still_found

    summary = verification["summary"]
    if not face_still_found(summary):
        return None
    earlier = [*session.state.get("earlier_attempts", []), attempt_record(provenance.get("options") or {}, summary)]
    step = "the whole face removal" if stronger.whole_face else "the larger nose and eye removal"
    number = len(earlier) + 1  # the attempt made now: 2 (larger sizes), 3 (the whole face as well)
    start = min(0.7 + 0.12 * (number - 2), 0.9)

    def later(stage: str, fraction: float) -> None:
        progress(f"A face was still found; attempt {number}, {step}: {stage[:1].lower()}{stage[1:]}",
                 start + 0.08 * fraction)

    provenance = _deface_and_write(session, stronger, later)  # forgets the earlier result, earlier_attempts too
    session.state["earlier_attempts"] = earlier
    progress(f"Verifying the result of {step} (attempt {number})", start + 0.08)
    verification = verify_session(session)
    # the provenance records every attempt, as the command line's sidecar does (verification.attempts)
    provenance["verification"] = {"verdict": verification.get("verdict"), "attempts": verification.get("attempts", [])}
    write_text_atomic(session.state["downloads"]["provenance"][0], json.dumps(provenance, indent=2, default=_jsonable))
    return provenance, verification


def _deface_and_write(session: Session, options: DefaceOptions, progress: ProgressCallback) -> dict[str, Any]:
    """Deface the original with ``options``, replacing any earlier result (files, views, state), and write the
    downloads and the provenance record; return that record.  The caller holds ``session.lock``."""
    from defacer.io import save_label_map
    from defacer.options import DEFAULT_DEIDENTIFICATION
    from defacer.provenance import sha256_of
    from defacer.route import deface_path

    volume: Volume = session.state["volume"]
    name, sha = session.state["detector_id"]
    features: tuple[str, ...] = tuple(options.features)
    progress("Distorting the selected features", 0.1)
    forget_result(session)
    out = session.path("out")
    out.mkdir(mode=0o700)
    kind = session.state["kind"]
    stem = download_stem(session.scan_files[0].display_name if kind != "dicom" or
                         session.scan_files[0].kind == "zip" else "dicom_series")
    renamed = kind == "dicom" and stem != "dicom_series" and _names_the_patient(session.state["source"], stem)
    if renamed:  # the headers leave de-identified: the downloads' names must not say whose they were
        stem = "dicom_series"
    downloads: dict[str, tuple[Path, str]] = {}
    target = out / ("defaced_dicom" if kind == "dicom" else "defaced" + FORMAT_SUFFIX[kind])
    # The one route: DICOM headers de-identified (Basic Profile, a fresh random key: pseudonyms are not
    # linkable across uploads). A feature not found is no reason to refuse here: the page says so.
    defaced = deface_path(session.state["source"], target, options=options,
                          deidentify=DEFAULT_DEIDENTIFICATION,
                          detector=FixedLabels(session.state["labels_ras"], name, sha,
                                               *(session.state.get("detector_backend") or (None,))),
                          sidecar=False,
                          allow_missing=True, data_files=_data_files(kind))
    result = defaced.result
    if not np.any(result.edit_mask):
        shutil.rmtree(out)  # an unchanged copy of the scan, face included, is never offered as "defaced"
        raise InputImageError(nothing_distorted_message(features, session.state["detection"]))
    progress("Writing the defaced scan", 0.55)
    if kind == "dicom":
        archive = out / "defaced_dicom.zip"
        _zip_folder(target, archive)
        downloads["scan"] = (archive, f"{stem}_defaced_dicom.zip")
        mask_suffix = ".nii.gz"
    elif kind == "nhdr":  # the header and its data file, together
        archive = out / "defaced_nhdr.zip"
        _zip_files(defaced.written, archive)
        downloads["scan"] = (archive, f"{stem}_defaced_nhdr.zip")
        mask_suffix = ".nrrd"
    else:
        suffix = FORMAT_SUFFIX[kind]
        downloads["scan"] = (target, f"{stem}_defaced{suffix}")
        mask_suffix = suffix
    mask = out / ("mask" + mask_suffix)
    save_label_map(result.edit_mask, volume, mask)
    downloads["mask"] = (mask, f"{stem}_defaced_mask{mask_suffix}")
    labels_file = out / ("labels" + mask_suffix)
    save_label_map(result.labels, volume, labels_file)
    downloads["labels"] = (labels_file, f"{stem}_labels{mask_suffix}")
    write_view_copy(result.volume, session.path("view", "defaced.nii.gz"))
    save_label_map(result.edit_mask, volume, session.path("view", "mask.nii.gz"), force=True)

    provenance = dict(result.provenance)
    # No file names here: the sidecar travels with the defaced scan, and names can identify people. A DICOM
    # series leaves de-identified: its input digest is keyed (route's 'sha256_keyed', under this run's random
    # key), since a plain digest would link the shared series back to whoever holds the identified original.
    keyed = defaced.provenance.get("input", {}).get("sha256_keyed") if kind == "dicom" else None
    digest = {"sha256_keyed": keyed} if keyed is not None else (
        {} if kind == "dicom" else {"sha256": _inputs_sha256(session, sha256_of)})
    provenance["input"] = {"files": len(session.scan_files), **digest}
    provenance["output"] = {"sha256": sha256_of(downloads["scan"][0])}
    provenance["interface"] = "defacer serve (web)"
    if renamed:
        provenance["warnings"] = [*provenance.get("warnings", []), RENAMED_DOWNLOADS]
    label_detector = session.state.get("label_detector")
    if label_detector is not None:
        provenance["detector"] = {**provenance.get("detector", {}), "labels_sha256": label_detector.sha256}
    provenance_file = out / "provenance.json"
    write_text_atomic(provenance_file, json.dumps(provenance, indent=2, default=_jsonable))
    downloads["provenance"] = (provenance_file, f"{stem}_defaced.defacer.json")
    downloads["report"] = (provenance_file, f"{stem}_defaced.defacer.json")
    session.state.update(defaced=result.volume, edit_mask=result.edit_mask, provenance=provenance,
                         downloads=downloads, stem=stem)
    return provenance


#: ``session.state`` keys of a defacing result (what :func:`deface_session` and :func:`verify_session` add;
#: ``earlier_attempts``: the attempts before the current one of a retry (:func:`deface_session`), first first).
RESULT_KEYS = ("defaced", "edit_mask", "provenance", "downloads", "stem", "verification", "earlier_attempts")


def forget_result(session: Session) -> None:
    """Drop the previous defacing result of a session, files and state, before defacing it again.

    Otherwise a new run that fails would leave the old downloads named in the state after their files were
    removed, the old views shown, and ``verify`` verifying the old result.
    """
    for key in RESULT_KEYS:
        session.state.pop(key, None)
    for folder in ("out", "verify"):
        if session.path(folder).exists():
            shutil.rmtree(session.path(folder))
    for name in ("defaced.nii.gz", "mask.nii.gz"):
        session.path("view", name).unlink(missing_ok=True)


def nothing_distorted_message(features: tuple[str, ...], detection: dict[str, Any]) -> str:
    """Why defacing changed no voxel, and what to do (the web page shows it instead of any download).

    Parameters
    ----------
    features : tuple of str
        The features the user chose.
    detection : dict
        :func:`detect`'s answer (``features`` -> ``voxels`` per feature).
    """
    found = [name for name, f in detection["features"].items() if f["voxels"]]
    chosen = ", ".join(features)
    why = (f"the distortion changed no voxel of the chosen features ({chosen})" if set(found) & set(features) else
           f"none of the chosen features ({chosen}) was found in this scan")
    advice = (f"Choose features that were found ({', '.join(found)})" if found else
              "Check that this is a head scan with its face, or upload a label map marking the eyes, nose and ears")
    return (f"Nothing was distorted: {why}, so the result would be an unchanged copy with the face. No file is "
            f"offered for download. {advice}, and deface again.")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return value.name
    return str(value)


#: The label of the page's retry box (static/index.html; the wordings below quote it).
RETRY_BOX_LABEL = ("If a face is still found after defacing, deface again with a larger nose and eye removal, then "
                   "the whole face")
#: The next step after a FAIL with a face found and the usual sizes, for this page: deface again with its
#: retry box ticked (:data:`defacer.verify.verdict.REMEDY_FACE`: the larger removal, then the whole face).
WEB_REMEDY_FACE = (f"What to do: do not share this scan. Deface it again with the box '{RETRY_BOX_LABEL}' ticked (it "
                   "removes more, up to the whole face in front of the eyes, while a face is found; on the command "
                   "line: defacer deface SCAN OUT --retry-stronger) and share it only when it passes.")
#: The next step after a FAIL with a face found although the larger nose removal and eye cover were used
#: (:data:`defacer.verify.verdict.REMEDY_WHOLE_FACE`), for this page: deface again with the box ticked, which now
#: goes on to remove the whole face.
WEB_REMEDY_WHOLE_FACE = ("What to do: do not share this scan. A face is found even with the larger nose removal and "
                         f"eye cover. Deface it again with the box '{RETRY_BOX_LABEL}' ticked: when a face is found "
                         "with the larger removal it goes on to remove the whole face in front of the eyes (on the "
                         "command line: defacer deface SCAN OUT --retry-stronger, or --whole-face), and share it "
                         "only when it passes.")
#: The next step after a FAIL with a face found although the whole face in front of the eyes was removed
#: (:data:`defacer.verify.verdict.REMEDY_NOT_SHAREABLE`), for this page: nothing stronger is left to try here.
WEB_REMEDY_NOT_SHAREABLE = ("What to do: do not share this scan as it is. A face is found even after the whole face "
                            "in front of the eyes was removed. Look at the pictures of the full verification report "
                            "(a detector can fire on the cut surface); if a face is recognisable there, remove more "
                            "with another tool (for example pydeface) and verify that before sharing it.")


def web_next_step(summary: dict[str, Any]) -> str | None:
    """What the page tells the user to do after a verdict (:func:`defacer.verify.verdict.remedy`, in the page's
    words where it names command-line options), or ``None``."""
    from defacer.verify.verdict import REMEDY_FACE, REMEDY_NOT_SHAREABLE, REMEDY_WHOLE_FACE, remedy

    step = remedy(summary)
    return {REMEDY_FACE: WEB_REMEDY_FACE, REMEDY_WHOLE_FACE: WEB_REMEDY_WHOLE_FACE,
            REMEDY_NOT_SHAREABLE: WEB_REMEDY_NOT_SHAREABLE}.get(step or "", step)


def verify_session(session: Session) -> dict[str, Any]:
    """Run the verification (renders and face checks) on the defaced scan, when installed.

    Returns
    -------
    dict
        ``available`` false with ``reason`` when the ``verify`` extra is missing; else
        ``passed`` (bool or None when verification itself failed), ``verdict`` (``PASS``,
        ``FAIL``, ``INCONCLUSIVE`` as in :mod:`defacer.verify.verdict`, or None), ``meaning``,
        ``next_step`` (:func:`web_next_step`), ``summary`` and ``error``; after a retry
        (:func:`deface_session`), also ``attempts``: the earlier attempts and this verification
        (:func:`defacer.verify.verdict.attempt_record`), the first one first.
    """
    with session.lock:
        if "defaced" not in session.state:
            raise InputImageError("Deface the scan before verifying it.")
        try:
            from defacer.verify import verify_pair
        except ImportError as err:
            reason = str(err) if "defacer[" in str(err) else (
                "The verification module is not installed in this copy of defacer "
                "(pip install 'defacer[verify]')."
            )
            outcome: dict[str, Any] = {"available": False, "reason": reason}
            session.state["verification"] = outcome
            return outcome
        folder = session.path("verify")
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(mode=0o700)
        try:
            result = verify_pair(session.state["volume"], session.state["defaced"], folder,
                                 labels=session.state.get("labels"), provenance=session.state.get("provenance"),
                                 title=f"defacer verify: {session.state['stem']}")
        except ImportError as err:
            outcome = {"available": False, "reason": str(err)}
        except DefacerError as err:
            outcome = {"available": True, "passed": None, "verdict": None, "error": session.hide_paths(str(err))}
        else:
            summary = json.loads(json.dumps(getattr(result, "summary", {}) or {}, default=_jsonable))
            from defacer.verify.verdict import MEANING

            verdict = summary.get("verdict") or ("PASS" if result.passed else "FAIL")
            outcome = {"available": True, "passed": bool(result.passed), "verdict": verdict,
                       "meaning": MEANING.get(verdict, ""), "next_step": web_next_step(summary), "summary": summary,
                       "error": None, "report": False}
            report = getattr(result, "report_path", None)
            stem = session.state["stem"]
            if report is not None and Path(report).is_file() and Path(report).suffix == ".html":
                session.state["downloads"]["report"] = (Path(report), f"{stem}_verification.html")
                outcome["report"] = True
        earlier = session.state.get("earlier_attempts")
        if earlier:  # this verifies a retry: the earlier attempts come first
            from defacer.verify.verdict import attempt_record

            outcome["attempts"] = [*earlier, attempt_record(session.state["provenance"].get("options") or {},
                                                            outcome.get("summary") or {})]
        session.state["verification"] = outcome
        return outcome
