"""``defacer deface IN [OUT]``: deface one scan (NIfTI, NRRD, MGZ, or a DICOM series folder), or every series of
a DICOM study folder, through :func:`defacer.route.deface_path`."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from defacer.cli.options import (
    add_deface_arguments,
    add_deid_arguments,
    add_force_argument,
    add_scan_arguments,
    add_verify_arguments,
    deface_options_from_args,
    deidentification_from_args,
    max_voxels_from_args,
    print_what_if,
)
from defacer.cli.paths import path_argument
from defacer.errors import DefacerError, InputImageError, shown
from defacer.files import image_suffix, named_path, text_name
from defacer.options import describe_step, stronger_options

if TYPE_CHECKING:
    from defacer.io.dicom_grouping import SeriesInfo
    from defacer.options import DefaceOptions, Deidentification
    from defacer.route import Defaced

log = logging.getLogger(__name__)

#: Exit status of ``deface --verify`` when the verification fails (the same as ``defacer verify``).
EXIT_VERIFY_FAILED = 3
#: Exit status of ``deface --verify`` when the verification is inconclusive: no face was found in the
#: original's renders, so nothing could be tested (the same as ``defacer verify``).
EXIT_VERIFY_INCONCLUSIVE = 5
#: Exit status when a requested feature was not distorted (the same as :data:`defacer.cli.main.EXIT_FEATURES_MISSING`).
EXIT_FEATURES_MISSING = 4


def qc_dir_for(output: Path) -> Path:
    """:func:`defacer.provenance.qc_dir_for` (imported on use: it imports numpy, which parsing the arguments does not)."""
    from defacer.provenance import qc_dir_for as qc_dir

    return qc_dir(output)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``deface``: what to distort (:func:`~defacer.cli.options.add_deface_arguments`), the label map,
    the weights and limits (:func:`~defacer.cli.options.add_scan_arguments`) and ``--force``."""
    add_deface_arguments(parser)
    parser.add_argument("--labels", metavar="FILE", type=path_argument,
                        help="use this label map (0 background, 1 eyes, 2 nose, 3 ears; on the scan's own grid) "
                             "instead of the detector")
    add_scan_arguments(parser)
    add_force_argument(parser)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``deface`` on the main parser's subparsers."""
    parser = subparsers.add_parser(
        "deface",
        help="deface one scan (NIfTI, NRRD, MGZ or a DICOM series folder)",
        description=(
            "Find the eyes, nose and ears and distort exactly those: one skin cover over both eyes, the nose's doubled "
            "bounding box set to air, each auricle replaced by the scan's own air noise. The output keeps the input's "
            "format, grid, data type and header; every other voxel is bit-identical. A provenance sidecar "
            "OUT-stem.defacer.json is written beside the output. A DICOM folder holding several series is defaced "
            "series by series, each into its own folder under OUT (or choose one: see DICOM input)."
        ),
        usage="%(prog)s [options] input [output]",
        epilog="Examples:\n  defacer deface sub-01_T1w.nii.gz          (writes sub-01_T1w_defaced.nii.gz beside it)\n"
               "  defacer deface sub-01_T1w.nii.gz sub-01_T1w_defaced.nii.gz\n"
               "  defacer deface head.nrrd head_defaced.nrrd --features eyes,nose --save-mask mask.nrrd\n"
               "  defacer deface dicom_in/ dicom_out/\n"
               "  defacer deface study/ study_defaced/      (every series: study_defaced/01_series-3/, ...)\n\n"
               "Exit status:\n  0  defaced (and verified, with --verify)\n"
               "  1  error (bad input, output refused, ...); nothing written\n  2  usage error\n"
               "  3  --verify: the verification failed (the output is written; with --retry-stronger, the\n"
               "     retry's verification)\n"
               "  4  a requested feature (eyes, nose, ears) was not found or not distorted; nothing written\n"
               "     (--allow-missing writes it anyway and exits 0)\n"
               "  5  --verify: inconclusive, no face found in the original to test (the output is written)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", type=path_argument, help="scan to deface: .nii, .nii.gz, .nrrd, .nhdr, .mgz, .mgh, or a DICOM folder")
    parser.add_argument("output", type=path_argument, nargs="?", default=None,
                        help="defaced output, same format as the input (a folder for DICOM); default: "
                             "<stem>_defaced<ext> beside the input (a DICOM folder: <folder>_defaced/)")
    add_common_arguments(parser)
    parser.add_argument("--save-mask", metavar="FILE", type=path_argument, help="also write the detected label map here")
    add_verify_arguments(parser)
    group = parser.add_argument_group("DICOM input")
    group.add_argument("--series", metavar="ID",
                       help="deface only this series of a folder holding several: the number in brackets from the "
                            "listing, the SeriesNumber or the SeriesInstanceUID (default: every series, each into its "
                            "own folder under OUT)")
    add_deid_arguments(group, optional=True)
    parser.set_defaults(func=run, start_early=start_ahead)


def start_ahead(args: argparse.Namespace) -> None:
    """What the command begins before its heavy imports: the scan's reading (:func:`start_reading_ahead`), then,
    with OpenVINO, the network's compilation (:func:`start_network_ahead`)."""
    start_reading_ahead(args)
    start_network_ahead(args)


def start_reading_ahead(args: argparse.Namespace) -> None:
    """Begin reading and decompressing a ``.nii.gz`` scan in a thread while the command imports its libraries
    (:func:`defacer.ahead.start_reading`; the reading takes the bytes, or reads the file as before)."""
    if args.what_if or args.input is None:
        return
    from defacer.ahead import start_reading

    start_reading(args.input, max_voxels_from_args(args))


def _detector_made(args: argparse.Namespace) -> bool:
    """Whether this run makes the ONNX detector for a NIfTI, NRRD or MGH/MGZ file (no ``--labels``, no
    ``--what-if``, not a DICOM series): the only runs whose detector or network is begun ahead."""
    return not args.what_if and args.labels is None and image_suffix(args.input.name) != "" and args.input.is_file()


def start_network_ahead(args: argparse.Namespace) -> None:
    """With OpenVINO (:mod:`defacer.detect.backend`), import numpy and OpenVINO and begin compiling the network
    in a thread (:func:`defacer.detect.openvino_run.start_compiling`) while the command imports nibabel, SciPy and
    the pipeline: begun with the detector (:func:`start_detector_ahead`), after those imports, the compilation
    (0.2-0.3 s) was waited for.  With onnxruntime, or where OpenVINO cannot be imported, nothing is begun here
    (the detector says what is wrong where it is made)."""
    if not _detector_made(args):
        return
    from defacer.detect import backend

    try:
        if backend.chosen() != backend.OPENVINO:
            return
        runtime = backend.import_runtime(backend.OPENVINO)
    except (ImportError, DefacerError):  # said where the route makes the detector
        return
    from defacer.detect.openvino_run import start_compiling
    from defacer.detect.weights import default_weights_path

    start_compiling(runtime, Path(args.weights) if args.weights is not None else default_weights_path())


def start_detector_ahead(args: argparse.Namespace) -> None:
    """Begin making the ONNX detector in a thread while the pipeline's modules are imported
    (:func:`defacer.ahead.start_detector`; :func:`defacer.route.deface_path` takes it where it would begin it), for
    a NIfTI, NRRD or MGH/MGZ file defaced without ``--labels``.  Its modules and its network's library (onnxruntime,
    or OpenVINO: :mod:`defacer.detect.backend`) are imported here first, so the thread imports nothing."""
    if not _detector_made(args):
        return
    try:
        from defacer.detect import backend, model

        backend.import_runtime(backend.chosen())  # onnxruntime, or OpenVINO where installed (defacer.detect.backend)
    except (ImportError, DefacerError):  # said where the route makes the detector
        return
    from defacer.ahead import start_detector

    weights = args.weights
    start_detector(weights, lambda: model.OnnxDetector(weights))  # = pipeline.load_detector(None, weights)


def options_from_args(args: argparse.Namespace) -> DefaceOptions:
    """Build :class:`~defacer.options.DefaceOptions` from parsed arguments."""
    return deface_options_from_args(args)


def default_output(input_path: Path) -> Path:
    """``<stem>_defaced<ext>`` beside the input; for a folder (DICOM series) ``<folder>_defaced``."""
    path = Path(input_path)
    if path.is_dir():
        path = named_path(path)  # '.', '..', 'dcm/..': name the folder itself
        if not path.name:
            raise InputImageError(f"'{input_path}' has no folder name to derive an output from; name the output "
                                  "folder: defacer deface IN OUT.")
        return path.with_name(path.name + "_defaced")
    name = path.name
    suffix = image_suffix(name, dicom=True)
    if suffix:
        return path.with_name(name[: -len(suffix)] + "_defaced" + name[-len(suffix):])
    return path.with_name(name + "_defaced")


def run(args: argparse.Namespace) -> int:
    """Deface ``args.input`` into ``args.output``; the exit status (see the epilog).

    With ``--verify`` the QC folder is claimed before defacing.  When the run then ends in an error (exit 1
    or 4, no report), a QC folder this run created and holding only what it wrote there (README, ownership
    record, the label map kept for the report) is removed again, as ``defacer verify`` does
    (:func:`defacer.verify.qc.remove_unused`), and so are the folders above it the run made, while they are empty
    (an output in a new folder); a folder that existed is never touched.
    """
    new_qc_dir: list[Path] = []
    try:
        with contextlib.ExitStack() as held:  # the QC folder's lock, released after the clean-up below
            try:
                return _run(args, new_qc_dir, held)
            except BaseException:
                if new_qc_dir:
                    from defacer.verify.qc import remove_unused

                    remove_unused(new_qc_dir[0], *([DETECTED_LABELS_NAME] if args.save_mask is None else []),
                                  made_above=new_qc_dir[1:])
                raise
    finally:
        from defacer.ahead import forget

        forget()  # a scan read ahead, a detector made, never taken (refused before): no thread outlives the run


def _run(args: argparse.Namespace, new_qc_dir: list[Path], held: contextlib.ExitStack) -> int:
    """:func:`run`; the QC folder ``--verify`` creates is appended to ``new_qc_dir`` (none that existed), and its
    lock (:func:`defacer.verify.qc.held`) entered on ``held``."""
    start_detector_ahead(args)
    from defacer.io import format_of
    from defacer.route import image_series

    if args.output is None:
        args.output = default_output(args.input)
    args.verify = args.verify or args.retry_stronger  # a retry is decided by the verification
    options = deface_options_from_args(args)
    is_dicom = args.input.exists() and format_of(args.input) == "dicom"
    args.output = checked_output_name(args.input, args.output, is_dicom)
    # a NIfTI or NRRD header's free text (a converter's patient name, an acquisition date) is de-identified too; its
    # key is unused (no pseudonyms there), so no word about a random one
    deidentify = deidentification_from_args(args, warn_random=is_dicom and not args.what_if)
    if args.what_if:
        if not is_dicom:
            print("--what-if describes what is done to DICOM headers; this input is not DICOM (its header is kept "
                  "as it is, but for dates, DICOM-form names, e-mail addresses and DICOM attributes in its free-text "
                  "fields, which are masked or removed unless --no-deidentify; only the pixels of the face features "
                  "change).")
        elif deidentify is None:
            print("--no-deidentify: every header attribute is kept; only the pixels of the face features change.")
        else:
            print_what_if(deidentify.effective_profile(defaced=True))
        return 0
    if is_dicom and args.input.is_dir() and args.series is None:
        stacks = image_series(args.input)
        if len(stacks) > 1:
            return run_study(args, options, deidentify, stacks)
    check_planned_outputs(args)
    if args.verify:
        from defacer.verify.qc import check_owned, claim, missing_folders_above
        from defacer.verify.qc import held as held_qc

        # Named in the QC folder's ownership record before the label map or any report is written there, and locked
        # for the whole run: a second run verifying the same output meanwhile is refused before it writes anything.
        qc_dir = qc_dir_for(args.output)
        targets = qc_targets(qc_dir, labels=args.save_mask is None)
        check_owned(qc_dir, targets)  # a link or a user's file: refused before any folder is made
        # the folders above it that do not exist yet (an output in a new folder): made with it
        above = missing_folders_above(qc_dir)
        if held.enter_context(held_qc(qc_dir, what="deface into another output")):
            new_qc_dir.extend([qc_dir, *above])
        claim(qc_dir, targets)
    elif args.force and qc_dir_for(args.output).is_dir() and not qc_dir_for(args.output).is_symlink():
        from defacer.verify.qc import held as held_qc

        # its verification is dropped below: never while a run verifying this output holds it (that run would write
        # its renders of the original face into a folder removed under it, and its report describe this output)
        held.enter_context(held_qc(qc_dir_for(args.output), what="deface into another output"))
    mask_path = args.save_mask
    if args.verify and mask_path is None and not is_dicom:
        # The report needs the detected labels (per-feature counts, outlines); keep them with the report.
        mask_path = qc_dir_for(args.output) / DETECTED_LABELS_NAME
    max_voxels = max_voxels_from_args(args)
    replaced = args.force and os.path.lexists(args.output)
    provenance = _deface_and_report(args, options, deidentify, is_dicom, mask_path, max_voxels, force=args.force)
    if not args.verify:
        # also where the earlier output was deleted by hand, unless another output shares the QC folder (out.nii
        # beside out.nii.gz, a DICOM folder out): the verification may be that one's, and still true
        from defacer.io.output_guard import sharing_outputs

        if replaced or (args.force and not sharing_outputs(args.output)):
            _drop_stale_verification(qc_dir_for(args.output), replaced=bool(replaced))
        else:
            _warn_of_earlier_verification(qc_dir_for(args.output))
        return 0
    try:
        return _verify_until_done(args, options, deidentify, is_dicom, mask_path, max_voxels, provenance)
    except KeyboardInterrupt as err:
        _note_written(err, args, "but not verified: verify it with 'defacer verify', or deface again with --force "
                      "--verify")
        raise


def _drop_stale_verification(qc_dir: Path, *, replaced: bool = True) -> None:
    """Remove the verification of an output just replaced under ``--force`` without ``--verify``: its report said
    PASS (or FAIL) and showed the replaced image beside the new one, whose distortions may differ (another
    ``--features``, sizes, label map).  Only the files the QC folder's ownership record lists (reports, pictures,
    README, the label map kept for the report) go, file by file; anything else stays, and so does the folder then.

    ``replaced`` is false where no output was there to replace (the earlier one deleted by hand, its verification
    kept): under ``--force`` that verification goes too; it was only warned about, and stayed beside the new
    output saying PASS about another image."""
    if qc_dir.is_symlink() or not qc_dir.is_dir():  # (checked before importing the QC module: ~15 ms)
        return
    from defacer.verify.qc import RECORD_NAME, owned_files

    stale = [path for path in owned_files(qc_dir, qc_targets(qc_dir, labels=True))
             if path.name != RECORD_NAME]
    if not stale:
        return
    for path in stale:
        path.unlink(missing_ok=True)
    left = [entry.name for entry in qc_dir.iterdir() if entry.name != RECORD_NAME]
    if not left:
        (qc_dir / RECORD_NAME).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            qc_dir.rmdir()
    which = "the replaced output" if replaced else "an earlier output of this name"
    print(f"  removed the verification of {which} from {shown(qc_dir)} ({len(stale)} file(s)): it "
          "described the earlier image. Deface with --verify to verify this one.")


def _warn_of_earlier_verification(qc_dir: Path) -> None:
    """Warn when the QC folder of a new output (no ``--force``: nothing was replaced) holds a verification defacer
    wrote for an earlier output of that name (removed by hand since): it does not describe this one, and without
    ``--force`` defacer removes nothing."""
    if qc_dir.is_symlink() or not qc_dir.is_dir():
        return
    from defacer.verify.qc import owned_files

    reports = owned_files(qc_dir, [qc_dir / "verify_report.html", qc_dir / "verify_summary.json"])
    if reports:
        log.warning("'%s' holds the verification of an earlier output of this name, not of this one: remove it, or "
                    "deface again with --force --verify", text_name(str(qc_dir)))


def _note_written(err: BaseException, args: argparse.Namespace, what_not: str) -> None:
    """Say on an interrupt that came after the output was written that it is there, whole, and what it lacks
    (``interrupted; no partial output was left behind`` read as if nothing had been written)."""
    if not getattr(err, "__notes__", None):
        err.add_note(f"'{args.output}' was written whole with its provenance record, {what_not}.")


def _verify_until_done(args: argparse.Namespace, options: DefaceOptions, deidentify: Deidentification | None,
                       is_dicom: bool, mask_path: Path | None, max_voxels: int | None,
                       provenance: dict[str, Any]) -> int:
    """Verify the output written; with ``--retry-stronger``, deface again more strongly while a face is found."""
    from defacer.verify.verdict import attempt_record, face_still_found

    attempts: list[dict[str, Any]] = []
    while True:
        stronger = stronger_options(options) if args.retry_stronger else None
        status, summary = _verify_and_keep_mask(args, provenance, is_dicom, mask_path, max_voxels,
                                                attempts=attempts or None, retry_on_face=stronger is not None)
        if stronger is None or not face_still_found(summary):
            if args.retry_stronger and status == EXIT_VERIFY_FAILED and stronger is None and not attempts:
                print("  --retry-stronger: not retried, the larger nose removal, eye cover and whole-face removal "
                      "are already chosen (or neither the nose nor the eyes is distorted).")
            return status
        # A face is still found: deface the original once more, one step stronger (larger sizes, then the whole
        # face), into the same output (this run's own, so it is replaced), and verify that.  Every attempt goes
        # into the sidecar.
        print(f"  --retry-stronger: a face was still found ({', '.join(map(str, summary['face_found_after']))}); "
              f"defacing {shown(args.input)} again with {describe_step(stronger)} and verifying again.")
        attempts.append(attempt_record(provenance["options"], summary))
        options = stronger
        try:
            provenance = _deface_and_report(args, options, deidentify, is_dicom, mask_path, max_voxels, force=True)
        except KeyboardInterrupt as err:
            # The output in place FAILED its verification: "written whole ..., but not verified" read as if it
            # only lacked a check, and an earlier 'Do not share this scan' had scrolled away.
            if not getattr(err, "__notes__", None):
                err.add_note(f"'{args.output}' is not safe to share: attempt {len(attempts)} FAILED verification (a "
                             f"face was still found) and the stronger attempt {len(attempts) + 1} was interrupted, "
                             f"so it holds attempt {len(attempts)} (or at most attempt {len(attempts) + 1}, not "
                             "verified). Deface again with --force --retry-stronger.")
            raise


def _deface_and_report(args: argparse.Namespace, options: DefaceOptions, deidentify: Deidentification | None,
                       is_dicom: bool, mask_path: Path | None, max_voxels: int | None, *, force: bool
                       ) -> dict[str, Any]:
    """Deface ``args.input`` into ``args.output`` with ``options``, write the DICOM mapping, print what changed;
    the provenance.  ``force`` replaces an existing output (the user's ``--force``, or this run's own output on a
    retry)."""
    from defacer.route import deface_path

    defaced = deface_path(
        args.input, args.output, options=options, deidentify=deidentify, labels_path=args.labels,
        weights_path=args.weights, force=force, mask_path=mask_path, allow_missing=args.allow_missing,
        series=args.series, max_voxels=max_voxels,
    )
    provenance = defaced.provenance
    changed = provenance["voxels_changed"]
    if is_dicom:
        try:
            _write_mapping(args, defaced, args.output, force=force)
        except KeyboardInterrupt as err:
            if getattr(args, "mapping_file", None):
                _note_written(err, args, "but not its --mapping-file: deface again with --force to write both")
            raise
        print(f"Defaced DICOM series {shown(args.input)} -> {shown(args.output)} ({len(defaced.written)} files"
              + (", headers de-identified" if deidentify is not None else ", headers untouched") + ")")
        print("  voxels changed: " + ", ".join(f"{k} {v}" for k, v in changed.items()))
        warnings = [*provenance.get("warnings", []), *provenance["dicom"]["geometry_warnings"]]
    else:
        print(f"Defaced {shown(args.input)} -> {shown(args.output)}")
        print(f"  voxels changed: {sum(changed.values()):,} (by each feature's distortion: "
              + ", ".join(f"{k} {v:,}" for k, v in changed.items()) + ")" +
              f"; inside the protected region: {provenance['protection']['changed_inside_protected']}")
        warnings = provenance.get("warnings", [])
    for warning in warnings:
        print(f"  warning: {shown(warning, lines=True)}")
    return provenance


def _verify_and_keep_mask(args: argparse.Namespace, provenance: dict[str, Any], is_dicom: bool,
                          mask_path: Path | None, max_voxels: int | None,
                          attempts: list[dict[str, Any]] | None = None, retry_on_face: bool = False
                          ) -> tuple[int, dict[str, Any]]:
    """:func:`verify_outputs` for this run's output; with ``--qc-after-only`` the label map kept for the report is
    removed again afterwards."""
    if is_dicom:
        return verify_outputs(args.input, args.output, provenance, after_only=args.qc_after_only, attempts=attempts,
                              retry_on_face=retry_on_face)
    try:
        return verify_outputs(args.input, args.output, provenance, labels_path=mask_path, max_voxels=max_voxels,
                              after_only=args.qc_after_only, attempts=attempts, retry_on_face=retry_on_face)
    finally:
        # The label map kept for the report holds the original's nose and ear shapes (an ear can identify a
        # person): with --qc-after-only it does not stay in the QC folder once the report is written.
        if args.qc_after_only and args.save_mask is None and mask_path is not None:
            mask_path.unlink(missing_ok=True)


def _write_mapping(args: argparse.Namespace, defaced: Defaced, out_dir: Path, *, force: bool) -> None:
    """``--mapping-file``: the original -> new identifiers of the de-identification (never inside ``out_dir``)."""
    if defaced.scrubber is not None and getattr(args, "mapping_file", None):
        from defacer.io.dicom_series import write_deid_mapping

        write_deid_mapping(defaced.scrubber.mapping.as_dict(), args.mapping_file, out_dir=out_dir, force=force)


def _check_one_head(folder: Path, stacks: list[SeriesInfo]) -> None:
    """Refuse one ``--labels`` map for the series of a folder that holds more than one patient (PatientID, or
    PatientName when no ID) or study (StudyInstanceUID): a label map marks one head where it lay, and was applied to
    every series, so another patient's face was distorted at the first's positions and reported "distorted".

    Raises
    ------
    DefacerError
        Listing the series to pick from with ``--series``.
    """
    from pydicom.errors import InvalidDicomError

    from defacer.errors import DefacerError
    from defacer.io.dicom_files import read_header

    patients, studies = set(), set()
    for info in stacks:
        try:
            ds = read_header(info.files[0])
        except (InvalidDicomError, DefacerError, OSError) as err:  # the series' own reading reports it
            log.debug("header of '%s' not read: %s", info.files[0], err)
            continue
        patients.add(str(ds.get("PatientID", "") or ds.get("PatientName", "")))
        studies.add(str(ds.get("StudyInstanceUID", "")))
    if len(patients) > 1 or len(studies) > 1:
        what = f"{len(patients)} patients" if len(patients) > 1 else f"{len(studies)} studies"
        raise DefacerError(
            f"'{folder}' holds series of {what}, and --labels gives one label map, which marks one head where it lay: "
            "used for every series it would distort the others' faces in the wrong places. Deface each series with "
            "its own label map (--series), or without --labels (the detector finds each face):\n  "
            + "\n  ".join(info.label(i) for i, info in enumerate(stacks, start=1)))


def run_study(args: argparse.Namespace, options: DefaceOptions, deidentify: Deidentification | None,
              stacks: list[SeriesInfo]) -> int:
    """Deface every series of a DICOM study folder, each into ``OUT/NN_series-<number>/``; list what came of each.

    One key serves the whole study, so the series keep agreeing pseudonyms.  A series that fails does not stop
    the others.  Exit status 0 when every series was defaced, 4 when in some a requested feature was not found
    (and nothing else failed), 1 otherwise.
    """
    from defacer.errors import DefacerError, FeaturesNotFoundError, OutputError
    from defacer.io.output_guard import check_apart, check_outputs
    from defacer.provenance import sidecar_path
    from defacer.route import deface_study, series_folder_name

    if args.save_mask is not None or args.verify:
        raise DefacerError(
            f"'{args.input}' holds {len(stacks)} series; --save-mask and --verify work on one series. Deface the "
            "study without them (then 'defacer verify' each output), or pick one series with --series:\n  "
            + "\n  ".join(info.label(i) for i, info in enumerate(stacks, start=1)))
    if args.labels is not None:
        _check_one_head(args.input, stacks)
    target = Path(args.output)
    if target.exists() and not (args.force and target.is_dir()):
        raise OutputError(f"The output '{target}' already exists. Choose a new folder for the study, or pass --force "
                          "to write the series into it (replacing only series folders defacer wrote).")
    folders = [target / series_folder_name(i, info) for i, info in enumerate(stacks, start=1)]
    mapping = getattr(args, "mapping_file", None) if deidentify is not None else None
    inputs = [args.input, args.labels, args.weights, getattr(args, "key_file", None)]
    check_outputs([*folders, *(sidecar_path(f) for f in folders), mapping], inputs=inputs, force=args.force)
    check_apart(mapping, target, "mapping file")
    outcomes = deface_study(args.input, target, stacks=stacks, deidentify=deidentify, options=options,
                            labels_path=args.labels, weights_path=args.weights, force=args.force,
                            allow_missing=args.allow_missing, max_voxels=max_voxels_from_args(args))
    print(f"{shown(args.input)} holds {len(stacks)} series; each defaced into its own folder under {shown(target)}"
          + (" (headers de-identified, one key for the study):" if deidentify is not None else " (headers untouched):"))
    status = 0
    scrubber = None
    for index, (info, (folder, outcome)) in enumerate(zip(stacks, outcomes, strict=True), start=1):
        print(f"  {info.label(index)}")
        if isinstance(outcome, FeaturesNotFoundError):
            status = status or EXIT_FEATURES_MISSING
            print(f"      not written: {shown(outcome, lines=True)}")
        elif isinstance(outcome, DefacerError):
            status = 1
            print(f"      error: {shown(outcome, lines=True)}")
        else:
            scrubber = outcome.scrubber or scrubber
            changed = outcome.provenance["voxels_changed"]
            print(f"      -> {shown(folder.name)}/ ({len(outcome.written)} files); voxels changed: "
                  + ", ".join(f"{k} {v}" for k, v in changed.items()))
    if scrubber is not None and mapping:
        from defacer.io.dicom_series import write_deid_mapping

        write_deid_mapping(scrubber.mapping.as_dict(), mapping, out_dir=target, force=args.force)
    _warn_earlier_series(target, folders)
    if status:
        print(f"defacer deface: not every series of {shown(args.input)} was defaced (see above)", file=sys.stderr)
    return status


def _warn_earlier_series(target: Path, folders: list[Path]) -> None:
    """Warn about series folders of an earlier run left in a study's output (``--force`` replaces only the
    folders this run writes): ``deface study2/ OUT --force`` into the output of another study kept that study's
    other series beside this one's, all of it under one OUT to share."""
    import re

    from defacer.io.output_guard import owner_record

    written = {folder.name for folder in folders}
    try:
        names = sorted(os.listdir(target))
    except OSError:
        return
    earlier = [name for name in names if name not in written and re.fullmatch(r"\d{2}_series-\w+", name)
               and (target / name).is_dir() and owner_record(target / name).is_file()]
    if earlier:
        log.warning("'%s' also holds %d series folder(s) of an earlier run that this run did not write: %s. They "
                    "stay (--force replaces only the folders it writes); if they are not this study's, remove them "
                    "(and their .defacer.json) before sharing the folder.", target, len(earlier),
                    ", ".join(earlier[:5]) + (" ..." if len(earlier) > 5 else ""))


def checked_output_name(input_path: Path, output: Path, is_dicom: bool) -> Path:
    """The output spelt with a name of its own (``.``, ``..``, ``x/..`` made absolute), checked for its kind.

    Parameters
    ----------
    input_path : Path
        The scan (a file, or a DICOM file or folder).
    output : Path
        The output as given.
    is_dicom : bool
        Whether the input is DICOM (its output is a folder).

    Raises
    ------
    defacer.errors.OutputError
        The output is the root of a file system, or, for a scan written to a file (NIfTI, NRRD, MGZ), an
        existing folder: the message names a file in it to give instead.
    """
    from defacer.errors import OutputError

    named = named_path(output)

    def example() -> Path:  # a name to give instead (derived only when refusing)
        return Path(output) / default_output(named_path(input_path)).name

    if not named.name:
        raise OutputError(f"The output '{output}' is the root of the file system; give the defaced "
                          f"{'folder' if is_dicom else 'file'}'s own name, for example '{example()}'.")
    if is_dicom:
        from defacer.io.output_guard import check_dicom_output_name

        check_dicom_output_name(named)
    if not is_dicom and named.is_dir():
        raise OutputError(f"The output '{output}' is a folder, but this scan is written to a file (its input's "
                          f"format): give the file's name, for example '{example()}'.")
    return named


def check_planned_outputs(args: argparse.Namespace) -> None:
    """Check every path this run will write against every input, before anything is written.

    The output (and a ``.nhdr``'s data file), its sidecar, ``--save-mask``, the verification
    report and ``--mapping-file``: none may be or touch an input (the scan's own files, the
    label map, the weights), none may exist without ``--force``, an existing folder is replaced
    only when defacer wrote it, and the mapping file never goes inside the output.

    Raises
    ------
    defacer.errors.OutputError
    """
    from defacer.io.output_guard import (
        check_apart,
        check_not_input,
        check_outputs,
        check_record_not_shared,
        detached_data_candidates,
    )
    from defacer.provenance import sidecar_path

    inputs = [args.input, args.labels, args.weights, getattr(args, "key_file", None)]
    mapping = getattr(args, "mapping_file", None) if not getattr(args, "no_deidentify", False) else None
    planned: list[Path | None] = [args.output, sidecar_path(args.output), args.save_mask, mapping]
    report = qc_dir_for(args.output)
    if args.verify:
        qc_files = qc_targets(report, labels=args.save_mask is None)
        planned += qc_files
        from defacer.verify.qc import check_owned

        check_owned(report, qc_files)  # a user's file in the QC folder: refused, --force or not
    check_record_not_shared(args.output)  # before 'already exists, pass --force', which --force would not mend
    check_outputs(planned, inputs=inputs, force=args.force)
    check_not_input([report, *detached_data_candidates(args.output), *detached_data_candidates(args.save_mask)],
                    inputs)
    check_apart(mapping, args.output, "mapping file")


#: The label map ``--verify`` keeps for the report when ``--save-mask`` is not given.
DETECTED_LABELS_NAME = "detected_labels.nii.gz"


def qc_targets(qc_dir: Path, *, labels: bool) -> list[Path]:
    """Every file ``--verify`` may write into the QC folder: reports, README, pictures and (``labels``) the label map."""
    from defacer.verify.qc import report_targets

    return report_targets(qc_dir, *([DETECTED_LABELS_NAME] if labels else []))


def _record_verdict(defaced_path: Path, verification: dict[str, Any]) -> None:
    """Add the verification outcome to the output's provenance sidecar (no picture, only the verdict)."""
    import json

    from defacer.provenance import sidecar_path, write_provenance

    path = sidecar_path(defaced_path)
    try:
        provenance = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # no sidecar to complete (it is written by the pipeline; nothing else to do)
    provenance["verification"] = verification
    write_provenance(provenance, path)


def verify_outputs(original_path: Path, defaced_path: Path, provenance: dict[str, Any], labels_path: Path | None = None,
                   max_voxels: int | None = 512**3, after_only: bool = False,
                   attempts: list[dict[str, Any]] | None = None, retry_on_face: bool = False
                   ) -> tuple[int, dict[str, Any]]:
    """Run the offline verification on a defaced output, print the verdict; return the exit status.

    Needs defacer[verify].  The report, a README and small pictures go to :func:`verify_dir`
    (with ``after_only``, no picture of the original).  Returns the exit status (0 on PASS,
    :data:`EXIT_VERIFY_FAILED` (3) on FAIL, :data:`EXIT_VERIFY_INCONCLUSIVE` (5) when no face
    was found in the original, as ``defacer verify``) and the verification summary.  ``max_voxels``
    is the loader's limit (:func:`defacer.io.load_volume`; ``None``: no limit).  ``attempts``: the
    earlier attempts of a ``--retry-stronger`` run (:func:`~defacer.verify.verdict.attempt_record`), recorded in the sidecar before
    this one; ``retry_on_face``: a FAIL for a face found is followed by a retry, so no next step is printed
    for it.
    """
    from defacer.io import load_volume

    try:
        from defacer.verify import verify_pair
    except ImportError as err:
        from defacer.errors import MissingExtraError

        raise MissingExtraError("verify", getattr(err, "name", None) or "defacer.verify") from err
    labels = (load_volume(labels_path, strict=False, max_voxels=max_voxels).raw
              if labels_path is not None and Path(labels_path).exists() else None)
    from defacer.verify import qc
    from defacer.verify.verdict import (
        EXIT_STATUS,
        FAIL,
        INCONCLUSIVE,
        MEANING,
        attempt_record,
        face_still_found,
        remedy,
    )

    qc_dir = qc_dir_for(defaced_path)
    qc.claim(qc_dir, qc_targets(qc_dir, labels=False))  # recorded before anything is written there
    qc.write_readme(qc_dir, after_only)
    result = verify_pair(load_volume(original_path, max_voxels=max_voxels),
                         load_volume(defaced_path, max_voxels=max_voxels), qc_dir,
                         labels=labels, provenance=provenance, title=f"defacer verify: {Path(defaced_path).name}",
                         after_only=after_only)
    pictures = qc.write_pictures(result.renders, qc_dir, after_only)
    verdict = result.verdict
    print(f"  verification: {verdict}. {MEANING[verdict]}")
    retried = retry_on_face and face_still_found(result.summary)
    step = None if retried else remedy(result.summary)
    if step:
        print(f"  {step}")
    print(f"  report: {shown(result.report_path)}")
    if "overview" in pictures:
        print(f"  picture: {shown(qc_dir / pictures['overview'])}")
    print("  " + qc.notice(qc_dir, after_only))
    status = EXIT_STATUS[verdict]
    # An output the sidecar records as '<output>' (its name holds the patient's identifiers) is not named here either.
    shown_qc = "<output>-qc" if (provenance.get("output") or {}).get("path") == "<output>" else qc_dir.name
    record: dict[str, Any] = {"verdict": verdict, "meaning": MEANING[verdict], "exit_status": status,
                              "report": f"{shown_qc}/{Path(result.report_path).name}"}
    if attempts:
        record["attempts"] = [*attempts, attempt_record(provenance.get("options") or {}, result.summary)]
    _record_verdict(defaced_path, record)
    if verdict in (FAIL, INCONCLUSIVE) and not retried:
        print(f"defacer deface: verification {verdict} for {shown(defaced_path)} (exit status {status}); "
              f"see {shown(result.report_path)}", file=sys.stderr)
    return status, result.summary
