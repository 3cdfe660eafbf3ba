"""``defacer verify ORIGINAL DEFACED``: render both heads, check for faces offline, write a report."""

from __future__ import annotations

import argparse

from defacer.cli.paths import path_argument
from defacer.errors import shown
from defacer.files import named_path, read_json_object


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check a defaced scan against its original with offline face detectors; write an HTML report",
        description=(
            "Render the skin surface of the original and the defaced scan from several angles, run offline face "
            "detectors (MediaPipe BlazeFace short/full range, Face Mesh landmarks, dlib CNN) and a dlib identity "
            "embedding on the renders, count changed voxels per feature and in the brain region, and write "
            "verify_report.html (self-contained), verify_summary.json and small pictures into a QC folder "
            "(default: DEFACED-stem-qc beside DEFACED). The report shows the original face: keep that folder out of "
            "shared data, or use --qc-after-only. Needs defacer[verify]."
        ),
        epilog="Example:\n  defacer verify sub-01_T1w.nii.gz sub-01_T1w_defaced.nii.gz --out reports/sub-01\n\n"
               "Exit status:\n  0  PASS: a face was found in the original's renders, none after; brain untouched\n"
               "  1  error (bad input, ...)\n  2  usage error\n"
               "  3  FAIL: a face was found after defacing, or the brain region changed\n"
               "  5  INCONCLUSIVE: no face was found in the original either, so nothing could be tested",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("original", type=path_argument, help="the scan before defacing (file or DICOM folder)")
    parser.add_argument("defaced", type=path_argument, help="the defaced scan, on the same grid")
    parser.add_argument("--out", type=path_argument, default=None, metavar="DIR",
                        help="folder for the report and pictures (default: DEFACED's name + '-qc' beside it)")
    parser.add_argument("--qc-after-only", action="store_true",
                        help="put no picture of the original face in the report, only pictures after defacing")
    parser.add_argument("--labels", type=path_argument, default=None, metavar="FILE",
                        help="feature label map on the scan's grid, for per-feature counts and outlines")
    parser.add_argument("--provenance", type=path_argument, default=None, metavar="FILE",
                        help="provenance sidecar to show (default: DEFACED's <stem>.defacer.json when present)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from defacer.io import load_volume
    from defacer.io.output_guard import check_not_input
    from defacer.provenance import qc_dir_for, sidecar_path
    from defacer.verify import qc, verify_pair

    # '.' or '..' (verify ../orig .): name the folder itself, so the QC folder is its sibling, not '-qc' inside it.
    defaced_path = named_path(args.defaced)
    # The names 'deface' gives: its provenance sidecar, and the QC folder of 'deface --verify'.
    out = args.out or qc_dir_for(defaced_path)
    prov_path = args.provenance or sidecar_path(defaced_path)
    # Nothing the report writes may be, or lie inside, one of the scans it reads (issue 11, defect 3).
    targets = qc.report_targets(out)
    # nor may the QC folder hold them: '--out .' beside the defaced scan put renders of the original face there
    check_not_input([out, *targets], [args.original, args.defaced, args.labels, args.provenance])
    qc.check_owned(out, targets)  # never over a file defacer did not write there
    original = load_volume(args.original)
    defaced = load_volume(args.defaced)
    # A label map is checked as one (integers 0-3 on the scan's grid, verify_pair), not as a head scan.
    labels = load_volume(args.labels, strict=False) if args.labels else None
    provenance = (read_json_object(prov_path, what="provenance file", redo="Pass another with --provenance, or none.")
                  if args.provenance or prov_path.is_file() else None)
    from defacer.verify.verdict import EXIT_STATUS, MEANING, remedy

    after_only = bool(getattr(args, "qc_after_only", False))
    made_above = qc.missing_folders_above(out)
    # locked while it is written: a 'deface --verify' or 'verify' of the same output meanwhile is refused
    with qc.held(out, what="choose another --out") as new_folder:
        qc.claim(out, targets)
        qc.write_readme(out, after_only)
        try:
            result = verify_pair(original, defaced, out, labels=labels, provenance=provenance,
                                 title=f"defacer verify: {args.defaced.name}", after_only=after_only)
        except BaseException:
            if new_folder:
                qc.remove_unused(out, made_above=made_above)
            raise
        pictures = qc.write_pictures(result.renders, out, after_only)
    s = result.summary
    print(f"{s['verdict']}: face before: {', '.join(s['face_found_before']) or 'none'}; "
          f"face after: {', '.join(s['face_found_after']) or 'none'}; identity distance {s['identity']['distance']:.3f} (0: same picture; two different people: 0.3-0.6); "
          f"brain changed voxels {s['voxels']['brain']['changed']}")
    print(MEANING[result.verdict])
    step = remedy(s)
    if step:
        print(step)
    print(f"report: {shown(result.report_path)}\nsummary: {shown(result.summary_path)}")
    if "overview" in pictures:
        print(f"picture: {shown(out / pictures['overview'])}")
    print(qc.notice(out, after_only))
    return EXIT_STATUS[result.verdict]
