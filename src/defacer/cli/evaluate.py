"""``defacer evaluate FOLDER``: deface, verify and score every scan in a folder."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from defacer.cli.paths import path_argument
from defacer.errors import shown

if TYPE_CHECKING:
    from defacer.verify.evaluate import Scan


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="deface and verify every scan in a folder; print a table, write JSON and an HTML summary",
        description=(
            "For every scan in FOLDER (NIfTI/NRRD/MGZ files and DICOM series folders): deface it in memory, verify it "
            "(renders, offline face detectors, identity distance, changed voxels), and score it: features found, Dice "
            "against reference labels where present, detector scores before/after, time and memory. Overall: the "
            "re-identification rank-1 rate of the defaced renders against a gallery of all originals, next to the "
            "rate of the originals seen from another angle and chance. Needs defacer[verify]."
        ),
        epilog="Example:\n  defacer evaluate ../shared/data/heads --labels-dir reference_labels --out reports/eval\n\n"
               "Exit status (the worst scan decides, as 'defacer verify' for one scan):\n"
               "  0  every scan PASSed verification\n"
               "  1  error: some scan could not be evaluated (its row says why), or bad input\n  2  usage error\n"
               "  3  some scan FAILed: a face was found after defacing, or the brain region changed\n"
               "  5  some scan was INCONCLUSIVE (no face found in its original to test), none failed",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", type=path_argument, help="folder of scans")
    parser.add_argument("--out", type=path_argument, default=Path("defacer-evaluation"), metavar="DIR",
                        help="output folder (default: ./defacer-evaluation)")
    parser.add_argument("--labels-dir", type=path_argument, default=None, metavar="DIR",
                        help="deface with the label maps DIR/<name>.labels.nii.gz (or .labels.nii/.nrrd/.nhdr/.mgz/.mgh) instead of the detector")
    parser.add_argument("--reference-dir", type=path_argument, default=None, metavar="DIR",
                        help="reference label maps <name>.labels.nii.gz (or .labels.nii/.nrrd/.nhdr/.mgz/.mgh) for Dice (default: ./reference_labels if present)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the ear noise (default 0)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from defacer.errors import DefacerError
    from defacer.evaluate import evaluate_folder
    from defacer.options import DefaceOptions
    from defacer.verify.evaluate import TABLE_HEADER, find_scans, format_overall

    try:  # checked before anything is written
        options = DefaceOptions(seed=args.seed)
    except ValueError as err:
        raise DefacerError(str(err)) from err
    reference = args.reference_dir
    if reference is None and Path("reference_labels").is_dir():
        reference = Path("reference_labels")
    scans = find_scans(args.folder)  # listed once: the scans claimed are the scans evaluated
    claim_outputs(args.folder, args.out, scans, [args.labels_dir, reference])
    print(TABLE_HEADER, flush=True)
    result = evaluate_folder(args.folder, args.out, scans=scans, labels_dir=args.labels_dir, reference_dir=reference,
                             options=options, echo=lambda line: print(line, flush=True))
    print(format_overall(result["overall"]))
    print(f"written: {shown(args.out / 'evaluation.json')}, {shown(args.out / 'evaluation.html')}")
    status = exit_status(result["overall"])
    if status != 0:
        names = {verdict: [s["name"] for s in result["scans"] if s.get("verdict") == verdict]
                 for verdict in ("FAIL", "INCONCLUSIVE")}
        said = [f"{len(names[v])} {v} ({', '.join(names[v])})" for v in names if names[v]]
        errors = result["overall"]["errors"]
        print("defacer evaluate: " + "; ".join(([f"{errors} scan(s) could not be evaluated"] if errors else []) + said)
              + f" (exit status {status}); see each scan's report in {args.out}", file=sys.stderr)
    return status


def exit_status(overall: dict[str, Any]) -> int:
    """The evaluation's exit status from its overall counts: 1 when some scan could not be evaluated, else 3
    (:data:`defacer.verify.verdict.EXIT_STATUS` of FAIL) when some failed, else 5 when some was inconclusive,
    else 0."""
    from defacer.verify.verdict import EXIT_STATUS, FAIL, INCONCLUSIVE, PASS

    if overall.get("errors"):
        return 1
    if overall.get("failed"):
        return EXIT_STATUS[FAIL]
    if overall.get("inconclusive"):
        return EXIT_STATUS[INCONCLUSIVE]
    return EXIT_STATUS[PASS]


def claim_outputs(folder: Path, out: Path, scans: Sequence[Scan], inputs: list[Path | None]) -> None:
    """Check, then record in ``out``'s ownership record, every file the evaluation will write there.

    The files are ``evaluation.json``, ``evaluation.html`` and each scan's ``<name>/verify_report.html`` and
    ``verify_summary.json`` (they show the original faces).  None may touch an input (the scans' folder, the
    label folders), and an existing one that defacer did not write there is refused (the QC folders' rule,
    :func:`defacer.verify.qc.claim`).

    Parameters
    ----------
    folder : Path
        The folder of scans.
    out : Path
        The evaluation's output folder.
    scans : sequence of Scan
        The scans of ``folder`` that will be evaluated (:func:`defacer.verify.evaluate.find_scans`).
    inputs : list of Path or None
        The other folders read (label maps, reference labels); ``None`` entries are ignored.

    Raises
    ------
    OutputError
        Naming the file in the way, before anything is written.
    """
    from defacer.io.output_guard import check_not_input
    from defacer.verify import qc
    from defacer.verify.evaluate import RESULT_HTML, RESULT_JSON
    from defacer.verify.report import REPORT_NAME, SUMMARY_NAME

    targets = [out / RESULT_JSON, out / RESULT_HTML]
    for scan in scans:
        targets += [out / scan.name / REPORT_NAME, out / scan.name / SUMMARY_NAME]
    check_not_input([out, *targets], [folder, *inputs])
    qc.claim(out, targets)
