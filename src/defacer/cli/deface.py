"""``defacer deface IN OUT``: deface one scan (NIfTI, NRRD, MGZ, or a DICOM series folder)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from defacer.labels import FEATURES, parse_features

log = logging.getLogger(__name__)

#: Exit status of ``deface --verify`` when the verification fails (the same as ``defacer verify``).
EXIT_VERIFY_FAILED = 3
#: Exit status of ``deface --verify`` when the verification is inconclusive: no face was found in the
#: original's renders, so nothing could be tested (the same as ``defacer verify``).
EXIT_VERIFY_INCONCLUSIVE = 5

if TYPE_CHECKING:
    from defacer.pipeline import DefaceOptions


def parse_voxel_limit(text: str) -> int:
    """``--max-voxels``: a positive integer, or 0 for no limit (``1e9`` and ``512**3`` forms too)."""
    try:
        value = int(float(text)) if "**" not in text else int(text.split("**")[0]) ** int(text.split("**")[1])
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a number of voxels such as 134217728, 1e9 or 512**3, "
                                         f"not '{text}'") from err
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of voxels (0: no limit), not {value}")
    return value


def max_voxels_from_args(args: argparse.Namespace) -> int | None:
    """The loader's voxel limit for these arguments (``None``: no limit)."""
    from defacer.checks import DEFAULT_MAX_VOXELS

    value = getattr(args, "max_voxels", None)
    if value is None:
        return DEFAULT_MAX_VOXELS
    return None if value == 0 else value


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that defaces (deface, batch, demo)."""
    parser.add_argument(
        "--features", default="all", metavar="LIST",
        help=f"comma-separated features to distort, from {', '.join(FEATURES)} (default: all)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the ear noise; same seed, same output (default 0)")
    parser.add_argument("--labels", metavar="FILE", type=Path,
                        help="use this label map (0 background, 1 eyes, 2 nose, 3 ears; on the scan's own grid) "
                             "instead of the detector")
    parser.add_argument("--weights", metavar="FILE", type=Path, help="use other ONNX detector weights")
    parser.add_argument("--protect-depth", type=float, default=10.0, metavar="MM",
                        help="never change voxels deeper than this below the head surface (default 10 mm)")
    parser.add_argument("--eye-band", type=float, default=6.0, metavar="MM",
                        help="thickness of the skin layer under each eye cover (default 6 mm)")
    parser.add_argument("--eye-box-scale", type=float, default=2.0, metavar="X",
                        help="each eye cover is an ellipse X times the detected eye's size, with a soft edge "
                             "(default 2: from the brow to the upper cheek, nasal bridge to outer eye corner)")
    parser.add_argument("--force", action="store_true",
                        help="replace existing outputs (files, or folders defacer itself wrote; never anything else)")
    parser.add_argument("--max-voxels", type=parse_voxel_limit, default=None, metavar="N",
                        help="refuse NIfTI/NRRD/MGZ scans declaring more voxels than N, before reading them "
                             "(default 512^3 = 134217728, about 2.1 GB of working memory; 0: no limit)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="write the output even when a requested feature is not found (by default nothing is "
                             "written and the exit status is 4: an unchanged copy could pass for a defaced scan)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "deface",
        help="deface one scan (NIfTI, NRRD, MGZ or a DICOM series folder)",
        description=(
            "Find the eyes, nose and ears and distort exactly those: a skin band over each eye, the nose's doubled "
            "bounding box set to air, each auricle replaced by the scan's own air noise. The output keeps the input's "
            "format, grid, data type and header; every other voxel is bit-identical. A provenance sidecar "
            "OUT-stem.defacer.json is written beside the output."
        ),
        usage="%(prog)s [options] input [output]",
        epilog="Examples:\n  defacer deface sub-01_T1w.nii.gz          (writes sub-01_T1w_defaced.nii.gz beside it)\n"
               "  defacer deface sub-01_T1w.nii.gz sub-01_T1w_defaced.nii.gz\n"
               "  defacer deface head.nrrd head_defaced.nrrd --features eyes,nose --save-mask mask.nrrd\n"
               "  defacer deface dicom_in/ dicom_out/\n\n"
               "Exit status:\n  0  defaced (and verified, with --verify)\n"
               "  1  error (bad input, output refused, ...); nothing written\n  2  usage error\n"
               "  3  --verify: the verification failed (the output is written)\n"
               "  5  --verify: inconclusive, no face found in the original to test (the output is written)\n"
               "  4  a requested feature (eyes, nose, ears) was not found or not distorted; nothing written\n"
               "     (--allow-missing writes it anyway and exits 0)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", type=Path, help="scan to deface: .nii, .nii.gz, .nrrd, .nhdr, .mgz, .mgh, or a DICOM folder")
    parser.add_argument("output", type=Path, nargs="?", default=None,
                        help="defaced output, same format as the input (a folder for DICOM); default: "
                             "<stem>_defaced<ext> beside the input (a DICOM folder: <folder>_defaced/)")
    add_common_arguments(parser)
    parser.add_argument("--save-mask", metavar="FILE", type=Path, help="also write the detected label map here")
    parser.add_argument("--verify", action="store_true",
                        help="render the face before and after and check it with offline face detectors "
                             "(needs defacer[verify]); the report and pictures go to OUT-stem-qc/ beside the output "
                             "(they show the original face: never share that folder); exit status 3 when the "
                             "verification fails, 5 when it is inconclusive (as 'defacer verify')")
    parser.add_argument("--qc-after-only", action="store_true",
                        help="with --verify: put no picture of the original face in the QC folder, only pictures "
                             "after defacing")
    try:
        deface_dicom = importlib.import_module("defacer.cli.deface_dicom")
    except ModuleNotFoundError:
        pass
    else:
        group = parser.add_argument_group("DICOM input")
        deface_dicom.add_arguments(group)
    parser.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> DefaceOptions:
    """Build :class:`~defacer.pipeline.DefaceOptions` from parsed arguments."""
    from defacer.errors import DefacerError
    from defacer.pipeline import DefaceOptions

    try:
        features = parse_features(args.features)
        return DefaceOptions(features=features, seed=args.seed, protect_depth_mm=args.protect_depth,
                             eye_band_mm=getattr(args, "eye_band", 6.0), eye_box_scale=getattr(args, "eye_box_scale", 2.0))
    except ValueError as err:
        raise DefacerError(str(err)) from err


def default_output(input_path: Path) -> Path:
    """``<stem>_defaced<ext>`` beside the input; for a folder (DICOM series) ``<folder>_defaced``."""
    path = Path(input_path)
    if path.is_dir():
        return path.with_name(path.name + "_defaced")
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mgz", ".mgh", ".dcm"):
        if name.lower().endswith(suffix):
            return path.with_name(name[: -len(suffix)] + "_defaced" + name[-len(suffix):])
    return path.with_name(name + "_defaced")


def run(args: argparse.Namespace) -> int:
    from defacer.io import format_of
    from defacer.pipeline import deface_file, load_detector

    if args.output is None:
        args.output = default_output(args.input)
    options = options_from_args(args)
    if not getattr(args, "what_if", False):
        check_planned_outputs(args)
    if args.input.exists() and format_of(args.input) == "dicom":
        deface_dicom = importlib.import_module("defacer.cli.deface_dicom")
        detector = load_detector(args.labels, args.weights)
        return deface_dicom.run_dicom(args, options, detector)
    mask_path = args.save_mask
    if args.verify and mask_path is None:
        # The report needs the detected labels (per-feature counts, outlines); keep them with the report.
        mask_path = verify_dir(args.output) / DETECTED_LABELS_NAME
    provenance = deface_file(
        args.input, args.output, options=options, labels_path=args.labels, weights_path=args.weights,
        force=args.force, mask_path=mask_path, allow_missing=args.allow_missing,
        max_voxels=max_voxels_from_args(args),
    )
    changed = provenance["voxels_changed"]
    print(f"Defaced {args.input} -> {args.output}")
    print(f"  voxels changed: {sum(changed.values()):,} (by each feature's distortion: "
          + ", ".join(f"{k} {v:,}" for k, v in changed.items()) + ")" +
          f"; inside the protected region: {provenance['protection']['changed_inside_protected']}")
    for warning in provenance.get("warnings", []):
        print(f"  warning: {warning}")
    if args.verify:
        return verify_outputs(args.input, args.output, provenance, labels_path=mask_path,
                              max_voxels=max_voxels_from_args(args), after_only=getattr(args, "qc_after_only", False))
    return 0


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
    from defacer.io.output_guard import check_apart, check_not_input, check_outputs, detached_data_candidates
    from defacer.provenance import sidecar_path

    inputs = [args.input, args.labels, args.weights, getattr(args, "key_file", None)]
    mapping = getattr(args, "mapping_file", None) if not getattr(args, "no_deidentify", False) else None
    planned: list[Path | None] = [args.output, sidecar_path(args.output), args.save_mask, mapping]
    report = verify_dir(args.output)
    if args.verify:
        planned += [report / name for name in QC_FILES]
        if args.save_mask is None:
            planned.append(report / DETECTED_LABELS_NAME)
    check_outputs(planned, inputs=inputs, force=args.force)
    check_not_input([report, *detached_data_candidates(args.output), *detached_data_candidates(args.save_mask)],
                    inputs)
    check_apart(mapping, args.output, "mapping file")


#: The label map ``--verify`` keeps for the report when ``--save-mask`` is not given.
DETECTED_LABELS_NAME = "detected_labels.nii.gz"
#: What ``--verify`` writes into the QC folder (besides the label map).
QC_FILES: tuple[str, ...] = ("verify_report.html", "verify_summary.json", "README.txt", "before_after.png",
                             "after.png", "front_before.png", "front_after.png", "left45_before.png",
                             "left45_after.png")


def verify_dir(defaced_path: Path) -> Path:
    """The QC folder of a defaced output: ``<stem>-qc`` beside it (never inside an output folder).

    It holds the verification report and pictures, which show the original face.
    """
    from defacer.provenance import SIDECAR_SUFFIX, sidecar_path

    sidecar = sidecar_path(defaced_path)
    return sidecar.with_name(sidecar.name[: -len(SIDECAR_SUFFIX)] + "-qc")


def _record_verdict(defaced_path: Path, verification: dict) -> None:
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


def verify_outputs(original_path: Path, defaced_path: Path, provenance: dict, labels_path: Path | None = None,
                   max_voxels: int | None = 512**3, after_only: bool = False) -> int:
    """Run the offline verification on a defaced output, print the verdict; return the exit status.

    Needs defacer[verify].  The report, a README and small pictures go to :func:`verify_dir`
    (with ``after_only``, no picture of the original).  Returns 0 on PASS,
    :data:`EXIT_VERIFY_FAILED` (3) on FAIL, :data:`EXIT_VERIFY_INCONCLUSIVE` (5) when no face
    was found in the original, as ``defacer verify``.  ``max_voxels`` is the loader's limit
    (:func:`defacer.io.load_volume`; ``None``: no limit).
    """
    from defacer.io import load_volume

    try:
        from defacer.verify import verify_pair
    except ImportError as err:
        from defacer.errors import MissingExtraError

        raise MissingExtraError("verify", getattr(err, "name", None) or "defacer.verify") from err
    limit = {"max_voxels": max_voxels}  # default: defacer.checks.DEFAULT_MAX_VOXELS; None: no limit
    labels = (load_volume(labels_path, strict=False, **limit).raw
              if labels_path is not None and Path(labels_path).exists() else None)
    from defacer.verify import qc
    from defacer.verify.verdict import EXIT_STATUS, FAIL, INCONCLUSIVE, MEANING

    qc_dir = verify_dir(defaced_path)
    qc.write_readme(qc_dir, after_only)
    result = verify_pair(load_volume(original_path, **limit), load_volume(defaced_path, **limit), qc_dir,
                         labels=labels, provenance=provenance, title=f"defacer verify: {Path(defaced_path).name}",
                         after_only=after_only)
    pictures = qc.write_pictures(result.renders, qc_dir, after_only)
    verdict = result.verdict
    print(f"  verification: {verdict}. {MEANING[verdict]}")
    print(f"  report: {result.report_path}")
    if "overview" in pictures:
        print(f"  picture: {qc_dir / pictures['overview']}")
    print("  " + qc.notice(qc_dir, after_only))
    status = EXIT_STATUS[verdict]
    _record_verdict(defaced_path, {"verdict": verdict, "meaning": MEANING[verdict], "exit_status": status,
                                   "report": f"{qc_dir.name}/{Path(result.report_path).name}"})
    if verdict in (FAIL, INCONCLUSIVE):
        print(f"defacer deface: verification {verdict} for {defaced_path} (exit status {status}); "
              f"see {result.report_path}", file=sys.stderr)
    return status
