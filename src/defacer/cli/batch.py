"""``defacer batch IN OUT``: deface a whole dataset, resumable and in parallel."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from defacer.cli.options import (
    add_deface_arguments,
    add_deid_arguments,
    add_force_argument,
    add_jobs_argument,
    add_scan_arguments,
    add_verify_arguments,
    deface_options_from_args,
    deidentification_from_args,
    max_voxels_from_args,
)
from defacer.cli.paths import text_path_argument

if TYPE_CHECKING:
    from collections.abc import Sequence

    from defacer.batch.runner import BatchConfig

EPILOG = """\
examples:
  defacer batch ds000001 ds000001-defaced --jobs 2
  defacer batch ds000001 ds000001-defaced --include suffix=T1w --exclude sub=05
  defacer batch ds000001 derivatives/defaced --derivatives
  defacer batch dicom_export defaced_export --scheduler tcp://headnode:8786
  defacer batch ds000001 ds000001-defaced --scheduler local --jobs 4

A rerun with the same IN and OUT resumes: scans recorded as done and unchanged are skipped,
failed or changed ones are redone. The manifest and an HTML summary are in OUT/.defacer/.
Exit code 0 when every scan was defaced, 1 when some failed (see the summary), else 4 when
in some scans a requested feature was not found: those are recorded as "nothing-found" or
"incomplete" and nothing is written for them (--allow-missing writes them anyway); else 5
when some verification (--verify) was inconclusive: no face was found in the original to test.

--verify writes its reports, pictures and a QC gallery (index.html) into OUT-qc/ beside OUT,
never into OUT: they show the original faces. Keep OUT-qc private, or use --qc-after-only.
"""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register ``batch`` on the main parser's subparsers."""
    parser = subparsers.add_parser(
        "batch",
        help="deface every scan of a BIDS dataset or folder (resumable, parallel, Dask)",
        description=(
            "Deface every scan of IN into OUT, mirroring IN's layout. IN is a BIDS dataset (anat images and CT), "
            "a folder of NIfTI/NRRD/MGZ files, or a folder of DICOM series. IN is never modified."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", metavar="IN", type=text_path_argument,
                        help="BIDS dataset, folder of images, or folder of DICOM series")
    parser.add_argument("output", metavar="OUT", type=text_path_argument,
                        help="output folder (new, empty, or a previous batch's to resume)")
    parser.add_argument("--include", action="append", default=[], metavar="PATTERN",
                        help="only scans matching: KEY=VALUE on BIDS entities (suffix=T1w, sub=0*) or a path glob; "
                             "repeatable")
    parser.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                        help="skip scans matching (same forms as --include); excluded scans are not copied either")
    add_deface_arguments(parser, seed_help="batch seed; each scan's seed derives from it and its path (default 0)")
    add_jobs_argument(parser, "worker processes on this machine (default 1; at most its CPU cores are started)")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="run on Dask: 'local' starts a LocalCluster of --jobs workers; or a scheduler address "
                             "(tcp://host:8786) or scheduler file (.json)")
    parser.add_argument("--derivatives", action="store_true",
                        help="write a BIDS derivatives dataset (desc-defaced names) instead of a mirror of IN")
    parser.add_argument("--others", choices=("copy", "hardlink", "symlink", "skip"),
                        help="what to do with non-image files (default: copy; skip with --derivatives and for a "
                             "folder of DICOM series, whose other files often name the patient)")
    parser.add_argument("--labels-dir", metavar="DIR", type=text_path_argument,
                        help="label maps mirroring IN (<stem>.labels.nii.gz) used instead of the detector")
    add_scan_arguments(parser)
    dicom = parser.add_argument_group("DICOM series (headers de-identified, PS3.15 Annex E Basic Profile)")
    add_deid_arguments(dicom, mapping=False, what_if=False, optional=True)
    dicom.add_argument("--allow-identifying-paths", action="store_true",
                       help="write a de-identified series even when its folder names hold its patient's name, IDs, "
                            "birth date or original UIDs (refused by default; rename such folders before sharing)")
    add_verify_arguments(parser)
    parser.add_argument("--redo", action="store_true", help="deface every scan again, even those recorded as done")
    parser.add_argument("--rehash", action="store_true",
                        help="check done scans by sha256 instead of size and modification time")
    add_force_argument(parser)
    parser.add_argument("-n", "--dry-run", action="store_true",
                        help="list what would be defaced, skipped and excluded, and write nothing")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary table")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the batch; 0 when every scan was defaced, 1 when some failed, 4 when some had a feature not found."""
    from defacer.batch.runner import BatchConfig, run_batch
    from defacer.errors import DefacerError

    _check_key_file_apart(args)
    config = BatchConfig(
        in_root=args.input, out_root=args.output, include=args.include, exclude=args.exclude,
        options=deface_options_from_args(args), jobs=args.jobs, scheduler=args.scheduler,
        layout="derivatives" if args.derivatives else "mirror", others=args.others,
        labels_dir=args.labels_dir, weights_path=args.weights, verify=args.verify, force=args.force,
        qc_after_only=args.qc_after_only, retry_stronger=args.retry_stronger,
        redo=args.redo, rehash=args.rehash, quiet=args.quiet,
        deidentify=deidentification_from_args(args, warn_random=False),  # the runner warns when DICOM is there
        allow_missing=args.allow_missing, max_voxels=max_voxels_from_args(args),
        allow_identifying_paths=args.allow_identifying_paths,
    )
    try:
        if args.dry_run:
            return _print_plan(config)
        summary = run_batch(config)
    except KeyboardInterrupt as err:
        from defacer.batch.engines import LeftRunning

        return _interrupted(args.output, getattr(err, "__notes__", ()), left_running=isinstance(err, LeftRunning))
    except ValueError as err:
        if isinstance(err, DefacerError):
            raise
        raise DefacerError(str(err)) from err
    return summary.exit_code


def _interrupted(output: str, notes: Sequence[str] = (), *, left_running: bool = False) -> int:
    """Say how to go on after Ctrl-C (or SIGTERM) stopped a batch; the exit code 130.  ``notes``: the runner's count
    of the scans finished and not done, when it got that far.  ``left_running``: scans still ran on a Dask cluster
    when the batch stopped waiting for them (:class:`defacer.batch.engines.LeftRunning`; the notes name them)."""
    import sys
    from pathlib import Path

    from defacer.cli.main import EXIT_INTERRUPTED
    from defacer.errors import shown

    state = Path(output) / ".defacer"
    counted = "".join(f" {note}." for note in notes)
    listed = f" (listed in '{shown(state / 'summary.html')}')" if notes else ""
    stopped = ("the scans in flight were stopped and their temporary files removed, except those still running on the "
               "Dask cluster" if left_running else "the scans in flight were stopped and their temporary files removed")
    print(f"defacer batch: interrupted; {stopped}.{counted} "
          f"The scans that finished are recorded in '{shown(state / 'manifest.jsonl')}'{listed}: run the same command "
          "again to resume (they are skipped, the rest are defaced).", file=sys.stderr)
    return EXIT_INTERRUPTED


def _check_key_file_apart(args: argparse.Namespace) -> None:
    """Refuse a ``--key-file`` inside IN or OUT: IN's other files are carried into OUT, and OUT is what gets
    shared, so the key would travel with the data, and anyone holding it could recompute the pseudonyms of a
    guessed patient ID and confirm who a series is.

    Raises
    ------
    DefacerError
    """
    from pathlib import Path

    from defacer.errors import DefacerError

    if args.key_file is None:
        return
    key = Path(args.key_file).resolve()
    for folder, name in ((args.input, "input"), (args.output, "output")):
        root = Path(folder).resolve()
        if key.is_relative_to(root):
            raise DefacerError(
                f"The key file '{args.key_file}' lies inside the batch {name} '{folder}': it would be shared with the "
                "de-identified data (the input's other files are carried into the output), and anyone holding it "
                "could recompute the pseudonyms of a guessed patient ID. Keep it outside both folders (nothing was "
                "written)."
            )


def _print_plan(config: BatchConfig) -> int:
    """Print what the run would do; 1 when it would refuse some scan (as the run's exit code), else 0."""
    from collections import Counter

    from defacer.batch.runner import describe_plan
    from defacer.errors import shown

    rows = describe_plan(config)
    for action, key, output in rows:
        print(f"{action:8} {shown(key)}" + (f" -> {shown(output)}" if output is not None else ""))
    counts = Counter(action for action, _, _ in rows)
    refused = f", {counts['refuse']} refused (see the warnings)" if counts["refuse"] else ""
    print(f"{counts['deface']} to deface, {counts['skip']} already done, {counts['exclude']} excluded{refused}; "
          "nothing written.")
    return 1 if counts["refuse"] else 0
