"""DICOM parts of ``defacer deface`` (series selection, header de-identification) and the
de-identification options shared with ``defacer anonymize``.

``cli/deface.py`` calls :func:`add_arguments` to add the DICOM-only options and, for a DICOM
input (a folder or .dcm files), :func:`run_dicom`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Flag name -> DeidOptions field, for the standard's options.
RETAIN_FLAGS: dict[str, tuple[str, str]] = {
    "--retain-safe-private": ("retain_safe_private", "keep private attributes known to be safe (PS3.15 E.3.10)"),
    "--retain-uids": ("retain_uids", "keep the original UIDs"),
    "--retain-device-identity": ("retain_device_identity", "keep device serial numbers, station names and IDs"),
    "--retain-institution-identity": ("retain_institution_identity", "keep institution names and addresses"),
    "--retain-patient-characteristics": ("retain_patient_characteristics",
                                         "keep sex, age, size, weight and similar"),
    "--clean-descriptors": ("clean_descriptors",
                            "keep descriptions and comments but mask identifying text in them (instead of removing)"),
    "--clean-structured-content": ("clean_structured_content", "clean SR content instead of removing it"),
    "--clean-graphics": ("clean_graphics", "clean graphics/overlays instead of removing them"),
}


def add_deid_arguments(parser: Any) -> None:
    """Add the header de-identification options (PS3.15 Annex E) to a parser or argument group."""
    parser.add_argument("--key", metavar="TEXT",
                        help="secret for the keyed pseudonyms (UIDs, IDs, date shifts); the same key gives the same "
                             "pseudonyms on every run. Prefer --key-file (a command line is visible to others)")
    parser.add_argument("--key-file", metavar="FILE", type=Path,
                        help="file holding the secret key (at least 16 bytes). Without --key/--key-file a random key "
                             "is used: pseudonyms are consistent within this run only")
    for flag, (_, help_text) in RETAIN_FLAGS.items():
        parser.add_argument(flag, action="store_true", help=help_text)
    dates = parser.add_mutually_exclusive_group()
    dates.add_argument("--retain-full-dates", action="store_true",
                       help="keep all dates and times unchanged (Retain Longitudinal Temporal Information, full dates)")
    dates.add_argument("--retain-shifted-dates", action="store_true",
                       help="keep dates shifted into the past by a per-patient offset derived from the key "
                            "(modified dates option); default: dates removed or emptied")
    parser.add_argument("--mapping-file", metavar="FILE", type=Path,
                        help="write the original -> new identifiers (UIDs, patient IDs, date shifts) as JSON here; "
                             "never inside the output folder. Keep it apart from the data: it re-identifies it")
    parser.add_argument("--allow-burned-in", action="store_true",
                        help="process instances that may show text in their pixels (BurnedInAnnotation=YES, "
                             "secondary captures, screenshots) instead of refusing them; their pixels are NOT cleaned")
    parser.add_argument("--what-if", "--describe", dest="what_if", action="store_true",
                        help="print what will be done to each header attribute, and stop without writing anything")


def add_arguments(parser: Any) -> None:
    """Add the DICOM-only options of ``defacer deface`` (``parser`` may be an argument group)."""
    parser.add_argument("--series", metavar="ID",
                        help="which series when the folder holds several: the number in brackets from the listing, "
                             "the SeriesNumber or the SeriesInstanceUID")
    parser.add_argument("--no-deidentify", action="store_true",
                        help="deface the pixels only; leave every header attribute as it is (by default headers are "
                             "de-identified following DICOM PS3.15 Annex E)")
    add_deid_arguments(parser)


def deid_options_from_args(args: argparse.Namespace, *, defaced: bool) -> Any:
    """Build :class:`~defacer.phi.options.DeidOptions` from parsed arguments."""
    from defacer.phi.options import DeidOptions

    values = {field: bool(getattr(args, flag[2:].replace("-", "_"), False)) for flag, (field, _) in RETAIN_FLAGS.items()}
    return DeidOptions(
        **values,
        retain_long_full_dates=bool(getattr(args, "retain_full_dates", False)),
        retain_long_modified_dates=bool(getattr(args, "retain_shifted_dates", False)),
        clean_recognizable_visual_features=defaced,
        allow_burned_in=bool(getattr(args, "allow_burned_in", False)),
    )


def scrubber_from_args(args: argparse.Namespace, *, defaced: bool) -> tuple[Any, bool]:
    """The :class:`~defacer.phi.scrub.Scrubber` for these arguments, and whether its key is random."""
    from defacer.phi.pseudonym import Pseudonymizer, load_key
    from defacer.phi.scrub import Scrubber

    key, is_random = load_key(args.key, args.key_file)
    if is_random:
        log.warning("No --key/--key-file given: using a random key, so pseudonyms (UIDs, IDs, date shifts) are "
                    "consistent within this run only.")
    options = deid_options_from_args(args, defaced=defaced)
    return Scrubber(options, Pseudonymizer(key), record_mapping=args.mapping_file is not None), is_random


def print_what_if(options: Any) -> None:
    """Print the per-attribute plan."""
    from defacer.phi.describe import describe_actions

    print("\n".join(describe_actions(options)))


def run_dicom(args: argparse.Namespace, options: Any, detector: Any) -> int:
    """Deface a DICOM series and write it as a new, de-identified series folder.

    Parameters
    ----------
    args : argparse.Namespace
        From ``defacer deface``: ``input``, ``output``, ``force``, ``save_mask``, ``verify``
        and the options of :func:`add_arguments`.
    options : defacer.pipeline.DefaceOptions
    detector : Detector

    Returns
    -------
    int
        0 on success (errors are raised as :class:`~defacer.errors.DefacerError`).
    """
    from defacer.dicom_pipeline import deface_dicom_series
    from defacer.io.dicom_series import write_deid_mapping

    scrubber = None
    is_random = False
    if not args.no_deidentify:
        scrubber, is_random = scrubber_from_args(args, defaced=True)
    if args.what_if:
        if scrubber is None:
            print("--no-deidentify: every header attribute is kept; only the pixels of the face features change.")
        else:
            print_what_if(scrubber.options)
        return 0
    source, target = Path(args.input), Path(args.output)
    provenance, written = deface_dicom_series(
        source, target, options=options, detector=detector, scrubber=scrubber, series=args.series,
        force=args.force, mask_path=args.save_mask,
        key_note="random (this run only)" if is_random else None,
        allow_missing=getattr(args, "allow_missing", False),
    )
    if scrubber is not None and args.mapping_file:
        write_deid_mapping(scrubber.mapping.as_dict(), args.mapping_file, out_dir=target, force=args.force)
    changed = provenance["voxels_changed"]
    print(f"Defaced DICOM series {source} -> {target} ({len(written)} files"
          + (", headers de-identified" if scrubber is not None else ", headers untouched") + ")")
    print("  voxels changed: " + ", ".join(f"{k} {v}" for k, v in changed.items()))
    for warning in [*provenance.get("warnings", []), *provenance["dicom"]["geometry_warnings"]]:
        print(f"  warning: {warning}")
    if getattr(args, "verify", False):
        from defacer.cli.deface import verify_outputs

        return verify_outputs(source, target, provenance, after_only=getattr(args, "qc_after_only", False))
    return 0
