"""``defacer anonymize IN OUT``: de-identify DICOM headers only (PS3.15 Annex E); pixels untouched."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from defacer.cli.paths import path_argument
from defacer.errors import shown


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "anonymize",
        help="de-identify DICOM headers (PS3.15 Annex E Basic Profile), pixels untouched",
        description=(
            "Write a de-identified copy of every DICOM file under IN into the new folder OUT (one sub-folder per "
            "series, files named IM00001.dcm...). Headers follow the DICOM PS3.15 Annex E Basic Application Level "
            "Confidentiality Profile with the options chosen below; UIDs, patient IDs and date shifts are keyed "
            "pseudonyms (HMAC-SHA256). Pixels are not changed: use 'defacer deface' to also distort the face. "
            "Non-DICOM files are not copied. The input is never modified."
        ),
        epilog="Examples:\n  defacer anonymize study/ study_anon/ --key-file key.txt\n"
               "  defacer anonymize study/ study_anon/ --retain-shifted-dates --mapping-file ~/private/map.json\n"
               "  defacer anonymize study/ x --what-if",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", type=path_argument, help="a DICOM file or a folder (searched recursively)")
    parser.add_argument("output", type=path_argument, help="new output folder")
    parser.add_argument("--force", action="store_true",
                        help="replace an output folder that defacer wrote earlier (never one holding other files)")
    from defacer.cli.options import add_deid_arguments, add_jobs_argument

    add_jobs_argument(parser, "worker processes (default 1; at most the CPU cores are started); the output is "
                              "identical for any N")

    add_deid_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from defacer.cli.options import deidentification_from_args, print_what_if
    from defacer.io.dicom_series import anonymize_files, write_deid_mapping
    from defacer.phi.files import NOT_WRITTEN, held_out

    deidentify = deidentification_from_args(args, warn_random=not args.what_if)
    assert deidentify is not None  # anonymize has no --no-deidentify
    scrubber = deidentify.scrubber(defaced=False)
    if args.what_if:
        print_what_if(scrubber.options)
        return 0
    from defacer.batch.workers import cap_jobs
    from defacer.io.output_guard import check_apart, check_dicom_output_name, check_outputs

    check_dicom_output_name(args.output)  # a folder of DICOM files named 'out.nii.gz' opens as no NIfTI
    check_outputs([args.output, args.mapping_file], inputs=[args.input, args.key_file], force=args.force)
    check_apart(args.mapping_file, args.output, "mapping file")
    written, skipped = anonymize_files(args.input, args.output, scrubber, force=args.force,
                                       jobs=cap_jobs(args.jobs))
    if args.mapping_file:
        write_deid_mapping(scrubber.mapping.as_dict(), args.mapping_file, out_dir=args.output, force=args.force)
    _warn_identifying_name(args.input, args.output, retain_uids=scrubber.options.retain_uids)
    print(f"De-identified {len(written)} DICOM file(s) from {shown(args.input)} into {shown(args.output)}.")
    left_out = [(path, why) for path, why in skipped if held_out(why)]
    for path, why in skipped:
        if not held_out(why):
            print(f"  skipped (not copied): {shown(path)}: {shown(why)}")
    for path, why in left_out:
        print(f"  not written: {shown(path)}: {shown(why.removeprefix(NOT_WRITTEN))}")
    if left_out:
        print(f"defacer anonymize: {len(left_out)} DICOM file(s) of {shown(args.input)} were not written, their "
              "series held out because it holds a file too large to read (see above); every other series was "
              "de-identified", file=sys.stderr)
        return 1
    return 0


def _warn_identifying_name(source: Path, output: Path, *, retain_uids: bool) -> None:
    """Warn, as ``deface`` does, when the output folder's name holds identifiers of the input's headers (the first
    instance's): the headers written no longer hold them ('anonymize Smith_John/ Smith_John_anon/')."""
    import pydicom

    from defacer.files import files_under, named_path
    from defacer.phi.paths import warn_identifying_name

    files = [source] if source.is_file() else sorted(files_under(source))
    for path in files[:50]:  # the first instance that reads; documents and DICOMDIRs are passed over
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001, S112 - not an instance: the next file
            continue
        if "SOPClassUID" in ds:
            warn_identifying_name(named_path(output).name, ds, retain_uids=retain_uids, sidecar=False)
            return
