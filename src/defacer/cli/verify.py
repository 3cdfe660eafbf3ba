"""``defacer verify ORIGINAL DEFACED``: render both heads, check for faces offline, write a report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from defacer.errors import DefacerError


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "verify",
        help="check a defaced scan against its original with offline face detectors; write an HTML report",
        description=(
            "Render the skin surface of the original and the defaced scan from several angles, run offline face "
            "detectors (MediaPipe BlazeFace short/full range, Face Mesh landmarks, dlib CNN) and a dlib identity "
            "embedding on the renders, count changed voxels per feature and in the brain region, and write "
            "verify_report.html (self-contained) and verify_summary.json. Exit code 0 on PASS, 3 on FAIL. "
            "Needs defacer[verify]."
        ),
        epilog="Example:\n  defacer verify sub-01_T1w.nii.gz sub-01_T1w_defaced.nii.gz --out reports/sub-01",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("original", type=Path, help="the scan before defacing (file or DICOM folder)")
    parser.add_argument("defaced", type=Path, help="the defaced scan, on the same grid")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="folder for the report (default: DEFACED's name + '_verify' beside it)")
    parser.add_argument("--labels", type=Path, default=None, metavar="FILE",
                        help="feature label map on the scan's grid, for per-feature counts and outlines")
    parser.add_argument("--provenance", type=Path, default=None, metavar="FILE",
                        help="provenance sidecar to show (default: DEFACED's <stem>.defacer.json when present)")
    parser.set_defaults(func=run)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mgz", ".mgh"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def run(args: argparse.Namespace) -> int:
    from defacer.io import load_volume
    from defacer.verify import verify_pair

    original = load_volume(args.original)
    defaced = load_volume(args.defaced)
    labels = load_volume(args.labels) if args.labels else None
    out = args.out or args.defaced.parent / f"{_stem(args.defaced)}_verify"
    prov_path = args.provenance or args.defaced.parent / f"{_stem(args.defaced)}.defacer.json"
    provenance = None
    if args.provenance or prov_path.is_file():
        try:
            provenance = json.loads(Path(prov_path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DefacerError(f"Could not read the provenance file '{prov_path}': {err}. Pass another with "
                               "--provenance or none.") from err
    result = verify_pair(original, defaced, out, labels=labels, provenance=provenance,
                         title=f"defacer verify: {args.defaced.name}")
    s = result.summary
    print(f"{s['verdict']}: face before: {', '.join(s['face_found_before']) or 'none'}; "
          f"face after: {', '.join(s['face_found_after']) or 'none'}; identity distance {s['identity']['distance']:.3f}; "
          f"brain changed voxels {s['voxels']['brain']['changed']}")
    if not s["conclusive"]:
        print("note: no detector found a face in the original renders; the face check is inconclusive for this scan.")
    print(f"report: {result.report_path}\nsummary: {result.summary_path}")
    return 0 if result.passed else 3
