"""One route from a scan on disk to a defaced scan on disk: :func:`deface_path`.

The command line (``defacer deface``, ``demo``), the batch workers and the web interface all
deface through :func:`deface_path`; :func:`deface_study` runs it on every series of a DICOM
study folder.  Like nibabel's ``loadsave``, the route dispatches on the input's format: NIfTI,
NRRD and MGH/MGZ files are written back in the same format with their header unchanged; a DICOM
series (a folder or ``.dcm`` file) is written as a new series folder whose headers are
de-identified (DICOM PS3.15 Annex E Basic Profile) unless the caller passes
``deidentify=None``.  The provenance record of every output is built here, and nowhere else.

Layers: this module sits above :mod:`defacer.pipeline` (in-memory defacing), :mod:`defacer.io`
(reading and writing) and :mod:`defacer.phi` (headers); nothing below imports it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from defacer._typing import PathLike
from defacer.ahead import DetectorLoading, input_sha256, take_detector
from defacer.checks import DEFAULT_MAX_VOXELS
from defacer.detect import Detector
from defacer.errors import DefacerError, InputImageError, OutputError
from defacer.files import IMAGE_SUFFIXES, image_suffix
from defacer.options import DEFAULT_DEIDENTIFICATION, DEFAULT_OPTIONS, DefaceOptions, Deidentification
from defacer.pipeline import DefaceResult, check_features_found, deface, load_detector
from defacer.provenance import sha256_of, sha256_of_files, sidecar_path, write_provenance

if TYPE_CHECKING:
    from defacer.io.dicom_grouping import SeriesInfo
    from defacer.phi.scrub import Scrubber

log = logging.getLogger(__name__)


@dataclass
class Defaced:
    """What :func:`deface_path` wrote.

    Attributes
    ----------
    provenance : dict
        The provenance record (also in the sidecar, when one was written).
    written : list of Path
        The files written for the scan (the image and a ``.nhdr``'s data file, or every DICOM file).
    result : DefaceResult
        The defaced volume, the detected labels and the edit mask, in memory.
    scrubber : Scrubber or None
        The header de-identifier used for a DICOM series (its ``mapping`` holds the original ->
        new identifiers when asked for); ``None`` for other formats or without de-identification.
    """

    provenance: dict[str, Any]
    written: list[Path]
    result: DefaceResult = field(repr=False)
    scrubber: Scrubber | None = field(default=None, repr=False)


def deface_path(
    source: PathLike,
    target: PathLike,
    *,
    options: DefaceOptions = DEFAULT_OPTIONS,
    deidentify: Deidentification | None = DEFAULT_DEIDENTIFICATION,
    detector: Detector | None = None,
    labels_path: PathLike | None = None,
    weights_path: PathLike | None = None,
    force: bool = False,
    mask_path: PathLike | None = None,
    sidecar: bool = True,
    allow_missing: bool = False,
    series: str | None = None,
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    data_files: str = "beside",
) -> Defaced:
    """Deface one scan into ``target`` (same format) and write its provenance sidecar.

    Parameters
    ----------
    source : path-like
        A NIfTI, NRRD or MGH/MGZ file, or a DICOM series (folder or ``.dcm`` file).
    target : path-like
        The output file (same kind of extension), or the new DICOM series folder; refused if it
        exists, unless ``force`` (a folder only when defacer wrote it).
    options : DefaceOptions
        What to distort.
    deidentify : Deidentification or None
        DICOM only: how headers are de-identified (by default the Basic Profile with a random
        key); ``None`` keeps every header attribute as it is (identifying: names, IDs, dates).
    detector : Detector, optional
        Reused across calls (batch workers, the web page); otherwise :func:`load_detector` of
        ``labels_path`` / ``weights_path``.
    labels_path, weights_path : path-like, optional
        A label map on the scan's grid, or other model weights.
    force : bool
        Replace existing outputs.
    mask_path : path-like, optional
        Also write the detected label map there.
    sidecar : bool
        Write the provenance sidecar ``<output stem>.defacer.json`` beside the output.
    allow_missing : bool
        Write the output even when a requested feature was not distorted (otherwise
        :class:`~defacer.errors.FeaturesNotFoundError` and nothing is written).
    series : str, optional
        DICOM only: which series when the folder holds several (see :func:`deface_study`).
    max_voxels : int or None
        Refuse a scan declaring more voxels than this, before reading its voxels; ``None``: no limit.
    data_files : {"beside", "none", "anywhere"}
        Which detached NRRD data files may be read (see :func:`defacer.io.load_volume`).

    Returns
    -------
    Defaced

    Raises
    ------
    FeaturesNotFoundError
        A requested feature was not distorted and ``allow_missing`` is off: nothing is written.
    """
    from defacer.io import format_of

    source_path, target_path = Path(source), Path(target)
    if source_path.exists() and format_of(source_path) == "dicom":
        scrubber = deidentify.scrubber(defaced=True) if deidentify is not None else None
        key_note = deidentify.key_note if deidentify is not None else None
        return _deface_dicom(source_path, target_path, options=options, scrubber=scrubber, key_note=key_note,
                             detector=detector, labels_path=labels_path, weights_path=weights_path, force=force,
                             mask_path=mask_path, sidecar=sidecar, allow_missing=allow_missing, series=series,
                             max_voxels=max_voxels)
    return _deface_file(source_path, target_path, options=options, detector=detector, labels_path=labels_path,
                        weights_path=weights_path, force=force, mask_path=mask_path, sidecar=sidecar,
                        allow_missing=allow_missing, max_voxels=max_voxels, data_files=data_files,
                        deidentify=deidentify)


def image_series(source: PathLike) -> list[SeriesInfo]:
    """The image stacks of a DICOM folder (series with pixel data, each geometry apart), in listing order."""
    from defacer.io.dicom_grouping import find_series

    return [found for found in find_series(source) if found.has_pixels]


def series_folder_name(index: int, info: SeriesInfo) -> str:
    """The output folder of one series of a study: ``NN_series-<SeriesNumber>`` (never its description or UIDs,
    which may identify the patient)."""
    number = "".join(ch for ch in info.series_number if ch.isalnum())[:12]
    return f"{index:02d}_series-{number or 'unnumbered'}"


def deface_study(
    source: PathLike,
    target: PathLike,
    *,
    stacks: Sequence[SeriesInfo] | None = None,
    deidentify: Deidentification | None = DEFAULT_DEIDENTIFICATION,
    **kwargs: Any,
) -> list[tuple[Path, Defaced | DefacerError]]:
    """Deface every image series of a DICOM study folder, each into its own folder under ``target``.

    Series ``i`` goes to ``target/<series_folder_name(i, ...)>`` with its sidecar beside it.  One
    scrubber (one key) serves every series, so the pseudonyms (StudyInstanceUID, PatientID, date
    shifts) agree across the series of the study.  A series that cannot be defaced (its error is
    returned in its place) does not stop the others.  Other keyword arguments are those of
    :func:`deface_path` (``mask_path`` is not accepted: one label map per series would collide).

    Returns
    -------
    list of (Path, Defaced or DefacerError)
        The output folder of each series and what came of it, in listing order.
    """
    if kwargs.get("mask_path") is not None:
        raise ValueError("deface_study writes no label map (one per series would collide); deface one series instead.")
    kwargs.pop("data_files", None)
    source_path, target_path = Path(source), Path(target)
    found = list(stacks) if stacks is not None else image_series(source_path)
    scrubber = deidentify.scrubber(defaced=True) if deidentify is not None else None
    key_note = deidentify.key_note if deidentify is not None else None
    done: list[tuple[Path, Defaced | DefacerError]] = []
    for index, info in enumerate(found, start=1):
        out = target_path / series_folder_name(index, info)
        try:
            outcome: Defaced | DefacerError = _deface_dicom(
                source_path, out, scrubber=scrubber, key_note=key_note, series=info.key,
                **{"options": DEFAULT_OPTIONS, **kwargs})
        except DefacerError as err:
            outcome = err
        done.append((out, outcome))
    return done


def _detector(detector: Detector | None, labels_path: PathLike | None, weights_path: PathLike | None) -> Detector:
    return detector if detector is not None else load_detector(labels_path, weights_path)


class _DetectorLoading(DetectorLoading):
    """The ONNX detector made in a thread of its own while the scan is read: :meth:`result` waits for it.

    Making it (onnxruntime's import, the weights' sha256, the session built from the graph: 0.05-0.1 s on the
    project's 2-core VM) and reading a ``.nii.gz`` (ISA-L decompression) both run mostly outside Python's global
    lock, so on two cores each hides the other.  Only the ONNX detector is made so: a label map given instead is
    read by nibabel, whose warnings the scan's reading collects (``warnings`` filters are process-wide), so it is
    read after the scan as before.  Errors keep their order: :meth:`result` is asked for only once the scan has
    been read, and re-raises the detector's own error (bad weights) there; where the scan's reading fails,
    :meth:`wait` lets the detector finish before that error goes on, so no work of this run outlives it.
    ``defacer deface`` begins it earlier still, while it imports the pipeline (:func:`defacer.ahead.start_detector`).
    """

    def __init__(self, weights_path: PathLike | None) -> None:
        with contextlib.suppress(ImportError):  # defacer's own modules imported here, onnxruntime in the thread;
            import defacer.detect.model  # noqa: F401  # without it, load_detector says so there
        super().__init__(lambda: load_detector(None, weights_path))


def _deface_file(source: Path, target: Path, *, options: DefaceOptions, detector: Detector | None,
                 labels_path: PathLike | None, weights_path: PathLike | None, force: bool,
                 mask_path: PathLike | None, sidecar: bool, allow_missing: bool, max_voxels: int | None,
                 data_files: str, deidentify: Deidentification | None = None) -> Defaced:
    """:func:`deface_path` for a NIfTI, NRRD or MGH/MGZ file: written back with its header unchanged, but, with
    ``deidentify``, the identifying text of its free-text fields (:func:`_deidentified_header`)."""
    from defacer.io import format_of, load_volume, save_label_map, save_volume
    from defacer.io.output_guard import (
        check_not_input,
        check_outputs,
        check_record_not_shared,
        detached_data_candidates,
    )

    start = time.perf_counter()
    try:
        target_format = format_of(target)
    except InputImageError as err:  # the output's name, not a file to convert
        if target.name != target.name.strip() and target.name.strip().lower().endswith(IMAGE_SUFFIXES):
            raise OutputError(f"The output name '{target.name}' starts or ends with a space (a copy-paste?), so it has "
                              f"no image ending. Give '{target.name.strip()}'.") from err
        raise OutputError(f"The output '{target}' has no image ending: defacer writes the input's format, so give "
                          f"it the input's ending (e.g. '{target.with_name(target.stem + image_suffix(source.name))}').") from err
    if target_format != format_of(source):
        raise InputImageError(
            f"The output '{target.name}' has another format than the input '{source.name}'. defacer writes the "
            "input's format: use the same kind of extension."
        )
    inputs = [source, labels_path, weights_path]
    if sidecar:
        check_record_not_shared(target)
    check_outputs([target, *_mask_files(mask_path), sidecar_path(target) if sidecar else None], inputs=inputs,
                  force=force)
    check_not_input(detached_data_candidates(target) + detached_data_candidates(mask_path), inputs)
    t = time.perf_counter()
    loading = ((take_detector(weights_path) or _DetectorLoading(weights_path))
               if detector is None and labels_path is None else None)
    try:
        volume = load_volume(source, max_voxels=max_voxels, data_files=data_files)
    except BaseException:
        if loading is not None:
            loading.wait()
        raise
    load_s = time.perf_counter() - t
    result = deface(volume, loading.result() if loading is not None else _detector(detector, labels_path, weights_path),
                    options)
    check_features_found(result.provenance, source.name, allow_missing=allow_missing)
    if deidentify is not None:
        result = _deidentified_header(result, source.name, deidentify)
    t = time.perf_counter()
    new_files = _not_there([target, *detached_data_candidates(target), *_mask_files(mask_path)])
    stale = _stale_record(target, sidecar)
    digests: dict[Path, str] = {}  # the output's sha256, taken from its bytes as they were written (a .nii.gz)
    written = save_volume(result.volume, target, force=force, inputs=tuple(p for p in inputs if p is not None),
                          digests=digests)
    with _removed_on_failure(new_files, target=target, stale_record=stale):  # a full disk at the mask or the sidecar: no output without its record
        if mask_path is not None:
            save_label_map(result.labels, volume, mask_path, force=force)
        save_s = time.perf_counter() - t
        provenance = result.provenance
        # Base names only: the folders of a user's files can name the patient or the study.
        # the digest of the bytes read ahead by the command line (defacer.ahead), if so read and unchanged since
        provenance["input"] = {"path": source.name, "sha256": input_sha256(source) or sha256_of(source)}
        provenance["output"] = {"path": target.name, "sha256": digests.get(target) or sha256_of(target),
                                "files": [p.name for p in written]}
        _record_common(provenance, mask_path, labels_path)
        provenance["timings"].update({"load_s": round(load_s, 4), "save_s": round(save_s, 4),
                                      "wall_s": round(time.perf_counter() - start, 4)})
        if sidecar:
            write_provenance(provenance, sidecar_path(target), force=force)
        _drop_stale_record(stale, sidecar)
    return Defaced(provenance, written, result)


def _deidentified_header(result: DefaceResult, name: str, deidentify: Deidentification) -> DefaceResult:
    """``result`` with the identifying text of its header's free-text fields removed (NIfTI ``descrip``,
    ``aux_file``, ``intent_name``, ``db_name``; NRRD key/value pairs and ``content``:
    :mod:`defacer.phi.image_headers`), said on the console and in the provenance's warnings by field name only."""
    import dataclasses

    from defacer.phi.image_headers import deidentify_nifti_header, deidentify_nrrd_header

    volume = result.volume
    if volume.header is None or volume.format not in ("nifti", "nrrd"):
        return result
    if volume.format == "nifti":
        header = volume.header.copy()
        changed = deidentify_nifti_header(header)
        what = "NIfTI header field(s)"
    else:
        header, changed = deidentify_nrrd_header(volume.header, deidentify.profile)
        what = "NRRD header field(s) and key/value pair(s)"
    if not changed:
        return result
    shown_names = ", ".join(repr(key[:40]) for key in changed[:12]) + (f" and {len(changed) - 12} more"
                                                                          if len(changed) > 12 else "")
    warning = (f"{len(changed)} {what} held identifying text (DICOM attributes such as the patient's name or "
               f"birth date, dates, names, e-mail addresses), removed or masked in the output: {shown_names}; "
               "the rest of the header is kept byte for byte (--no-deidentify keeps it all)")
    log.warning("'%s': %s", name, warning)
    result.provenance["warnings"] = [*result.provenance.get("warnings", []), warning]
    return dataclasses.replace(result, volume=dataclasses.replace(volume, header=header))


def _not_there(paths: Sequence[Path]) -> list[Path]:
    """Those of ``paths`` that do not exist (not even as a dangling link): what this run will be first to write."""
    return [path for path in paths if not os.path.lexists(path)]


def _stale_record(target: Path, sidecar: bool) -> Path | None:
    """The sidecar of an earlier output at ``target`` (about to be replaced under ``--force``), or ``None``.

    With ``sidecar`` off, only a record that describes that output (a JSON object whose ``output.path`` is its
    name, or ``<output>``): a user's own file so named is not defacer's to remove."""
    record = sidecar_path(target)
    if not (os.path.lexists(target) and record.is_file() and not record.is_symlink()):
        return None
    if sidecar:
        return record
    from defacer.io.output_guard import folded_name, recorded_output_name

    described = recorded_output_name(record)  # 'o.nii.gz' replaced as 'O.NII.GZ' on a case-insensitive disk: its own
    return record if described is not None and folded_name(described) in (folded_name(target.name), "<output>") \
        else None


def _drop_stale_record(stale: Path | None, sidecar: bool) -> None:
    """Without a sidecar of its own, an output written under ``--force`` over an earlier one removes that one's
    record: left, it described the replaced image (its checksum, options, features) beside the new one."""
    if stale is not None and not sidecar:
        stale.unlink(missing_ok=True)  # an error here: _removed_on_failure tries again and says what is left


@contextlib.contextmanager
def _removed_on_failure(new_paths: Sequence[Path], *, target: Path | None = None,
                        stale_record: Path | None = None) -> Iterator[None]:
    """Remove ``new_paths`` (files, or a DICOM series folder with its ownership record, this run made: none existed
    before it) when the block fails, a full disk or Ctrl+C at the label map or the sidecar: a defaced output left
    without its provenance record, after an error that says nothing was written, is removed.  What existed before
    (replaced under ``--force``) is not touched: it cannot be restored.

    ``stale_record``: the sidecar of the earlier output ``target`` replaced under ``--force``.  Left, it would
    describe an image that is gone (its checksum, options, features) beside the new one: it is removed, and the
    error says so (a note the system-error message shows)."""
    from defacer.io.output_guard import remove_owned_folder

    try:
        yield
    except BaseException as err:
        if stale_record is not None and target is not None and target not in new_paths:
            try:
                stale_record.unlink()
            except OSError as gone:
                err.add_note(f"'{target.name}' was replaced (--force), but its earlier provenance record "
                             f"'{stale_record.name}' could not be removed ({gone.strerror}) and no longer describes "
                             "it: delete that record, then rerun with --force.")
            else:
                err.add_note(f"'{target.name}' was already replaced (--force) and is left without a provenance "
                             f"record: its earlier record '{stale_record.name}' described the replaced image and was "
                             "removed. Rerun with --force to write both.")
        for path in new_paths:
            with contextlib.suppress(OSError):  # OutputError too: a file that appeared meanwhile stops it
                if path.is_dir() and not path.is_symlink():
                    remove_owned_folder(path)  # file by file, its record too; never a recursive delete
                elif path.is_file() and not path.is_symlink():
                    path.unlink()
        raise


def _deface_dicom(source: Path, target: Path, *, options: DefaceOptions, scrubber: Scrubber | None,
                  key_note: str | None, detector: Detector | None = None, labels_path: PathLike | None = None,
                  weights_path: PathLike | None = None, force: bool = False, mask_path: PathLike | None = None,
                  sidecar: bool = True, allow_missing: bool = False, series: str | None = None,
                  max_voxels: int | None = DEFAULT_MAX_VOXELS) -> Defaced:
    """:func:`deface_path` for a DICOM series: a new series folder, headers de-identified by ``scrubber``
    (``None``: kept as they are)."""
    from defacer.checks import validate_volume
    from defacer.io.dicom_series import read_dicom_volume, write_dicom_volume
    from defacer.io.output_guard import check_dicom_output_name, check_outputs, check_record_not_shared

    check_dicom_output_name(target)
    sidecar_file = sidecar_path(target) if sidecar else None
    if sidecar:
        check_record_not_shared(target)
    check_outputs([target, sidecar_file, *_mask_files(mask_path)], inputs=[source, labels_path, weights_path],
                  force=force)
    volume = validate_volume(read_dicom_volume(source, series=series, max_voxels=max_voxels), source=str(source))
    named = False  # whether the output's name holds identifiers of the series' own headers
    if scrubber is not None:
        scrubber.check_burned_in(volume.header, str(source))
        from defacer.phi.paths import warn_identifying_name

        named = warn_identifying_name(target.name, volume.header, retain_uids=scrubber.options.retain_uids)
    result = deface(volume, _detector(detector, labels_path, weights_path), options)
    check_features_found(result.provenance, source.name, allow_missing=allow_missing)
    new_files = _not_there([target, *_mask_files(mask_path)])
    stale = _stale_record(target, sidecar)
    written = write_dicom_volume(result.volume, target, force=force, deid=scrubber)
    with _removed_on_failure(new_files, target=target, stale_record=stale):
        done = _finish_dicom(source, target, result, volume, written, scrubber=scrubber, key_note=key_note,
                             named=named, mask_path=mask_path, labels_path=labels_path, sidecar_file=sidecar_file,
                             force=force)
        _drop_stale_record(stale, sidecar)
    return done


def _finish_dicom(source: Path, target: Path, result: Any, volume: Any, written: list[Path], *,
                  scrubber: Scrubber | None, key_note: str | None, named: bool, mask_path: PathLike | None,
                  labels_path: PathLike | None, sidecar_file: Path | None, force: bool) -> Defaced:
    """The rest of :func:`_deface_dicom` once the series is written: the label map, the provenance sidecar."""
    from defacer.io import save_label_map
    from defacer.phi.rules import EDITION

    if mask_path is not None:
        save_label_map(result.labels, volume, mask_path, force=force)
    provenance = result.provenance
    # With de-identification the sidecar must not name the input: folder names often hold patient names.
    shown = "<input>" if scrubber is not None else source.name
    # Over the series' own files: another series of the folder is not read for it (a study's other files can be
    # large or someone else's).  De-identified: keyed, so that holding the identified original links nothing.
    own = {ref.path for ref in volume.extra["frames"]}
    digest = sha256_of_files(source, own) if source.is_dir() else sha256_of(source)
    hashed = {"sha256": digest} if scrubber is None else {"sha256_keyed": scrubber.pseudonymizer.keyed_digest(digest)}
    provenance["input"] = {"path": shown, **hashed, "format": "dicom",
                           "files": len(own),
                           "skipped_files": len(volume.extra.get("skipped", ()))}
    # An output name holding the patient's identifiers (warned above) is no more recorded than the input's.
    shown_out = "<output>" if named else target.name
    provenance["output"] = {"path": shown_out, "sha256": sha256_of(target), "files": len(written)}
    def unnamed(warning: str) -> str:  # the reader names the folder as given: absolute, or the patient's name
        return warning.replace(str(source.resolve()), shown).replace(str(source), shown)

    # the reader's warnings reach the record twice: here and in the pipeline's "warnings" (it held the input's path)
    if provenance.get("warnings"):
        provenance["warnings"] = [unnamed(str(w)) for w in provenance["warnings"]]
    provenance["dicom"] = {
        "geometry_warnings": [unnamed(str(w)) for w in volume.extra.get("warnings", ())],
        "gantry_tilt_deg": round(float(volume.extra.get("gantry_tilt_deg", 0.0)), 3),
        "per_slice_scaling": volume.extra.get("per_slice_scaling") is not None,
        "deidentified": scrubber is not None,
    }
    if scrubber is not None:
        provenance["dicom"].update({
            "profile": f"DICOM PS3.15 {EDITION} Annex E Basic Application Level Confidentiality Profile",
            "options": list(scrubber.options.chosen),
            "method_codes": [code for code, _ in scrubber.options.method_codes()],
            "key": key_note or "user-supplied (not recorded)",
        })
    else:
        provenance["dicom"]["series"] = volume.extra.get("series_key")
    _record_common(provenance, mask_path, labels_path)
    if sidecar_file is not None:
        write_provenance(provenance, sidecar_file, force=force)
    return Defaced(provenance, written, result, scrubber)


def _mask_files(mask_path: PathLike | None) -> list[Path]:
    """The files ``--save-mask`` writes (a ``.nhdr`` also writes its data file): checked with the other outputs.

    Raises
    ------
    OutputError
        The name has no image ending (it was refused only after the scan had been written).
    """
    from defacer.io import format_of, label_map_files

    if mask_path is None:
        return []
    if not Path(mask_path).is_dir():  # an existing folder is refused with the other outputs
        try:
            format_of(mask_path)
        except InputImageError as err:
            raise OutputError(f"The label map '{mask_path}' has no image ending: give it one of .nii.gz, .nii, "
                              ".nrrd, .nhdr, .mgz, .mgh (e.g. 'mask.nii.gz').") from err
    return label_map_files(mask_path)


def _record_common(provenance: dict[str, Any], mask_path: PathLike | None, labels_path: PathLike | None) -> None:
    """The parts of the record every format shares: the label map written, the label map used."""
    if mask_path is not None:
        provenance["mask"] = {"path": Path(mask_path).name}
    if labels_path is not None:
        provenance["detector"]["labels_sha256"] = sha256_of(labels_path)
